"""The docs' measured figures are the ones the bench commands wrote under docs/figures/: each table or figure that
bench/docs_tables.py renders from those JSON files appears, as rendered, in its document."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import docs_tables  # noqa: E402


@pytest.mark.parametrize("doc", list(docs_tables.RENDERERS))
def test_docs_show_what_the_figure_files_hold(doc):
    text = " ".join((ROOT / doc).read_text().split())  # line breaks in prose do not matter
    missing = [line for line in docs_tables.RENDERERS[doc]() if " ".join(line.split()) not in text]
    assert not missing, f"{doc} does not show, as rendered from docs/figures/: {missing}"

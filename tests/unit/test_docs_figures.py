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


def test_the_presets_are_what_their_figures_ran():
    """A preset the docs report a result for plans what the recorded sweeps ran (the filler sweep's pad aside)."""
    from services.planner import SweepRequest, plan

    for sweep in docs_tables.load("multiplication.json")["sweeps"]:
        ran = sweep["request"]["run"]
        preset = SweepRequest.model_validate({"name": "x", "preset": "multiplication-cpu"})
        planned = {s.attention.mode: s for p in plan(preset) for s in p.runs.values()}["vanilla"]
        assert ran["train"]["steps"] == planned.train.steps and ran["optimizer"]["lr"] == planned.optimizer.lr
        assert ran["model"]["overrides"] == planned.model.overrides
        assert ran["data"]["max_digits"] == planned.data.max_digits

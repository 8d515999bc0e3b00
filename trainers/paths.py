"""Where a machine keeps myopia's data: fetched sources, token shards, build caches, local MLflow and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """MYOPIA_DATA_DIR, default ~/.myopia."""
    return Path(os.environ.get("MYOPIA_DATA_DIR", Path.home() / ".myopia")).expanduser()

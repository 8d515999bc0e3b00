"""Where a machine keeps myopia's data: fetched sources, token shards, build caches, local MLflow and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """MYOPIA_DATA_DIR, default ~/.myopia."""
    return Path(os.environ.get("MYOPIA_DATA_DIR", Path.home() / ".myopia")).expanduser()


def run_storage(storage_path: str | None, root: Path | None = None) -> Path:
    """Ray Train storage of a run: its spec's `storage_path`, or `runs/` under the data dir (or under `root`)."""
    return Path(storage_path or (root or data_dir()) / "runs").expanduser().resolve()


def progress_file(storage: Path, run_name: str) -> Path:
    """Where rank 0 writes {step, steps, loss}; the control plane reads it where storage is shared."""
    return storage / f"{run_name}.progress.json"

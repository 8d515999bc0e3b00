"""Process-wide settings a training process makes once, at its entry point, before the libraries read them."""

from __future__ import annotations

import os

from trainers.paths import data_dir

# What Ray's processes for a run need in their environment, set where they start (a job's env_vars, an embedded
# head's): Ray Train's controller polls its workers every 2 s by default, which a short run waits for at its end.
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def configure_deepspeed_env() -> None:
    """Before deepspeed is imported: it chooses its accelerator at import time. On CPU it JIT-builds a
    shared-memory comm op (about a minute): build it once per data dir."""
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(data_dir() / "torch_extensions"))

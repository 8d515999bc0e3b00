"""Process-wide settings a training process makes once, at its entry point, before the libraries read them."""

from __future__ import annotations

import os

from trainers.paths import data_dir


def configure_deepspeed_env() -> None:
    """Before deepspeed is imported: it chooses its accelerator at import time. On CPU it JIT-builds a
    shared-memory comm op (about a minute): build it once per data dir."""
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(data_dir() / "torch_extensions"))

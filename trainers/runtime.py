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


def cuda_mismatch(driver: int | None, built_for: str | None) -> str | None:
    """One line saying why torch's CUDA build cannot run on this node's driver, or None when it can.
    `driver`: cuDriverGetVersion's value (13000 = CUDA 13.0; None: no driver library); `built_for`:
    torch.version.cuda."""
    if built_for is None:
        return f"this torch ({_torch_version()}) is a CPU build: a GPU run needs the CUDA image (cluster/docker)"
    if driver is None:
        return (
            "no NVIDIA driver in this container (libcuda.so.1 not found): run GPU pods with the NVIDIA container "
            "runtime (the GPU operator's device plugin), or give the run no GPUs"
        )
    need, (major, minor) = int(built_for.split(".")[0]), divmod(driver // 10, 100)
    if major < need:  # within a major, CUDA's minor-version compatibility lets an older driver run it
        return (
            f"the NVIDIA driver supports CUDA {major}.{minor} but torch {_torch_version()} is built for CUDA "
            f"{built_for}: upgrade the driver (CUDA {need} needs driver >= {DRIVER_FOR_CUDA.get(need, '?')}) "
            "or use an image whose torch matches the driver"
        )
    return None


DRIVER_FOR_CUDA = {12: "525", 13: "580"}  # the least Linux driver of each CUDA major (NVIDIA's compatibility table)


def driver_cuda_version() -> int | None:
    """The CUDA version the node's driver supports (cuDriverGetVersion), read without initialising a device."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    return version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def cuda_problem() -> str | None:
    """Why this process cannot train on its GPU (one line), or None."""
    import torch

    problem = cuda_mismatch(driver_cuda_version(), torch.version.cuda)
    if problem is None and not torch.cuda.is_available():
        problem = "torch sees no GPU although the run asked for one (CUDA_VISIBLE_DEVICES, device plugin)"
    return problem


def check_cuda() -> None:
    """At the start of a GPU worker: a driver/CUDA mismatch fails in one clear line, not in a kernel launch."""
    if problem := cuda_problem():
        raise RuntimeError(problem)


def _torch_version() -> str:
    import torch

    return torch.__version__

"""The wheels a GPU machine without network needs beside its own torch (`make gpu-wheelhouse`): the closure of
what `bench/gpu_check.py` imports, at this checkout's locked versions, less torch and what comes with it.

    python bench/gpu_wheels.py                 # prints name==version lines for `pip download --no-deps`
    python bench/gpu_wheels.py --unpack DIR SITE  # unpacks every wheel of DIR into SITE (for PYTHONPATH): no pip,
                                                  # no venv module needed on the GPU machine
"""

from __future__ import annotations

import re
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOTS = ["transformers", "pydantic", "pytest"]
# torch and its own dependencies, and numpy, come with the GPU machine's torch: never shadow them.
TORCH_SIDE = {"torch", "triton", "numpy", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "setuptools",
              "filelock", "fsspec", "typing-extensions"}  # fmt: skip
# GPU-only packages, not installed on a CPU machine: pinned where the CUDA image pins them.
CUDA_IN = Path(__file__).resolve().parents[1] / "cluster" / "docker" / "cuda.in"
GPU_ONLY = ["liger-kernel"]
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}  # fmt: skip


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    # imported here: `--unpack` runs on the GPU machine before anything is on PYTHONPATH, packaging perhaps absent
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    target = {**default_environment(), **TARGET}
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = norm(todo.pop())
        if name in seen or name in TORCH_SIDE:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # a requirement this machine does not need (e.g. a marker for another Python)
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(target):
                todo.append(req.name)
    return seen


def gpu_only_pins() -> dict[str, str]:
    pins = {}
    for line in CUDA_IN.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            if norm(name) in GPU_ONLY:
                pins[norm(name)] = version.strip()
    return pins


def pins() -> list[str]:
    return [f"{name}=={version}" for name, version in sorted({**closure(ROOTS), **gpu_only_pins()}.items())]


def unpack(wheels: Path, site: Path) -> int:
    """A wheel is a zip of its importable tree: extracting is installing, for these pure and binary packages."""
    found = sorted(wheels.glob("*.whl"))
    if not found:
        sys.exit(f"no wheels in {wheels}/: run `make gpu-wheelhouse` on a machine with network and bring the folder")
    site.mkdir(parents=True, exist_ok=True)
    for wheel in found:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    return len(found)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--unpack"]:
        print(f"{unpack(Path(sys.argv[2]), Path(sys.argv[3]))} wheels unpacked into {sys.argv[3]}")
    else:
        print("\n".join(pins()))

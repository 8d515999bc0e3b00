"""`make gpu-check` cannot rot: its script runs here on CPU (--smoke), every section, and the wheelhouse it needs
on a GPU machine holds the locked versions without shadowing that machine's torch."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_wheels  # noqa: E402


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] and report["environment"]["torch"]
    assert report["tests"]["returncode"] == 0 and "passed" in report["tests"]["summary"]
    exact = report["exactness"]
    assert exact and all(r["ok"] for r in exact)
    assert {r["precision"] for r in exact} == {"fp32", "bf16-autocast"}
    assert any(r.get("check") == "leak" for r in exact)
    assert {r["mode"] for r in report["layer"]} == {"vanilla", "myopic", "kv"}
    assert {r["mode"] for r in report["steps"]} == {"vanilla", "myopic"}  # compiled: kv left out
    assert all(r["step_ms"] > 0 and r["compiled"] for r in report["steps"])


def test_wheelhouse_pins_the_locked_versions_and_leaves_torch_alone():
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line)
    pins = dict(p.split("==") for p in gpu_wheels.pins())
    assert pins["transformers"] == lock["transformers"].split()[0]
    assert pins["pydantic"] == lock["pydantic"].split()[0]
    assert "liger-kernel" in pins and "pytest" in pins
    assert not set(pins) & gpu_wheels.TORCH_SIDE and not any(n.startswith("nvidia") for n in pins)


def test_unpacked_wheels_are_importable(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "probe-1.0-py3-none-any.whl", "w") as z:
        z.writestr("probe_pkg/__init__.py", "VALUE = 42\n")
    site = tmp_path / "site"
    assert gpu_wheels.unpack(wheels, site) == 1
    out = subprocess.run(
        [sys.executable, "-c", "import probe_pkg; print(probe_pkg.VALUE)"],
        env={"PYTHONPATH": str(site)}, capture_output=True, text=True,
    )  # fmt: skip
    assert out.stdout.strip() == "42"
    with pytest.raises(SystemExit, match="gpu-wheelhouse"):
        gpu_wheels.unpack(tmp_path / "empty", site)

"""Real DeepSpeed engines, ZeRO 0-3, world size 1 and 2 on CPU (gloo, under torchrun), in every attention mode:

- the first step's full gradient equals the float64 brute-force myopic gradient (vanilla: the plain gradient);
- after a few AdamW steps the parameters equal a plain single-process PyTorch run on the same batches.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils import clip_grad_norm_

from tests.integration.zero_worker import ADAMW, FAST_MODE, FAST_STAGES, MODES, batches, fresh_model
from tests.oracle import brute_force_grads, grads, lm_loss, max_abs_diff

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[1, 2], ids=["world1", "world2"])
def zero_results(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"zero{world}") / "results.pt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(world),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "tests.integration.zero_worker",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return torch.load(out)


def plain_run(mode: str, variant: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Single-process PyTorch: same init, same batches, AdamW and clipping as the engines'."""
    model = fresh_model(mode, variant)
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    first = None
    for ids in batches():
        opt.zero_grad()
        lm_loss(model, ids).backward()
        if first is None:
            first = {n: p.grad.clone() for n, p in model.named_parameters()}
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return first, {n: p.detach().clone() for n, p in model.named_parameters()}


def oracle_grads(mode: str, variant: str) -> dict[str, torch.Tensor]:
    model = fresh_model(mode, variant).double()
    ids = batches()[0]
    if mode == "vanilla":
        return grads(model, lm_loss(model, ids))
    return brute_force_grads(model, ids, variant)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("mode,variant", MODES)
def test_engine_matches_oracle_and_plain_pytorch(zero_results, stage, mode, variant):
    got = zero_results[(stage, mode, variant, False)]
    oracle = oracle_grads(mode, variant)
    err, where = max_abs_diff({n: g.double() for n, g in got["grads"].items()}, oracle)
    assert err < 2e-6, f"ZeRO-{stage} {mode}/{variant}: gradient vs float64 oracle {err:.3g} at {where}"

    _, params = plain_run(mode, variant)
    err, where = max_abs_diff(got["params"], params)
    assert err < 1e-5, f"ZeRO-{stage} {mode}/{variant}: parameters vs plain PyTorch {err:.3g} at {where}"
    if mode == "myopic":  # the arms really train differently, so the comparison above can fail
        assert max_abs_diff(got["params"], zero_results[(stage, "vanilla", "hidden", False)]["params"])[0] > 1e-4


@pytest.mark.parametrize("stage", FAST_STAGES)
def test_gpu_speedups_keep_the_myopic_gradient(zero_results, stage):
    """The fused-loss head (`labels=` through `FusedLossHead`, a ZeRO-3 leaf) and `engine.compile()` (inductor) on
    the same engines: the first gradient is still the brute-force myopic one and training ends where plain
    PyTorch does. On CPU the head runs its plain linear + cross-entropy; liger's kernel is checked on CUDA."""
    got = zero_results[(stage, *FAST_MODE, True)]
    err, where = max_abs_diff({n: g.double() for n, g in got["grads"].items()}, oracle_grads(*FAST_MODE))
    assert err < 2e-6, f"ZeRO-{stage} with speedups: gradient vs float64 oracle {err:.3g} at {where}"
    err, where = max_abs_diff(got["params"], plain_run(*FAST_MODE)[1])
    assert err < 1e-5, f"ZeRO-{stage} with speedups: parameters vs plain PyTorch {err:.3g} at {where}"

"""The search for a CPU-sized D_p configuration (docs/results.md, "Calibration"): one arm in a plain PyTorch loop
(the project's model, task, attention and probes; no Ray, no DeepSpeed, so many configurations fit in an hour),
then its held-out Huber/p over all positions and past the window, divided by the predict-zero level of the same
positions, and the layer-1 probe of sin(b·x_n) next to the untrained model's.

    python bench/dp_calibration.py --d 64 --b 3 --arm hidden --steps 4000     # one line, printed
    python bench/dp_calibration.py --grid --json docs/figures/dp_calibration.json  # the documented search, ~40 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainers import evaluate
from trainers.models import pythia_config
from trainers.myopic import set_attention
from trainers.synthetic import RegressionGPTNeoX, SyntheticTask

# The search as docs/results.md reports it, in the order it was run: (d, b, window, arm, steps).
GRID = [
    (64, 20, 10, "vanilla", 3000),
    (64, 20, 10, "hidden", 3000),
    (32, 10, 10, "vanilla", 8000),
    (32, 10, 4, "vanilla", 4000),
    (32, 6, 10, "vanilla", 4000),
    (32, 3, 10, "vanilla", 4000),
    (32, 3, 10, "hidden", 4000),
    (128, 3, 10, "vanilla", 4000),
    (128, 3, 10, "hidden", 4000),
    (64, 3, 10, "vanilla", 4000),
    (64, 3, 10, "hidden", 4000),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=64, help="hidden size (2 layers, 2 heads, ReLU MLP of 4d)")
    ap.add_argument("--b", type=float, default=3.0)
    ap.add_argument("--p", type=float, default=1.0)
    ap.add_argument("--lags", type=int, default=10)
    ap.add_argument("--arm", choices=["vanilla", "hidden", "kv"], default="vanilla")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", action="store_true", help="run the documented search (GRID) instead of one line")
    ap.add_argument("--json", type=Path, help="write every line, with the command and machine, to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lines = []
    for d, b, lags, arm, steps in GRID if a.grid else [(a.d, a.b, a.lags, a.arm, a.steps)]:
        line = run(argparse.Namespace(**{**vars(a), "d": d, "b": b, "lags": lags, "arm": arm, "steps": steps}))
        print(json.dumps(line), flush=True)
        lines.append(line)
    if a.json:
        a.json.write_text(json.dumps({
            "command": shlex.join(["python", "bench/dp_calibration.py", *sys.argv[1:]]),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
            "rows": lines,
        }, indent=1) + "\n")  # fmt: skip


def run(a: argparse.Namespace) -> dict:
    """One arm of one configuration, trained and evaluated; its line of the table."""
    torch.manual_seed(a.seed)
    config = pythia_config(
        "14m", vocab_size=1, num_hidden_layers=2, hidden_size=a.d, num_attention_heads=2, hidden_act="relu"
    )
    model = RegressionGPTNeoX(config)
    set_attention(
        model, "vanilla" if a.arm == "vanilla" else "myopic", variant="hidden" if a.arm == "vanilla" else a.arm
    )
    task = SyntheticTask(p=a.p, b=a.b, lags=a.lags, seq_len=64)
    # the paper's optimiser: AdamW (0.9, 0.999), weight decay 0.01 on matrices, 1% warmup, cosine to 0
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.999)
    )
    warm = max(1, a.steps // 100)
    cosine = lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (a.steps - warm)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    gen, began = torch.Generator().manual_seed(1000 + a.seed), time.time()
    for step in range(a.steps):
        inputs, target, _ = task.sample(a.batch, gen)
        loss = F.huber_loss(model(inputs), target, delta=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0:
            print(f"step {step}: training Huber/p {loss.item() / a.p:.3f} ({time.time() - began:.0f} s)", flush=True)
    model.eval()
    inputs, target, _ = task.sample(2048, torch.Generator().manual_seed(999_999))
    with torch.no_grad():
        huber = F.huber_loss(model(inputs), target, delta=1.0, reduction="none").mean(0) / a.p
    zero = F.huber_loss(torch.zeros_like(target), target, delta=1.0, reduction="none").mean(0) / a.p
    torch.manual_seed(a.seed)
    control = RegressionGPTNeoX(config).eval()
    with torch.no_grad():
        r2 = evaluate.probe_r2(model, inputs[:1024], a.b, lags=[0])[1, 0]
        r2_control = evaluate.probe_r2(control, inputs[:1024], a.b, lags=[0])[1, 0]
    return {
        **{k: v for k, v in vars(a).items() if k not in ("grid", "json")},
        "seconds": round(time.time() - began),
        "huber_over_p": huber.mean().item(),
        "past_window": huber[a.lags :].mean().item(),
        "past_window_over_predict_zero": (huber[a.lags :].mean() / zero[a.lags :].mean()).item(),
        "layer1_lag0_r2": r2,
        "layer1_lag0_r2_control": r2_control,
    }


if __name__ == "__main__":
    main()

"""Calibrate a CPU text ladder: train each arm of a preset's runs in this process (the product's model, data, task
and schedule; plain AdamW in place of a one-worker ZeRO-0 engine, which is the same update) and print the held-out
losses, the gap with its interval over held-out sequences, and the time per step.

    python bench/text_calibration.py --preset cpu-ladder --sizes 0.4m --steps 300 --arms vanilla,myopic,bigram

Not a test and not the ladder itself (that goes through REST: docs/results.md): a quick way to pick steps, batch
and shapes before spending an hour of two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from services.gap_stats import blocked_interval
from services.planner import preset_run
from trainers.loop import lr_lambda, param_groups
from trainers.tasks import TextTask


def train_arm(spec, threads: int) -> tuple[dict, float]:
    torch.set_num_threads(threads)
    task = TextTask(spec)
    torch.manual_seed(spec.seed)
    model = task.build_model()
    opt = torch.optim.AdamW(
        param_groups(model, spec.optimizer.weight_decay), lr=spec.lr, betas=spec.optimizer.betas, eps=spec.optimizer.eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec))
    began = time.perf_counter()
    for step in range(spec.train.steps):
        for batch in task.micro_batches(step, 0, 1):
            (task.loss(model, batch) / spec.grad_accum).backward()
        if spec.optimizer.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.optimizer.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    per_step = (time.perf_counter() - began) / spec.train.steps
    model.eval()
    return task.evaluate(model, 0, 1), per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-ladder")
    ap.add_argument("--sizes", default=None, help="comma-separated; default: the preset's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="vanilla,myopic,bigram")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run", default="{}", help="JSON overrides of the preset's run template")
    ap.add_argument("--json", type=Path, help="also append the rows to this file (with the command that made them)")
    args = ap.parse_args()
    from services.presets import PRESETS

    sizes = args.sizes.split(",") if args.sizes else PRESETS[args.preset].sizes
    print("| size | arm | held-out loss | s/step |")
    print("|---|---|---|---|")
    rows = []
    for size in sizes:
        base = preset_run(args.preset, size=size, seed=args.seed, run=json.loads(args.run))
        out = {}
        for arm in args.arms.split(","):
            out[arm] = train_arm(base.arm(arm), args.threads)
            print(f"| {size} | {arm} | {out[arm][0]['loss']:.4f} | {out[arm][1]:.3f} |", flush=True)
        v, m = (np.array(out[a][0]["per_sequence"]) for a in ("vanilla", "myopic"))
        gap, ci = float((m - v).mean()), blocked_interval(m - v)
        line = f"{size}: gap {gap:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] over {len(v)} held-out sequences"
        row = {
            "size": size,
            "steps": base.train.steps,
            "seed": args.seed,
            "gap": gap,
            "gap_eval_ci95": list(ci),
            "loss": {a: o[0]["loss"] for a, o in out.items()},
            "s_per_step": {a: o[1] for a, o in out.items()},
        }
        if "bigram" in out:
            b = np.array(out["bigram"][0]["per_sequence"])
            row["share_lost"] = gap / float((b - v).mean())
            line += f"; bigram − vanilla {float((b - v).mean()):+.4f}, share lost {row['share_lost']:.3f}"
        print(line, flush=True)
        rows.append(row)
    if args.json:
        doc = json.loads(args.json.read_text()) if args.json.exists() else {"commands": [], "rows": []}
        doc["commands"].append("python bench/text_calibration.py " + shlex.join(sys.argv[1:]))
        doc["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s) per arm"
        doc["rows"] += rows
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

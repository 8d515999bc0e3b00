"""The D_p levels: the trivial myopic baseline (0 where z = 1, x_n where z = 0) and predicting zero everywhere,
Huber/p over all positions and past the window, at several p (b = 10, 10 lags, length 64).

    python bench/dp_baseline.py [--sequences 20000] [--json docs/figures/dp_baseline.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainers.evaluate import trivial_myopic_prediction  # noqa: E402
from trainers.synthetic import SyntheticTask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=20000)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print("| p | baseline, all | baseline, ≥ 10 | predict zero, all | predict zero, ≥ 10 |\n|---|---|---|---|---|")
    for p in (1.0, 0.5, 0.3, 0.1, 0.01):
        task = SyntheticTask(p=p, b=10.0, lags=10, seq_len=64)
        inputs, y, _ = task.sample(args.sequences, torch.Generator().manual_seed(0))
        base = F.huber_loss(trivial_myopic_prediction(inputs), y, delta=1.0, reduction="none").mean(0) / p
        zero = F.huber_loss(torch.zeros_like(y), y, delta=1.0, reduction="none").mean(0) / p
        row = {"p": p, "baseline_all": base.mean().item(), "baseline_past_window": base[10:].mean().item(),
               "predict_zero_all": zero.mean().item(), "predict_zero_past_window": zero[10:].mean().item()}  # fmt: skip
        rows.append(row)
        print(" | ".join(["", f"{p}", *(f"{v:.3f}" for k, v in row.items() if k != "p"), ""]).strip())
    if args.json:
        cmd = f"python bench/dp_baseline.py --sequences {args.sequences} --json {args.json}"
        Path(args.json).write_text(json.dumps({"command": cmd, "sequences": args.sequences, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

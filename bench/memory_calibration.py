"""Calibration of `cluster/memory.py`'s activation model: peak bytes of live tensors in one training forward and
backward of the project's GPT-NeoX (`trainers.models.build_model`), measured on CPU by watching every storage the
ops create (`cluster.memory_probe.StorageTracker`), per precision, then fitted per precision to

    peak = c_layer·L·N·h + c_attn·L·b·a·s² + c_logit·N·V + c_token·N·h        (N = b·s tokens)

Korthikanti et al.'s per-layer s·b·h·(c1 + c2·a·s/h), plus the logits (V per token, the loss upcasting them to
fp32) and what is per token but outside the blocks (embedding, final LayerNorm, one block's backward transients).
Parameters and their gradients are allocated before the measurement and not counted (model states, sized
elsewhere). Shapes are Pythia-14m/31m's with fewer layers, shorter sequences or a smaller vocabulary so that the
terms separate; two full-vocabulary points are held out of the fit to check it. Myopic attention is measured on
a few points next to vanilla. Tensors are the same aten ops as on a GPU; what a GPU adds (kernel workspaces, the
caching allocator's rounding) is `cluster/memory.py`'s fragmentation allowance, not measured here.

    python bench/memory_calibration.py [--json docs/figures/memory_calibration.json]   # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cluster.memory_probe import Shape, measure

FIT = [  # (layers, hidden, heads, seq, batch, vocab)
    Shape(2, 128, 4, 64, 4, 512),
    Shape(6, 128, 4, 64, 4, 512),
    Shape(6, 128, 4, 64, 4, 8192),
    Shape(6, 256, 8, 64, 4, 512),
    Shape(6, 128, 4, 256, 2, 512),  # a·s² against s·h: the attention term
    Shape(4, 256, 8, 128, 2, 4096),
]
HELD_OUT = [Shape(6, 128, 4, 64, 4, 50304), Shape(6, 256, 8, 64, 2, 50304)]  # Pythia-14m and -31m, full vocabulary
MYOPIC = [Shape(6, 128, 4, 64, 4, 512), Shape(6, 128, 4, 64, 4, 8192)]
TERMS = ("layer", "attn", "logit", "token")


def features(s: Shape) -> list[float]:
    n = s.batch * s.seq
    return [s.layers * n * s.hidden, s.layers * s.batch * s.heads * s.seq**2, n * s.vocab, n * s.hidden]


def fit(shapes: list[Shape], values: list[int], attn: bool = True) -> np.ndarray:
    """Least squares on relative error (every point weighs alike whatever its size); `attn=False` fixes the
    a·s² coefficient at 0 (fused attention keeps no s×s tensor: the full fit finds it ≈ 0)."""
    x = np.array([features(s) for s in shapes], dtype=float)
    if not attn:
        x[:, 1] = 0.0
    y = np.array(values, dtype=float)
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    return coef


def predict(coef: np.ndarray, s: Shape) -> float:
    return float(np.dot(coef, features(s)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    ap.add_argument("--json", help="write the measurements and the fitted coefficients here")
    a = ap.parse_args()
    measured: list[dict] = []
    torch.set_num_threads(2)
    began = time.perf_counter()
    fitted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    print("| precision | attention | L | h | a | s | b | V | saved MB | peak MB | model MB | peak/model | set |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for precision in a.precisions:
        rows = [(s, measure(s, precision)) for s in FIT]
        coef = fit([s for s, _ in rows], [m.peak for _, m in rows], attn=False)  # what cluster/memory.py uses
        fitted[precision] = (fit([s for s, _ in rows], [m.peak for _, m in rows]), coef)
        rows += [(s, measure(s, precision)) for s in HELD_OUT]
        for s, m in rows:
            model = predict(coef, s)
            row = {"precision": precision, "shape": dataclasses.asdict(s), "peak": m.peak, "model": model}
            measured.append(row | {"set": "fit" if s in FIT else "held out"})
            print(
                f"| {precision} | vanilla | {s.layers} | {s.hidden} | {s.heads} | {s.seq} | {s.batch} | {s.vocab} | "
                f"{m.saved / 1e6:.2f} | {m.peak / 1e6:.2f} | {model / 1e6:.2f} | {m.peak / model:.3f} | "
                f"{'fit' if s in FIT else 'held out'} |"
            )
        for s in MYOPIC:
            m, v = measure(s, precision, "myopic"), measure(s, precision, "vanilla")
            print(
                f"| {precision} | myopic | {s.layers} | {s.hidden} | {s.heads} | {s.seq} | {s.batch} | {s.vocab} | "
                f"{m.saved / 1e6:.2f} | {m.peak / 1e6:.2f} | {predict(coef, s) / 1e6:.2f} | "
                f"{m.peak / predict(coef, s):.3f} | vanilla peak {v.peak / 1e6:.2f} |"
            )
    print("\nfitted bytes: peak = layer·L·N·h + attn·L·b·a·s² + logit·N·V + token·N·h (model MB above: attn = 0)")
    print("| precision | fit | " + " | ".join(TERMS) + " |")
    print("|---|---|" + "---|" * len(TERMS))
    for precision, pair in fitted.items():
        for label, coef in zip(("all four terms", "attn = 0"), pair, strict=True):
            print(f"| {precision} | {label} | " + " | ".join(f"{round(c, 3) + 0.0:.3f}" for c in coef) + " |")
    print(f"\n{time.perf_counter() - began:.0f} s")
    if a.json:
        coefficients = {p: dict(zip(TERMS, map(float, pair[1]), strict=True)) for p, pair in fitted.items()}
        doc = {"command": " ".join(["python bench/memory_calibration.py", *sys.argv[1:]]), "rows": measured,
               "coefficients": coefficients}  # fmt: skip
        Path(a.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

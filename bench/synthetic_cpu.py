"""The synthetic-cpu preset in full: vanilla, myopic (hidden) and myopic (kv), each through the real run path
(Ray Train + DeepSpeed), then a table, per-position and probe figures.

    python bench/synthetic_cpu.py [--steps N] [--out docs/figures]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

import cluster.local  # noqa: F401  (before ray)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cluster.local import ensure_ray  # noqa: E402
from trainers.entry import run  # noqa: E402
from trainers.presets import preset  # noqa: E402

ARMS = {"vanilla": ("vanilla", "hidden"), "myopic-hidden": ("myopic", "hidden"), "myopic-kv": ("myopic", "kv")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    results = {}
    for label, (mode, variant) in ARMS.items():
        spec = preset("synthetic-cpu", train={"steps": args.steps}, attention={"mode": mode, "variant": variant},
                      name=f"synthetic-cpu-{label}-{args.steps}")  # fmt: skip
        t0 = time.perf_counter()
        results[label] = {**run(spec), "wall_s": time.perf_counter() - t0}
    (out / "synthetic_cpu.json").write_text(json.dumps(results, indent=1))

    print(f"| arm | held-out Huber/p | positions ≥ 10 | wall time (s) | steps |  ({args.steps} steps, b = 3, p = 0.5)")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        pp = r["eval"]["per_position"]
        print(f"| {label} | {r['eval']['huber_over_p']:.3f} | {sum(pp[10:]) / len(pp[10:]):.3f} | "
              f"{r['wall_s']:.0f} | {r['steps']} |")  # fmt: skip

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, r in results.items():
        ax1.plot(r["eval"]["per_position"], label=label)
    ax1.axhline(1.257, color="grey", ls=":", label="predict zero (p = 1)")
    ax1.set(xlabel="position n", ylabel="held-out Huber / p", title="D_p per position (b = 3)")
    ax1.legend()
    for label, r in results.items():
        rows = [row for row in r["probes"] if row["layer"] == 1]
        ax2.plot([row["lag"] for row in rows], [row["selectivity"] for row in rows], marker="o", label=label)
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set(xlabel="lag i (probe target sin(b·x_{n−i}))", ylabel="R² trained − R² untrained",
            title="layer-1 probe selectivity")  # fmt: skip
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "synthetic_cpu.png", dpi=110)
    print(f"figure: {out / 'synthetic_cpu.png'}")


if __name__ == "__main__":
    main()

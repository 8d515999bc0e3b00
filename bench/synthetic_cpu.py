"""A D_p preset in full, through the real run path (Ray Train + DeepSpeed, one run at a time): vanilla and both
myopic variants over several seeds, then a table with 95% intervals over seeds, the per-position loss beside the
predict-zero level of the same positions, and the layer-1 probe selectivity.

    python bench/synthetic_cpu.py [--preset synthetic-cpu] [--seeds 0 1 2] [--sequential] [--out docs/figures]

`--sequential` runs GPT-2-style sequential blocks (`use_parallel_residual: false`) instead of GPT-NeoX's parallel
residual: the ablation of the backbone difference from the paper.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

ARMS = {"vanilla": ("vanilla", "hidden"), "myopic-hidden": ("myopic", "hidden"), "myopic-kv": ("myopic", "kv")}


def interval(values: list[float]) -> str:
    """mean [95% t-interval over seeds]."""
    m = float(np.mean(values))
    if len(values) < 2:
        return f"{m:.3f}"
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return f"{m:.3f} [{m - half:.3f}, {m + half:.3f}]"


def predict_zero(spec) -> np.ndarray:
    """Huber/p of predicting 0, per position, on the run's own held-out set."""
    from trainers.tasks import DpTask

    task = DpTask(spec)
    _, target = task.held_out()
    huber = torch.nn.functional.huber_loss(torch.zeros_like(target), target, delta=1.0, reduction="none")
    return (huber.mean(0) / task.task.p).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="synthetic-cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--steps", type=int, help="override train.steps")
    ap.add_argument("--sequential", action="store_true", help="GPT-2-style sequential residual blocks")
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args()

    from cluster.local import configure_loopback, ensure_ray

    configure_loopback()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from services.planner import preset_run
    from trainers.entry import run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.preset + ("-sequential" if args.sequential else "")
    planned = []  # every run planned before any trains
    for seed in args.seeds:
        for label in args.arms:
            mode, variant = ARMS[label]
            template: dict = {"attention": {"variant": variant}}
            if args.steps:
                template["train"] = {"steps": args.steps}
            spec = preset_run(args.preset, seed=seed, run=template).arm(mode)
            if args.sequential:
                overrides = {**spec.model.overrides, "use_parallel_residual": False}
                spec = spec.model_copy(update={"model": spec.model.model_copy(update={"overrides": overrides})})
            planned.append((label, seed, spec.model_copy(update={"name": f"bench-{tag}-{label}-s{seed}"})))
    # finished runs are kept as they finish: a rerun picks up where an interrupted one stopped
    done_file = out / f"{tag}.runs.jsonl"
    done = (
        {json.loads(line)["name"]: json.loads(line) for line in done_file.read_text().splitlines()}
        if done_file.exists()
        else {}
    )
    ensure_ray()
    results: dict[str, list[dict]] = {label: [] for label in args.arms}
    for label, seed, spec in planned:
        if spec.name not in done or done[spec.name]["config_hash"] != spec.config_hash():
            began = time.perf_counter()
            done[spec.name] = {**run(spec), "wall_s": time.perf_counter() - began}
            with done_file.open("a") as f:
                f.write(json.dumps(done[spec.name]) + "\n")
        r = results[label].append(done[spec.name]) or done[spec.name]
        print(f"{label} seed {seed}: Huber/p {r['eval']['huber_over_p']:.3f} ({r['wall_s']:.0f} s)", flush=True)
    zero = predict_zero(spec)
    lags = spec.data.lags
    (out / f"{tag}.json").write_text(json.dumps({"predict_zero": zero.tolist(), "runs": results}, indent=1))

    d = spec.data
    print(
        f"\n{args.preset}{' (sequential blocks)' if args.sequential else ''}: D_p p = {d.p:g}, b = {d.b:g}, "
        f"window {lags}, {spec.train.steps} steps of {spec.train.global_batch}; {len(args.seeds)} seeds; "
        f"mean [95% interval over seeds]"
    )
    print(f"predict-zero Huber/p: all positions {zero.mean():.3f}, positions ≥ {lags} {zero[lags:].mean():.3f}\n")
    print(
        f"| arm | held-out Huber/p | positions ≥ {lags} | ÷ predict-zero there | layer-1 lag-0 probe R² "
        "(control) | wall s per run |"
    )
    print("|---|---|---|---|---|---|")
    for label, runs in results.items():
        past = [float(np.mean(r["eval"]["per_position"][lags:])) for r in runs]
        probe = [next(row for row in r["probes"] if row["layer"] == 1 and row["lag"] == 0) for r in runs]
        print(
            f"| {label} | {interval([r['eval']['huber_over_p'] for r in runs])} | {interval(past)} | "
            f"{interval([p / zero[lags:].mean() for p in past])} | {interval([p['r2'] for p in probe])} "
            f"({interval([p['r2_control'] for p in probe])}) | {np.mean([r['wall_s'] for r in runs]):.0f} |"
        )

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, runs in results.items():
        curves = np.array([r["eval"]["per_position"] for r in runs])
        (line,) = ax1.plot(curves.mean(0), label=label)
        if len(runs) > 1:
            ax1.fill_between(range(curves.shape[1]), curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
    ax1.plot(zero, "k:", label="predict zero (same positions)")
    ax1.set(xlabel="position n", ylabel="held-out Huber / p", title=f"D_p per position (b = {d.b:g}, p = {d.p:g})")
    ax1.legend(fontsize=8)
    for label, runs in results.items():
        table = np.array([[row["selectivity"] for row in r["probes"] if row["layer"] == 1] for r in runs])
        lag_axis = [row["lag"] for row in runs[0]["probes"] if row["layer"] == 1]
        ax2.errorbar(
            lag_axis,
            table.mean(0),
            yerr=[table.mean(0) - table.min(0), table.max(0) - table.mean(0)],
            marker="o",
            capsize=3,
            label=label,
        )
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set(
        xlabel="lag i (probe target sin(b·x_{n−i}))",
        ylabel="R² trained − R² untrained",
        title="layer-1 probe selectivity (mean, range over seeds)",
    )
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{tag}.png", dpi=110)
    print(f"\nfigure: {out / f'{tag}.png'}; runs: {out / f'{tag}.json'}")


if __name__ == "__main__":
    main()

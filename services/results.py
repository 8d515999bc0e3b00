"""A sweep's results from its finished runs: the gap per pair, per size (mean, paired 95% interval), the fit
against scale, and the plots (gap against non-embedding parameters; gap per position)."""

from __future__ import annotations

import io
import threading
from collections import defaultdict
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no process-wide backend
from sqlalchemy.orm import sessionmaker

from services.gap_stats import (
    SizeGap,
    blocked_interval,
    drift,
    drift_across_sizes,
    fit_gap,
    mean_interval,
    size_gap,
)
from services.store import RunStatus, Sweep
from services.sweeps import get_sweep
from trainers.evaluate import headline
from trainers.models import PYTHIA_SIZES, count_params, shape_label


def _loss(result: dict[str, Any]) -> float:
    return headline(result["eval"])[1]


def _label(spec: dict[str, Any]) -> str:
    """The size's name, or the model's shape where the sweep's overrides change it (sweeps stored before labels
    too)."""
    return shape_label(spec["model"]["size"], **spec["model"].get("overrides", {}))


def _nonembedding(spec: dict[str, Any]) -> int:
    """Of the model the run trained: the size's shape with the sweep's config overrides."""
    model = spec["model"]
    return count_params(model["size"], vocab_size=model.get("vocab_size"), **model.get("overrides", {}))[1]


def pair_gaps(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per pair whose vanilla and myopic runs both succeeded: losses, gap, its interval over held-out
    sequences, the bigram reference and the local myopia bonus (vanilla − local) where those arms ran, and the gap
    per position."""
    arms: dict[str, dict[str, Any]] = defaultdict(dict)
    for run in sweep.runs:
        if run.status == RunStatus.SUCCEEDED and run.result:
            arms[run.pair_id][run.arm] = run
    rows = []
    for pair in sweep.pairs:
        done = arms.get(pair.id, {})
        if {"vanilla", "myopic"} <= done.keys():
            v, m = done["vanilla"].result, done["myopic"].result
            pv, pm = v["eval"].get("per_position") or [], m["eval"].get("per_position") or []
            seq = {arm: run.result["eval"].get("per_sequence") for arm, run in done.items()}
            b = done["bigram"].result if "bigram" in done else None
            lo = done["local"].result if "local" in done else None
            rows.append(
                {
                    "pair_id": pair.id,
                    "size": _label(done["vanilla"].spec),
                    "seed": pair.seed,
                    "n_params_nonembedding": _nonembedding(done["vanilla"].spec),
                    "vanilla_loss": _loss(v),
                    "myopic_loss": _loss(m),
                    "bigram_loss": _loss(b) if b else None,
                    "local_loss": _loss(lo) if lo else None,
                    "bonus": _loss(v) - _loss(lo) if lo else None,
                    "bonus_eval_ci95": _eval_interval(seq.get("local"), seq.get("vanilla")),
                    "gap": _loss(m) - _loss(v),
                    "gap_eval_ci95": _eval_interval(seq.get("vanilla"), seq.get("myopic")),
                    "gap_per_position": [b - a for a, b in zip(pv, pm, strict=False)],
                    "per_sequence": {arm: losses for arm, losses in seq.items() if losses},
                    **_baseline_fractions(done),
                    **_accuracies(done),
                }
            )
    return rows


def _baseline_fractions(done: dict[str, Any]) -> dict[str, Any]:
    """D_p runs: each arm's fraction of the trivial myopic baseline (all positions, past the window) and per
    position; nothing for text runs or runs evaluated before the baseline was recorded."""
    evals = {arm: run.result["eval"] for arm, run in done.items()}
    if not all("baseline_per_position" in e for e in evals.values()):
        return {}
    base = evals["vanilla"]["baseline_per_position"]
    return {
        "fraction_of_baseline": {
            arm: {"all": e["fraction_of_baseline"], "past_window": e["fraction_of_baseline_past_window"]}
            for arm, e in evals.items()
        },
        "fraction_of_baseline_per_position": {
            arm: [x / b if b else None for x, b in zip(e["per_position"], base, strict=False)]
            for arm, e in evals.items()
        },
    }


def _accuracies(done: dict[str, Any]) -> dict[str, Any]:
    """Multiplication runs: each arm's exact-match accuracy, overall and by operand digit counts."""
    evals = {arm: run.result["eval"] for arm, run in done.items()}
    if not all("accuracy" in e for e in evals.values()):
        return {}
    return {
        "accuracy": {arm: e["accuracy"] for arm, e in evals.items()},
        "accuracy_hardest": {arm: e.get("accuracy_hardest") for arm, e in evals.items()},
        "accuracy_by_length": {arm: e["accuracy_by_length"] for arm, e in evals.items()},
    }


def _eval_interval(base: list[float] | None, other: list[float] | None) -> tuple[float, float] | None:
    """Of mean(other − base) over the held-out sequences both arms scored."""
    if not base or not other or len(base) != len(other):
        return None
    return blocked_interval(np.subtract(other, base))


def _size_row(size: str, group: list[dict[str, Any]]) -> SizeGap:
    arms = set.intersection(*(set(r["per_sequence"]) for r in group))
    lengths = {len(r["per_sequence"][a]) for r in group for a in arms}
    with_bigram = all(r["bigram_loss"] is not None for r in group)
    with_local = all(r["local_loss"] is not None for r in group)
    row = size_gap(
        size,
        group[0]["n_params_nonembedding"],
        [r["vanilla_loss"] for r in group],
        [r["myopic_loss"] for r in group],
        bigram=[r["bigram_loss"] for r in group] if with_bigram else None,
        local=[r["local_loss"] for r in group] if with_local else None,
        # the same held-out set in every pair of the size, else no interval over sequences
        per_sequence={a: [r["per_sequence"][a] for r in group] for a in arms} if len(lengths) == 1 else None,
    )
    if all("fraction_of_baseline" in r for r in group):
        shared = set.intersection(*(set(r["fraction_of_baseline"]) for r in group))
        row.fraction_of_baseline = {
            arm: {k: float(np.mean([r["fraction_of_baseline"][arm][k] for r in group])) for k in ("all", "past_window")}
            for arm in sorted(shared)
        }
    if all("accuracy" in r for r in group):
        shared = set.intersection(*(set(r["accuracy"]) for r in group))
        row.accuracy = {arm: mean_interval([r["accuracy"][arm] for r in group]) for arm in sorted(shared)}
        if all(r["accuracy_hardest"].get(arm) is not None for r in group for arm in shared):
            hardest = {arm: [r["accuracy_hardest"][arm] for r in group] for arm in sorted(shared)}
            row.accuracy_hardest = {arm: mean_interval(values) for arm, values in hardest.items()}
        row.accuracy_by_length = {arm: _mean_by_key([r["accuracy_by_length"][arm] for r in group]) for arm in shared}
    return row


def _mean_by_key(dicts: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Per key, the mean of the values present (None where no seed had any)."""
    out: dict[str, float | None] = {}
    for key in dicts[0]:
        values = [d[key] for d in dicts if d.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def sweep_results(db: sessionmaker, sweep_id: str) -> dict[str, Any]:
    """The API's results document: per size (in scale order), the fit, and the pairs behind them."""
    sweep = get_sweep(db, sweep_id)
    rows = pair_gaps(sweep)
    by_size: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_size[row["size"]].append(row)
    sizes: list[SizeGap] = [
        _size_row(size, group)
        for size, group in sorted(by_size.items(), key=lambda kv: kv[1][0]["n_params_nonembedding"])
    ]
    for row in rows:
        del row["per_sequence"]  # used above; the runs hold them
    fit, fit_large = fit_gap(sizes), fit_gap(sizes, min_params=PYTHIA_SIZES["160m"].n_params_nonembedding())
    rows_out = [s.model_dump() for s in sizes]
    previous = sweep.previous_sweep_id
    if previous:  # a scheduled rerun: did each size's gap move since the previous sweep? (gaps paired by seed)
        before: dict[str, dict[int, float]] = defaultdict(dict)  # that sweep's own pairs only: no walk down the history
        for row in pair_gaps(get_sweep(db, previous)):
            before[row["size"]][row["seed"]] = row["gap"]
        now: dict[str, dict[int, float]] = defaultdict(dict)
        for row in rows:
            now[row["size"]][row["seed"]] = row["gap"]
        tests = drift_across_sizes([drift(before.get(r["size"], {}), now[r["size"]]) for r in rows_out])
        for row, test in zip(rows_out, tests, strict=True):
            row.update(test.model_dump())
    return {
        "sweep_id": sweep_id,
        "previous_sweep_id": previous,
        "sizes": rows_out,
        "fit": fit.model_dump() if fit else None,
        "fit_from_160m": fit_large.model_dump() if fit_large else None,
        "pairs": rows,
        "mlflow": links(sweep),
    }


# matplotlib's text layout (mathtext's parser, the font cache) is not thread-safe, and the API renders in a thread
# pool: two concurrent renders failed 58 times in 73. One at a time (a render takes well under a second).
_RENDERING = threading.Lock()


def gap_plot(results: dict[str, Any]) -> bytes:
    """PNG: the gap against non-embedding parameters (mean with 95% interval, each pair, the fit) and the mean
    gap per position for each size."""
    with _RENDERING:
        return _gap_plot(results)


def _gap_plot(results: dict[str, Any]) -> bytes:
    baseline = [r for r in results["pairs"] if r.get("fraction_of_baseline_per_position")]
    fig = Figure(figsize=(16 if baseline else 11, 4))
    ax1, ax2, *ax3 = fig.subplots(1, 3 if baseline else 2)
    sizes = results["sizes"]
    for row in results["pairs"]:
        ax1.scatter(row["n_params_nonembedding"], row["gap"], color="grey", s=12, alpha=0.6)
    if sizes:
        x = [s["n_params_nonembedding"] for s in sizes]
        ax1.plot(x, [s["gap_mean"] for s in sizes], "o-", label="mean gap over seeds")
        # both intervals, labelled: over seeds (none from one pair) and over held-out sequences (slightly offset)
        for key, shift, style, label in (
            ("gap_ci95", 1.0, dict(capsize=4, color="C0"), "95% CI over seeds (training variance)"),
            ("gap_eval_ci95", 1.03, dict(capsize=2, color="C3", lw=2), "95% CI over held-out sequences"),
        ):
            ci = [s for s in sizes if s.get(key)]
            if ci:
                ax1.errorbar(
                    [s["n_params_nonembedding"] * shift for s in ci],
                    [s["gap_mean"] for s in ci],
                    fmt="none",
                    yerr=[[s["gap_mean"] - s[key][0] for s in ci], [s[key][1] - s["gap_mean"] for s in ci]],
                    label=label,
                    **style,
                )
        if len(sizes) == 1:  # a log axis around a single point would span a few percent of it
            ax1.set_xlim(x[0] / 3, x[0] * 3)
        for s in sizes:
            ax1.annotate(
                s["size"],
                (s["n_params_nonembedding"], s["gap_mean"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    for key, what in (("fit", "all sizes"), ("fit_from_160m", "from 160m")):
        f = results.get(key)
        if f:
            n = {s["size"]: s["n_params_nonembedding"] for s in sizes}
            xs = np.logspace(np.log10(min(n[s] for s in f["sizes"])), np.log10(max(n[s] for s in f["sizes"])), 50)
            lo, hi = f["slope_ci95"]
            label = f"fit, {what}: {f['slope']:+.3f} per decade [{lo:+.3f}, {hi:+.3f}]"
            ax1.plot(xs, f["intercept"] + f["slope"] * np.log10(xs), "--", label=label)
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set(
        xscale="log",
        xlabel="non-embedding parameters",
        ylabel="myopia gap (myopic − vanilla)",
        title="myopia gap against scale",
    )
    ax1.legend(fontsize=8)
    per_size: dict[str, list[list[float]]] = defaultdict(list)
    params = {row["size"]: row["n_params_nonembedding"] for row in results["pairs"]}
    for row in results["pairs"]:
        if row["gap_per_position"]:
            per_size[row["size"]].append(row["gap_per_position"])
    for size, curves in sorted(per_size.items(), key=lambda kv: params[kv[0]]):
        n = min(len(c) for c in curves)
        at = [mean_interval([c[i] for c in curves]) for i in range(n)]
        (line,) = ax2.plot([m for m, _, _ in at], label=size)
        if len(curves) > 1:  # the interval over seeds, position by position
            lo, hi = ([ci[k] for _, _, ci in at] for k in (0, 1))
            ax2.fill_between(range(n), lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax2.axhline(0, color="black", lw=0.5)
    ax2.set(xlabel="position", ylabel="gap", title="gap per position (mean; band: 95% CI over seeds)")
    if per_size:
        ax2.legend(fontsize=8)
    if ax3:  # D_p: how far each arm gets below the trivial myopic baseline, per position
        by: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
        for row in baseline:
            for arm, curve in row["fraction_of_baseline_per_position"].items():
                by[(row["size"], arm)].append(curve)
        for (size, arm), curves in sorted(by.items()):
            n = min(len(c) for c in curves)
            mean = [np.mean([c[i] for c in curves if c[i] is not None] or [np.nan]) for i in range(n)]
            ax3[0].plot(mean, label=f"{arm} ({size})", ls="-" if arm == "myopic" else "--")
        ax3[0].axhline(1, color="black", lw=0.5)
        ax3[0].set(xlabel="position", ylabel="Huber/p ÷ baseline's", title="fraction of the trivial myopic baseline")
        ax3[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def tracking_of(sweep: Sweep) -> dict[str, Any] | None:
    """The MLflow tracking section the sweep's runs carry, or None where they are not tracked."""
    spec = sweep.runs[0].spec if sweep.runs else None
    return spec["tracking"] if spec and spec["tracking"].get("mlflow_uri") else None


def links(sweep: Sweep) -> dict[str, Any] | None:
    """Where the sweep lives in MLflow (for the results document), as the store records it."""
    tracking = tracking_of(sweep)
    if tracking is None:
        return None
    return {
        "tracking_uri": tracking["mlflow_uri"],
        "experiment": tracking["experiment"],
        "experiment_id": sweep.mlflow_experiment_id,
        "sweep_run_id": sweep.mlflow_run_id,
        "pair_run_ids": {p.id: p.mlflow_run_id for p in sweep.pairs},
    }

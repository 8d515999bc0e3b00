"""A finished sweep's results as the markdown tables of docs/results.md, and its plot, from the REST API.

    python bench/sweep_report.py SWEEP_ID --png docs/figures/cpu_ladder.png --json docs/figures/cpu_ladder.json
    (MYOPIA_API_URL, MYOPIA_API_TOKEN)

--json writes the results document as the API returns it (per size, the fits, every pair with its gap per
position), with the sweep's request, the command, and each run's times, held-out sequence count and last training
loss (from MLflow, where it still has the run): the raw numbers behind the tables and the prose.

Per size: the losses, the gap with its interval over seeds and over held-out sequences, and (with a bigram arm) the
share of the context benefit lost; then the gap by position band, mean over seeds with its interval over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np

from api.client_cli import Api
from services.gap_stats import mean_interval

BANDS = [(0, 1), (1, 10), (10, 32), (32, 64), (64, None)]  # positions (0-based) of the predicting token


def _ci(ci: list[float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def bonus_table(res: dict) -> list[str]:
    """With a local arm: per size, the local myopia bonus (vanilla − local) with both intervals."""
    rows = [s for s in res["sizes"] if s.get("bonus") is not None]
    if not rows:
        return []
    lines = ["| size | seeds | vanilla | local | bonus (vanilla − local) | 95% CI over seeds | 95% CI over held-out "
             "sequences |", "|---" * 7 + "|"]  # fmt: skip
    for s in rows:
        lines.append(
            f"| {s['size']} | {s['n_pairs']} | {s['vanilla_loss_mean']:.4f} | {s['local_loss_mean']:.4f} | "
            f"**{s['bonus']:+.4f}** | {_ci(s['bonus_ci95'])} | {_ci(s['bonus_eval_ci95'])} |"
        )
    return lines


def size_table(res: dict) -> list[str]:
    """Per size: the losses, the gap with both intervals, the share lost (with a bigram arm); then the fits."""
    bigram = any(s.get("bigram_loss_mean") is not None for s in res["sizes"])
    head = ["size", "non-embedding params", "seeds", "vanilla", "myopic", *(["bigram"] if bigram else []), "gap"]
    head += ["95% CI over seeds", "95% CI over held-out sequences"]
    head += ["share of context benefit lost"] if bigram else []
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s in res["sizes"]:
        row = [s["size"], f"{s['n_params_nonembedding']:,}", str(s["n_pairs"]), f"{s['vanilla_loss_mean']:.4f}"]
        row += [f"{s['myopic_loss_mean']:.4f}"] + ([f"{s['bigram_loss_mean']:.4f}"] if bigram else [])
        row += [f"**{s['gap_mean']:+.4f}**", _ci(s["gap_ci95"]), _ci(s["gap_eval_ci95"])]
        if bigram:
            share = s.get("share_lost")
            seeds, seqs = s.get("share_lost_ci95"), s.get("share_lost_eval_ci95")
            ci = f"{_ci(seeds)} (seeds)" if seeds else f"{_ci(seqs)} (held-out seqs)" if seqs else ""
            row.append("—" if share is None else f"{share:.3f} {ci}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def fit_lines(res: dict) -> list[str]:
    lines = []
    for key, what in (("fit", "all sizes"), ("fit_from_160m", "from 160m")):
        f = res.get(key)
        if f:
            lo, hi = f["slope_ci95"]
            lines.append(
                f"fit over {what}: {f['slope']:+.4f} per decade of non-embedding parameters, 95% CI "
                f"[{lo:+.4f}, {hi:+.4f}] ({'weighted by SE over seeds' if f['weighted'] else 'unweighted'}), "
                f"R² {f['r_squared']:.3f}"
            )
    return lines


def pair_table(res: dict) -> list[str]:
    """Per size and seed: vanilla → myopic, gap [95% CI over held-out sequences]."""
    seeds = sorted({p["seed"] for p in res["pairs"]})
    lines = ["| size | " + " | ".join(f"seed {k}" for k in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for size in [s["size"] for s in res["sizes"]]:
        by_seed = {p["seed"]: p for p in res["pairs"] if p["size"] == size}
        cells = [
            f"{p['vanilla_loss']:.4f} → {p['myopic_loss']:.4f}, {p['gap']:+.4f} {_ci(p['gap_eval_ci95'])}"
            if (p := by_seed.get(k))
            else "—"
            for k in seeds
        ]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return lines


def _curves(res: dict) -> dict[str, list[list[float]]]:
    """Each size's gap-per-position curves, one per pair (seed)."""
    curves: dict[str, list[list[float]]] = defaultdict(list)
    for pair in res["pairs"]:
        curves[pair["size"]].append(pair["gap_per_position"])
    return curves


def _band_means(curves: list[list[float]], a: int, b: int | None) -> list[float]:
    """Each seed's gap averaged over positions a..b-1 (to the end where b is None)."""
    return [float(np.mean(c[a:b])) for c in curves]


def band_table(res: dict) -> list[str]:
    """The gap by position band, mean over seeds with its 95% interval over seeds."""
    curves = _curves(res)
    length = min(len(c) for cs in curves.values() for c in cs)
    bands = [(a, b) for a, b in BANDS if a < length]
    names = [f"position {a}" if b == a + 1 else f"{a}–{(b or 0) - 1}" if b else f"{a}–end" for a, b in bands]
    lines = ["| size | " + " | ".join(n if n.startswith("position ") else f"positions {n}" for n in names) + " |"]
    lines.append("|---" * (len(bands) + 1) + "|")
    for size in [s["size"] for s in res["sizes"]]:
        cells = []
        for a, b in bands:
            mean, _, ci = mean_interval(_band_means(curves[size], a, b))
            cells.append(f"{mean:+.4f} {_ci(ci)}")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return lines


def band_tests(res: dict) -> list[str]:
    """Does the gap differ between neighbouring position bands? A paired t-test over seeds on each seed's band
    means (the seeds' models are the units; positions within a seed are not independent), Holm-adjusted across
    the sweep's comparisons."""
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    curves = _curves(res)
    rows = []
    for size in [s["size"] for s in res["sizes"]]:
        cs = curves[size]
        if len(cs) < 3:
            continue
        length = min(len(c) for c in cs)
        bands = [(a, b or length) for a, b in BANDS if a < length]
        for (a0, b0), (a1, b1) in zip(bands, bands[1:], strict=False):
            first, second = _band_means(cs, a0, b0), _band_means(cs, a1, b1)
            diff = float(np.mean(second) - np.mean(first))
            rows.append((size, _band(a1, b1), _band(a0, b0), diff, stats.ttest_rel(second, first).pvalue, len(cs)))
    if not rows:
        return []
    holm = multipletests([r[4] for r in rows], method="holm")[1]
    return [
        f"{size}: {later} against {earlier}: {diff:+.4f}, paired t over {n} seeds p = {p:.2g} (Holm {h:.2g})"
        for (size, later, earlier, diff, p, n), h in zip(rows, holm, strict=True)
    ]


def _band(a: int, b: int) -> str:
    return f"position {a}" if b == a + 1 else f"positions {a}–{b - 1}"


FINAL = ("succeeded", "failed", "cancelled")


def _seconds(a: str | None, b: str | None) -> float | None:
    if a is None or b is None:
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def run_records(api: Api, sweep_id: str) -> list[dict]:
    """Each run's status and times from its history (queued, first running, ended), its held-out sequence count,
    and, where MLflow still has the run, its training loss over the last tenth of its steps: how long the runs
    took and how far they trained, for the docs."""
    records, cursor = [], None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = api.call("GET", f"/v1/sweeps/{sweep_id}/runs", params=params).json()
        for item in page["items"]:
            run = api.call("GET", f"/v1/runs/{item['id']}").json()
            first: dict[str, str] = {}
            for e in run["events"]:
                first.setdefault(e["status"], e["at"])
            ended = next((e["at"] for e in reversed(run["events"]) if e["status"] in FINAL), None)
            result = run["result"] or {}
            record = {k: run[k] for k in ("id", "arm", "size", "seed", "status", "attempt")}
            record |= {
                "queued_at": run["events"][0]["at"] if run["events"] else None,
                "running_at": first.get("running"),
                "ended_at": ended,
                "running_s": _seconds(first.get("running"), ended),
                "held_out_sequences": (result.get("eval") or {}).get("sequences"),
                "train_loss_last_tenth": _last_training_loss(result),
            }
            records.append(record)
        if not (cursor := page["next_cursor"]):
            return records


def _last_training_loss(result: dict) -> float | None:
    tracking = (result.get("spec") or {}).get("tracking") or {}
    if not (result.get("mlflow_run_id") and tracking.get("mlflow_uri")):
        return None
    from mlflow.tracking import MlflowClient

    try:
        history = MlflowClient(tracking["mlflow_uri"]).get_metric_history(result["mlflow_run_id"], "train/loss")
    except Exception:  # noqa: BLE001 - the run was deleted from MLflow since: nothing to say
        return None
    last = [m.value for m in history if m.step > 0.9 * result["steps"]]
    return float(np.mean(last)) if last else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_id")
    ap.add_argument("--png", help="write the sweep's plot here")
    ap.add_argument("--json", help="write the results document here")
    args = ap.parse_args()
    api = Api.from_env()
    res = api.call("GET", f"/v1/sweeps/{args.sweep_id}/results").json()
    print("\n".join(size_table(res)))
    print("\n" + "\n".join(fit_lines(res)))
    print("\nper pair (seed: vanilla → myopic, gap [95% CI over held-out sequences])\n")
    print("\n".join(pair_table(res)))
    if bonus := bonus_table(res):
        print("\nlocal myopia bonus\n")
        print("\n".join(bonus))
    print("\ngap by position (mean over seeds; 95% CI over seeds)\n")
    print("\n".join(band_table(res)))
    print("\nthe gap between neighbouring bands\n")
    print("\n".join(band_tests(res)))
    if args.png:
        Path(args.png).write_bytes(api.call("GET", f"/v1/sweeps/{args.sweep_id}/results.png").content)
        print(f"\nplot: {args.png}")
    if args.json:
        sweep = api.call("GET", f"/v1/sweeps/{args.sweep_id}").json()
        command = " ".join(["python bench/sweep_report.py", *sys.argv[1:]])
        runs = run_records(api, args.sweep_id)
        ended = [r["ended_at"] for r in runs if r["ended_at"]]
        doc = {
            "command": command,
            "request": sweep["request"],
            "created_at": sweep["created_at"],
            "last_ended_at": max(ended, default=None),
            "created_to_last_ended_s": _seconds(sweep["created_at"], max(ended, default=None)),
            "results": res,
            "runs": runs,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()

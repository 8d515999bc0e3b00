"""A finished sweep's results as the markdown tables of docs/results.md, and its plot, from the REST API.

    python bench/sweep_report.py SWEEP_ID --png docs/figures/cpu_ladder.png --json docs/figures/cpu_ladder.json
    (MYOPIA_API_URL, MYOPIA_API_TOKEN)

--json writes the results document as the API returns it (per size, the fits, every pair with its gap per
position), with the sweep's request and the command: the raw numbers behind the tables.

Per size: the losses, the gap with its interval over seeds and over held-out sequences, and (with a bigram arm) the
share of the context benefit lost; then the gap by position band, mean over seeds with its interval over seeds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
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


def band_table(res: dict) -> list[str]:
    """The gap by position band, mean over seeds with its 95% interval over seeds."""
    curves: dict[str, list[list[float]]] = defaultdict(list)
    for pair in res["pairs"]:
        curves[pair["size"]].append(pair["gap_per_position"])
    length = min(len(c) for cs in curves.values() for c in cs)
    bands = [(a, b) for a, b in BANDS if a < length]
    names = [f"position {a}" if b == a + 1 else f"{a}–{(b or 0) - 1}" if b else f"{a}–end" for a, b in bands]
    lines = ["| size | " + " | ".join(n if n.startswith("position ") else f"positions {n}" for n in names) + " |"]
    lines.append("|---" * (len(bands) + 1) + "|")
    for size in [s["size"] for s in res["sizes"]]:
        cells = []
        for a, b in bands:
            per_seed = [float(np.mean(c[a:b])) for c in curves[size]]
            mean, _, ci = mean_interval(per_seed)
            cells.append(f"{mean:+.4f} {_ci(ci)}")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return lines


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
    if args.png:
        Path(args.png).write_bytes(api.call("GET", f"/v1/sweeps/{args.sweep_id}/results.png").content)
        print(f"\nplot: {args.png}")
    if args.json:
        sweep = api.call("GET", f"/v1/sweeps/{args.sweep_id}").json()
        command = f"python bench/sweep_report.py {args.sweep_id} --json {args.json}"
        doc = {"command": command, "request": sweep["request"], "created_at": sweep["created_at"], "results": res}
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()

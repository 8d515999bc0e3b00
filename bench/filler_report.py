"""Multiplication with filler positions: two finished sweeps of the `multiplication-cpu` preset that differ only in
the operands' padding, side by side: exact match per arm and pad (on the hardest problems, over all, and by operand
lengths; every figure on held-out problems, never trained on), and what the extra filler positions gain each arm,
paired by seed, with 95% intervals over seeds.

    python bench/filler_report.py SWEEP_NO_FILLER SWEEP_FILLER --json docs/figures/multiplication.json
    (MYOPIA_API_URL, MYOPIA_API_TOKEN)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.client_cli import Api  # noqa: E402
from services.gap_stats import mean_interval  # noqa: E402

ARMS = ("vanilla", "myopic")


def _ci(ci) -> str:
    return "—" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def summary(sweeps: list[dict]) -> dict:
    """Per measure (exact match on the hardest problems, max × max digits, the paper's headline; and over all), pad
    and arm: mean over seeds; per arm, the filler's gain paired by seed (filler − none, same seed); and the difference
    of the gains (vanilla's − myopic's), each with its 95% interval over seeds."""
    out: dict = {}
    for measure in ("accuracy_hardest", "accuracy"):
        acc: dict[int, dict[str, dict[int, float]]] = {}
        for doc in sweeps:
            pad = doc["request"]["run"]["data"]["pad"]
            acc[pad] = {arm: {p["seed"]: p[measure][arm] for p in doc["results"]["pairs"]} for arm in ARMS}
        low, high = sorted(acc)
        seeds = sorted(set.intersection(*(set(acc[pad][arm]) for pad in acc for arm in ARMS)))
        gain = {arm: [acc[high][arm][s] - acc[low][arm][s] for s in seeds] for arm in ARMS}
        out[measure] = {
            "pads": [low, high],
            "seeds": seeds,
            "mean": {str(pad): {arm: mean_interval([acc[pad][arm][s] for s in seeds]) for arm in ARMS} for pad in acc},
            "gain": {arm: mean_interval(gain[arm]) for arm in ARMS},
            "gain_difference": mean_interval([v - m for v, m in zip(gain["vanilla"], gain["myopic"], strict=True)]),
        }
    return out


def tables(doc: dict) -> list[str]:
    lines = []
    for measure, what in (("accuracy_hardest", "hardest problems (max × max digits)"), ("accuracy", "all problems")):
        s = doc["summary"][measure]
        low, high = s["pads"]
        lines += [f"| exact match, {what} | pad {low} | pad {high} | gain from filler (paired by seed) |"]
        lines += ["|---|---|---|---|"]
        for arm in ARMS:
            cells = []
            for pad in (low, high):
                mean, _, ci = s["mean"][str(pad)][arm]
                cells.append(f"{mean:.3f} {_ci(ci)}")
            mean, _, ci = s["gain"][arm]
            lines.append(f"| {arm} | {cells[0]} | {cells[1]} | **{mean:+.3f}** {_ci(ci)} |")
        mean, _, ci = s["gain_difference"]
        lines += [f"| vanilla's gain − myopic's | | | **{mean:+.3f}** {_ci(ci)} |", ""]
    by_length = [
        (d["request"]["run"]["data"]["pad"], d["results"]["sizes"][0]["accuracy_by_length"]) for d in doc["sweeps"]
    ]
    keys = list(by_length[0][1]["vanilla"])
    lines += ["| pad | arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for pad, table in sorted(by_length):
        for arm in ARMS:
            lines.append(f"| {pad} | {arm} | " + " | ".join(f"{table[arm][k]:.3f}" for k in keys) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    api = Api.from_env()
    sweeps = []
    for sweep_id in args.sweeps:
        sweep = api.call("GET", f"/v1/sweeps/{sweep_id}").json()
        results = api.call("GET", f"/v1/sweeps/{sweep_id}/results").json()
        sweeps.append({"sweep_id": sweep_id, "request": sweep["request"], "created_at": sweep["created_at"],
                       "results": results})  # fmt: skip
    command = f"python bench/filler_report.py {' '.join(args.sweeps)}" + (f" --json {args.json}" if args.json else "")
    doc = {"command": command, "sweeps": sweeps, "summary": summary(sweeps)}
    print("\n".join(tables(doc)))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

"""The control for the local myopia bonus (bench/local_bonus.py): is a positive bonus the vanilla model's sacrifice,
or only that it was under-trained? Each vanilla run of the sizes asked is trained again from scratch for `--steps`
(the local arm's whole budget: its vanilla partner's steps plus its own), same seed, data order and schedule shape;
then the local arm (from docs/figures/local_bonus.json) is compared with that longer vanilla run, paired by seed.

    python bench/local_control.py SWEEP_ID --sizes 0.1m --steps 600 --json docs/figures/local_control.json

`local − vanilla(longer)` > 0: the longer vanilla run beats the local arm, so the bonus measured against the shorter
one is (at least partly) under-training, not a sacrifice of the present for the future.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import local_bonus  # noqa: E402 - bench/ is on sys.path: this file's own folder

from services.gap_stats import mean_interval  # noqa: E402
from services.results import _label, _loss  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.store import connect  # noqa: E402
from services.sweeps import get_sweep  # noqa: E402
from trainers.spec import RunSpec  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def train_longer(vanilla_run, steps: int, work: Path) -> dict:
    spec = RunSpec.model_validate(vanilla_run.spec)
    train = {**spec.train.model_dump(), "steps": steps}
    longer = {**spec.model_dump(), "name": f"{vanilla_run.id}-{steps}", "train": train}
    return local_bonus.train(RunSpec.model_validate(longer), work)  # re-validated with its new step count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep")
    ap.add_argument("--sizes", nargs="+", required=True)
    ap.add_argument("--steps", type=int, required=True, help="the longer vanilla runs' steps")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    local = {(r["size"], r["seed"]): r for r in json.loads((FIGURES / "local_bonus.json").read_text())["runs"]}
    db = connect(Settings().database)
    vanillas = [r for r in get_sweep(db, args.sweep).runs if r.arm == "vanilla" and r.status == "succeeded"]
    vanillas = [r for r in vanillas if _label(r.spec) in args.sizes and (_label(r.spec), r.spec["seed"]) in local]
    db.kw["bind"].dispose()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.parallel) as pool:
        longer = list(pool.map(lambda r: train_longer(r, args.steps, Path(tmp)), vanillas))
    sizes, runs = [], []
    for size in args.sizes:
        rows = [(v, lo) for v, lo in zip(vanillas, longer, strict=True) if _label(v.spec) == size]
        pairs = [(_loss(v.result), _loss(lo), local[(size, v.spec["seed"])]["local_loss"]) for v, lo in rows]
        diff, _, ci = mean_interval([loc - long for _, long, loc in pairs])
        sizes.append({
            "size": size, "seeds": len(pairs), "steps": rows[0][0].spec["train"]["steps"], "longer_steps": args.steps,
            "vanilla_loss_mean": sum(p[0] for p in pairs) / len(pairs),
            "longer_vanilla_loss_mean": sum(p[1] for p in pairs) / len(pairs),
            "local_loss_mean": sum(p[2] for p in pairs) / len(pairs),
            "local_minus_longer": diff, "local_minus_longer_ci95": ci,
        })  # fmt: skip
        runs += [{"size": size, "seed": v.spec["seed"], "name": lo["name"], "loss": _loss(lo),
                  "wall_s": round(lo["wall_s"], 1)} for v, lo in rows]  # fmt: skip
    print("\n".join(table(sizes)))
    if args.json:
        args.json.write_text(json.dumps({
            "command": "python bench/local_control.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores",
            "sweep_id": args.sweep, "sizes": sizes, "runs": runs,
        }, indent=1))  # fmt: skip


def table(sizes: list[dict]) -> list[str]:
    lines = [
        "| size | seeds | vanilla | local (on it) | vanilla, longer | local − vanilla longer | 95% CI over seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sizes:
        ci = s["local_minus_longer_ci95"]
        lines.append(
            f"| {s['size']} | {s['seeds']} | {s['vanilla_loss_mean']:.4f} ({s['steps']} steps) | "
            f"{s['local_loss_mean']:.4f} | {s['longer_vanilla_loss_mean']:.4f} ({s['longer_steps']} steps) | "
            f"**{s['local_minus_longer']:+.4f}** | " + (f"[{ci[0]:+.4f}, {ci[1]:+.4f}] |" if ci else "- |")
        )
    return lines


if __name__ == "__main__":
    main()

"""The local myopia bonus on a finished ladder: a local arm for each of its vanilla runs, trained on that run's
frozen past (its final checkpoint), then the bonus (vanilla − local) per size with its intervals over seeds and over
held-out sequences, next to the sweep's gap.

    python bench/local_bonus.py SWEEP_ID --json docs/figures/local_bonus.json [--parallel 2] [--sizes 0.1m] [--merge]

The local arms are the sweep's vanilla specs with `attention.mode: local` and `past_from` the vanilla run (what a
sweep with arms [vanilla, myopic, local] plans; here the vanilla runs already exist, so they are not trained again).
Each runs as `python -m trainers.entry` (Ray Train, DeepSpeed), logging under its pair's MLflow run; the sweep's
runs are read from the control plane's database (MYOPIA_DATABASE_URL, else the data dir's SQLite file).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sweep_report  # noqa: E402 - bench/ is on sys.path: this file's own folder

from services.gap_stats import size_gap  # noqa: E402
from services.results import _label, _loss, _nonembedding  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.store import connect  # noqa: E402
from services.sweeps import get_sweep  # noqa: E402
from trainers.spec import RunSpec  # noqa: E402


def train(spec: RunSpec, work: Path) -> dict:
    """One run through the real run path (`python -m trainers.entry`: Ray Train, DeepSpeed): its result, wall time."""
    path, out = work / f"{spec.name}.json", work / f"{spec.name}.result.json"
    path.write_text(spec.model_dump_json())
    began = time.time()
    done = subprocess.run([sys.executable, "-m", "trainers.entry", str(path), "--out", str(out)], capture_output=True)
    if done.returncode:
        raise RuntimeError(f"{spec.name} failed:\n{done.stdout.decode()[-3000:]}\n{done.stderr.decode()[-3000:]}")
    return {**json.loads(out.read_text()), "wall_s": time.time() - began}


def train_local(vanilla_run, work: Path) -> dict:
    name = vanilla_run.id.removesuffix("-vanilla") + "-local"
    spec = RunSpec.model_validate(vanilla_run.spec).arm("local", past_from=vanilla_run.id)
    return train(spec.model_copy(update={"name": name}), work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--parallel", type=int, default=2, help="local arms trained at once (one core each)")
    ap.add_argument("--sizes", nargs="*", help="only these sizes (labels) of the sweep")
    ap.add_argument("--merge", action="store_true", help="keep the other sizes already in --json (run earlier)")
    args = ap.parse_args()
    db = connect(Settings().database)
    sweep = get_sweep(db, args.sweep)
    by_pair: dict[str, dict] = defaultdict(dict)
    for run in sweep.runs:
        if run.status == "succeeded":
            by_pair[run.pair_id][run.arm] = run
    pairs = [arms for arms in by_pair.values() if {"vanilla", "myopic"} <= arms.keys()]
    pairs = [arms for arms in pairs if not args.sizes or _label(arms["vanilla"].spec) in args.sizes]
    db.kw["bind"].dispose()  # read: no connection stays open beside the control plane's while the arms train
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.parallel) as pool:
        local = list(pool.map(lambda arms: train_local(arms["vanilla"], Path(tmp)), pairs))
    rows: dict[str, list] = defaultdict(list)
    for arms, lo in zip(pairs, local, strict=True):
        rows[_label(arms["vanilla"].spec)].append((arms, lo))
    sizes, runs = [], []
    for size, group in sorted(rows.items(), key=lambda kv: _nonembedding(kv[1][0][0]["vanilla"].spec)):
        losses = {arm: [_loss(arms[arm].result) for arms, _ in group] for arm in ("vanilla", "myopic")}
        per_sequence = {arm: [arms[arm].result["eval"]["per_sequence"] for arms, _ in group] for arm in losses}
        per_sequence["local"] = [lo["eval"]["per_sequence"] for _, lo in group]
        row = size_gap(
            size, _nonembedding(group[0][0]["vanilla"].spec), losses["vanilla"], losses["myopic"],
            local=[_loss(lo) for _, lo in group], per_sequence=per_sequence,
        )  # fmt: skip
        sizes.append(row.model_dump())
        runs += [
            {"size": size, "seed": lo["seed"], "name": lo["name"], "past_from": arms["vanilla"].id,
             "vanilla_loss": _loss(arms["vanilla"].result), "local_loss": _loss(lo), "wall_s": round(lo["wall_s"], 1),
             "local_per_position": lo["eval"]["per_position"]}
            for arms, lo in group
        ]  # fmt: skip
    print(f"local myopia bonus on sweep {args.sweep} (vanilla − local; > 0: the local arm is better)\n")
    print("\n".join(sweep_report.bonus_table({"sizes": sizes})))
    if args.json:
        command = "python bench/local_bonus.py " + " ".join(sys.argv[1:])
        if args.merge and args.json.exists():  # the other sizes' rows as an earlier command wrote them
            before = json.loads(args.json.read_text())
            done = {row["size"] for row in sizes}
            command = f"{before['command']}; then {command}"
            sizes = [row for row in before["sizes"] if row["size"] not in done] + sizes
            runs = [run for run in before["runs"] if run["size"] not in done] + runs
        doc = {
            "command": command,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores",
            "sweep_id": args.sweep,
            "sizes": sizes,
            "runs": runs,
        }
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

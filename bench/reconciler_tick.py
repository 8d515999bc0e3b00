"""The reconciler's idle cost against the size of the queue and of history: a real embedded Ray head, a SQLite
store with N queued runs (sweeps of 400 runs, the cap: 2 sizes × 100 seeds × 2 arms) and finished ones, no free
slot (so nothing is submitted), and the CPU time of one tick, median of 20, in each of --repeats fresh stores.

    python bench/reconciler_tick.py [--queued 0 1600 6400] [--finished 6400] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queued", type=int, nargs="+", default=[0, 1600, 6400])
    ap.add_argument("--finished", type=int, default=6400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()

    from cluster.local import EmbeddedHead, configure_loopback

    configure_loopback()
    from cluster.jobs import Jobs
    from services.planner import SweepRequest

    per_sweep = 400
    request = SweepRequest.model_validate({"name": "load", "sizes": ["14m", "31m"],
                                           "seeds": list(range(100)), "arms": ["vanilla", "myopic"],
                                           "run": {"train": {"steps": 10}}})  # fmt: skip
    head = EmbeddedHead(num_cpus=1).start()
    try:
        jobs = Jobs(lambda: head.jobs_address, token=head.token)
        print("| queued runs | finished runs | tick CPU ms (median of 20), per repeat | tick wall ms, per repeat |")
        print("|---|---|---|---|")
        rows = []
        for queued in args.queued:
            cpus, walls = [], []
            for _ in range(args.repeats):
                cpu, wall = _ticks(jobs, request, per_sweep, queued, args.finished)
                cpus.append(cpu)
                walls.append(wall)
            rows.append({"queued": queued, "finished": args.finished, "tick_cpu_ms": cpus, "tick_wall_ms": walls})
            print(f"| {queued:,} | {args.finished:,} | {_list(cpus)} | {_list(walls)} |")
    finally:
        head.stop()
    if args.json:
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        doc = {"command": " ".join(["python bench/reconciler_tick.py", *sys.argv[1:]]), "machine": machine,
               "rows": rows}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=1))


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _ticks(jobs, request, per_sweep: int, queued: int, finished: int) -> tuple[float, float]:
    """(CPU ms, wall ms) of one tick, median of 20, in a fresh store of `queued` and `finished` runs."""
    from sqlalchemy import update

    from services.reconciler import Reconciler
    from services.store import Run, RunStatus, connect
    from services.sweeps import create_sweep

    with tempfile.TemporaryDirectory() as tmp:
        db = connect(f"sqlite:///{Path(tmp) / 'cp.db'}")
        for _ in range(finished // per_sweep):
            sweep, _ = create_sweep(db, request)
            with db.begin() as s:
                s.execute(update(Run).where(Run.sweep_id == sweep.id).values(status=RunStatus.SUCCEEDED))
        for _ in range(queued // per_sweep):
            create_sweep(db, request)
        rec = Reconciler(db, jobs, Path(tmp), max_concurrent=0)
        cpu, wall = [], []
        for _ in range(20):
            c0, w0 = time.process_time(), time.perf_counter()
            rec.tick()
            cpu.append(1000 * (time.process_time() - c0))
            wall.append(1000 * (time.perf_counter() - w0))
        return statistics.median(cpu), statistics.median(wall)


if __name__ == "__main__":
    main()

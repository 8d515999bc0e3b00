"""The reconciler's idle cost against the size of the queue and of history: a real embedded Ray head, a SQLite
store with N queued runs (sweeps of 800 runs: 4 sizes × 100 seeds × 2 arms) and finished ones, no free
slot (so nothing is submitted), and the CPU time of one tick, median of 20.

    python bench/reconciler_tick.py [--queued 0 1600 6400] [--finished 6400]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queued", type=int, nargs="+", default=[0, 1600, 6400])
    ap.add_argument("--finished", type=int, default=6400)
    args = ap.parse_args()

    from cluster.local import EmbeddedHead, configure_loopback

    configure_loopback()
    from sqlalchemy import update

    from cluster.jobs import Jobs
    from services.planner import SweepRequest
    from services.reconciler import Reconciler
    from services.store import Run, RunStatus, connect
    from services.sweeps import create_sweep

    request = SweepRequest.model_validate({"name": "load", "sizes": ["14m", "31m", "70m", "160m"],
                                           "seeds": list(range(100)), "arms": ["vanilla", "myopic"],
                                           "run": {"train": {"steps": 10}}})  # fmt: skip
    head = EmbeddedHead(num_cpus=1).start()
    try:
        jobs = Jobs(lambda: head.jobs_address, token=head.token)
        print("| queued runs | finished runs | tick CPU ms (median of 20) | tick wall ms |")
        print("|---|---|---|---|")
        for queued in args.queued:
            with tempfile.TemporaryDirectory() as tmp:
                db = connect(f"sqlite:///{Path(tmp) / 'cp.db'}")
                for _ in range(args.finished // 800):
                    sweep, _ = create_sweep(db, request)
                    with db.begin() as s:
                        s.execute(update(Run).where(Run.sweep_id == sweep.id).values(status=RunStatus.SUCCEEDED))
                for _ in range(queued // 800):
                    create_sweep(db, request)
                rec = Reconciler(db, jobs, Path(tmp), max_concurrent=0)
                cpu, wall = [], []
                for _ in range(20):
                    c0, w0 = time.process_time(), time.perf_counter()
                    rec.tick()
                    cpu.append(1000 * (time.process_time() - c0))
                    wall.append(1000 * (time.perf_counter() - w0))
                print(
                    f"| {queued:,} | {args.finished:,} | {statistics.median(cpu):.1f} | {statistics.median(wall):.1f} |"
                )
    finally:
        head.stop()


if __name__ == "__main__":
    main()

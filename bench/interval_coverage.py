"""Coverage of 95% intervals for the mean of a correlated series (the held-out interval of services.gap_stats):
fixed blocks of 16 (the former rule), blocks chosen from the data (twice arch's Politis–White length: the rule in
use) and arch's stationary bootstrap (percentile, Politis–White block length), on simulated AR(1) series.

    python bench/interval_coverage.py [--replicates 1000] [--json docs/figures/interval_coverage.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from arch.bootstrap import StationaryBootstrap, optimal_block_length
from scipy.signal import lfilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.gap_stats import blocked_interval  # noqa: E402

SETTINGS = [(0.0, 256), (0.5, 256), (0.8, 512), (0.9, 1024), (0.95, 2048)]


def stationary_bootstrap(x: np.ndarray, seed: int) -> tuple[float, float]:
    block = max(1.0, float(optimal_block_length(x)["stationary"].iloc[0]))
    ci = StationaryBootstrap(block, x, seed=seed).conf_int(np.mean, reps=499, method="percentile")
    return float(ci[0, 0]), float(ci[1, 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # arch warns on short series
    rng = np.random.default_rng(20261204)
    rows = []
    print("| ρ | n | fixed blocks of 16 | blocks chosen from the data | stationary bootstrap |\n|---|---|---|---|---|")
    for phi, n in SETTINGS:
        hits = {"fixed16": 0, "chosen": 0, "stationary_bootstrap": 0}
        t0 = time.time()
        for r in range(args.replicates):
            x = lfilter([1.0], [1.0, -phi], rng.standard_normal(n + 500))[500:]
            for key, (lo, hi) in (
                ("fixed16", blocked_interval(x, 16)),
                ("chosen", blocked_interval(x)),
                ("stationary_bootstrap", stationary_bootstrap(x, r)),
            ):
                hits[key] += lo <= 0.0 <= hi
        cov = {k: v / args.replicates for k, v in hits.items()}
        se = math.sqrt(0.95 * 0.05 / args.replicates)
        rows.append({"phi": phi, "n": n, "replicates": args.replicates, "coverage": cov, "se_at_95": se,
                     "seconds": round(time.time() - t0, 1)})  # fmt: skip
        print(f"| {phi} | {n} | {cov['fixed16']:.3f} | {cov['chosen']:.3f} | {cov['stationary_bootstrap']:.3f} |",
              flush=True)  # fmt: skip
    if args.json:
        cmd = f"python bench/interval_coverage.py --replicates {args.replicates} --json {args.json}"
        Path(args.json).write_text(json.dumps({"command": cmd, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

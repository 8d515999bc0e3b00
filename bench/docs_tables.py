"""The docs' tables and figures rendered from the JSON files under docs/figures/ that the bench commands wrote, so
that a test (tests/unit/test_docs_figures.py) can check the docs against them, and `make docs-figures` can print
them for pasting.

    python bench/docs_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"


def load(name: str) -> dict | list:
    return json.loads((FIGURES / name).read_text())


def bench_cpu() -> list[str]:
    """docs/performance.md, CPU: the layer table (three repeats side by side) and the step ratios."""
    runs = load("bench_cpu.json")
    lines = []
    for T in (64, 512, 2048):
        for mode in ("myopic", "paper-style"):
            rows = [next(r for r in run["layer"] if r["T"] == T and r["mode"] == mode) for run in runs]
            times = ", ".join(f"{r['time_vs_vanilla']:.3f}" for r in rows)
            mib = rows[0]["memory_bytes"] / 2**20
            lines.append(f"| {T} | {mode} | {times} | {mib:.1f} MiB | {rows[0]['memory_vs_vanilla']:.3f} |")
    ratios = ", ".join(f"{run['step_myopic_vs_vanilla']:.3f}" for run in runs)
    lines.append(f"**myopic / vanilla = {ratios}**")
    return lines


def run_overhead() -> list[str]:
    """docs/performance.md: a run's fixed cost by phase, before (702fad2) and after, median (range) over the repeats
    (bench/run_overhead.py --json, run in each tree)."""
    import statistics

    trees = load("run_overhead.json")["trees"]
    totals = {"wall": "wall", "first": "submit → first step", "stored": "last step → result stored"}

    def cell(values: list[float], bold: bool = False) -> str:
        text = f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})" if values else "-"
        return f"**{text}**" if bold else text

    lines = []
    for path, extras in (("cli", ["wall"]), ("control_plane", ["first", "stored"])):
        runs = [trees["before"][path], trees["after"][path]]
        order = list(dict.fromkeys(what for t in runs for sample in t["samples"] for what, _ in sample))
        for what in order:
            values = [[v for sample in t["samples"] for w, v in sample if w == what] for t in runs]
            lines.append(f"| {what} | {cell(values[0])} | {cell(values[1])} |")
        lines += [f"| **{totals[k]}** | {cell(runs[0][k], True)} | {cell(runs[1][k], True)} |" for k in extras]
    return lines


def dp_baseline() -> list[str]:
    """docs/science.md: the trivial myopic baseline's levels, and predicting zero's, at several p."""
    rows = {r["p"]: r for r in load("dp_baseline.json")["rows"]}
    levels = "; ".join(
        f"p = {p:g}: {rows[p]['baseline_all']:.3f} / {rows[p]['baseline_past_window']:.3f}" for p in (1.0, 0.3, 0.1)
    )
    zero = f"{rows[0.3]['predict_zero_all']:.3f} at p = 0.3 and {rows[0.1]['predict_zero_all']:.3f} at p = 0.1"
    return [levels, zero]


def interval_coverage() -> list[str]:
    """docs/science.md: coverage of 95% held-out intervals on AR(1) series, by method."""
    doc = load("interval_coverage.json")
    lines = []
    for r in doc["rows"]:
        c = r["coverage"]
        cells = f"{c['fixed16']:.3f} | **{c['chosen']:.3f}** | {c['stationary_bootstrap']:.3f}"
        lines.append(f"| {r['phi']} | {r['n']:,} | {cells} |")
    return lines


def cpu_ladder() -> list[str]:
    """docs/results.md: the cpu-ladder's tables, as bench/sweep_report.py prints them from the sweep's results."""
    import sweep_report  # bench/ is on sys.path: this file's own folder

    res = load("cpu_ladder.json")["results"]
    tables = (sweep_report.size_table, sweep_report.fit_lines, sweep_report.pair_table, sweep_report.band_table)
    return [line for table in tables for line in table(res)]


def demo() -> list[str]:
    """docs/results.md: the demo's two sweeps, from the JSON `make demo` wrote (`--json-out`, copied here)."""
    doc = load("demo.json")
    dp = doc["demo-synthetic"]["results"]["sizes"][0]
    frac = dp["fraction_of_baseline"]
    lo, hi = dp["gap_eval_ci95"]
    lines = [
        f"| vanilla | {dp['vanilla_loss_mean']:.3f} | {frac['vanilla']['past_window']:.3f} |",
        f"| myopic (`hidden`) | {dp['myopic_loss_mean']:.3f} | {frac['myopic']['past_window']:.3f} |",
        f"| gap | **{dp['gap_mean']:+.3f}** [{lo:+.3f}, {hi:+.3f}] over the 1,024 held-out sequences | |",
    ]
    t = doc["demo"]["results"]["sizes"][0]
    (lo, hi), (slo, shi) = t["gap_eval_ci95"], t["share_lost_eval_ci95"]
    lines.append(
        f"| {t['size']} ({t['n_params_nonembedding']:,} non-embedding params) | {t['vanilla_loss_mean']:.4f} | "
        f"{t['myopic_loss_mean']:.4f} | {t['bigram_loss_mean']:.4f} | **{t['gap_mean']:+.4f}** [{lo:+.4f}, {hi:+.4f}] "
        f"| **{t['share_lost']:.3f}** [{slo:.3f}, {shi:.3f}] |"
    )
    return lines


DP_ARMS = {"vanilla": "vanilla", "myopic-hidden": "myopic, `hidden` (the paper's)", "myopic-kv": "myopic, `kv`"}


def _mean_ci(values: list[float]) -> str:
    """mean [95% t-interval over seeds], as bench/synthetic_cpu.py prints it."""
    import synthetic_cpu

    return synthetic_cpu.interval(values)


def synthetic_cpu() -> list[str]:
    """docs/results.md: the synthetic-cpu preset's table (bench/synthetic_cpu.py), the predict-zero level, and the
    backbone ablation per seed."""
    doc = load("synthetic_cpu.json")
    zero, lags = doc["predict_zero"], 10
    level = sum(zero[lags:]) / len(zero[lags:])
    lines = [f"Predicting zero scores {sum(zero) / len(zero):.3f} over all positions and {level:.3f} on positions ≥ 10"]
    for arm, runs in doc["runs"].items():
        past = [sum(r["eval"]["per_position"][lags:]) / len(r["eval"]["per_position"][lags:]) for r in runs]
        walls = [r["wall_s"] for r in runs]
        lines.append(
            f"| {DP_ARMS[arm]} | {_mean_ci([r['eval']['huber_over_p'] for r in runs])} | {_mean_ci(past)} | "
            f"{_mean_ci([p / level for p in past])} | {min(walls):.0f}–{max(walls):.0f} s |"
        )
    for name, file in (("parallel residual (GPT-NeoX; the preset)", "synthetic_cpu.json"),
                       ("sequential blocks (GPT-2's)", "synthetic_cpu_sequential.json")):  # fmt: skip
        runs = load(file)["runs"]
        cells = []
        for arm in ("vanilla", "myopic-hidden"):
            per_seed = []
            for r in runs[arm]:
                past = sum(r["eval"]["per_position"][lags:]) / len(r["eval"]["per_position"][lags:])
                per_seed.append(f"{r['eval']['huber_over_p']:.3f} ({past / level:.3f})")
            cells.append(", ".join(per_seed))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return lines


def local_bonus() -> list[str]:
    """docs/results.md: the local myopia bonus on the cpu-ladder (bench/local_bonus.py)."""
    import sweep_report

    return sweep_report.bonus_table({"sizes": load("local_bonus.json")["sizes"]})


def local_control() -> list[str]:
    """docs/results.md: the local arm against vanilla trained for its whole budget (bench/local_control.py)."""
    import local_control

    return local_control.table(load("local_control.json")["sizes"])


def text_calibration() -> list[str]:
    """docs/results.md: the text ladder's calibration rows (bench/text_calibration.py --json)."""
    lines = []
    for r in load("text_calibration.json")["rows"]:
        loss, (lo, hi) = r["loss"], r["gap_eval_ci95"]
        benefit = loss["bigram"] - loss["vanilla"]
        share = f"{r['share_lost']:.3f}" if benefit > 0 else "— (no benefit yet)"
        lines.append(
            f"| {r['size']} | {r['steps']} | {loss['vanilla']:.4f} | {loss['myopic']:.4f} | {loss['bigram']:.4f} | "
            f"{r['gap']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {benefit:+.4f} | {share} | {r['s_per_step']['vanilla']:.2f} |"
        )
    return lines


def dp_calibration() -> list[str]:
    """docs/results.md: the search for a CPU-sized D_p configuration (bench/dp_calibration.py --grid --json)."""
    return [
        f"| {r['d']} | {r['b']:g} | {r['lags']} | {r['arm']} | {r['steps']:,} | {r['huber_over_p']:.3f} | "
        f"{r['past_window_over_predict_zero']:.3f} | {r['layer1_lag0_r2']:.3f} ({r['layer1_lag0_r2_control']:.3f}) | "
        f"{r['seconds']} |"
        for r in load("dp_calibration.json")["rows"]
    ]


def multiplication() -> list[str]:
    """docs/results.md: multiplication with and without filler positions (bench/filler_report.py)."""
    import filler_report

    return filler_report.tables(load("multiplication.json"))


def context() -> list[str]:
    """docs/results.md: the context-cpu sweep's tables (bench/sweep_report.py)."""
    import sweep_report

    res = load("context.json")["results"]
    lines = [line for table in (sweep_report.size_table, sweep_report.band_table) for line in table(res)]
    with_bigram = sorted((p for p in res["pairs"] if p["bigram_loss"] is not None), key=lambda p: p["seed"])
    lines.append("; ".join(f"seed {p['seed']}: {p['bigram_loss'] - p['vanilla_loss']:+.3f}" for p in with_bigram))
    return lines


def attack() -> list[str]:
    """docs/reliability.md: the attack of issue 22 against `myopia serve` (bench/attack.py --json)."""
    doc = load("attack.json")
    ph = doc["phases"]

    def codes(counts: dict) -> str:
        return ", ".join(f"{n:,} × {code}" for code, n in counts.items())

    body, small, keep = ph["amplifying bodies"], ph["small defects"], ph["durability"]
    held = {
        "concurrency": "; ".join(f"{k}: {v}" for k, v in ph["concurrency"]["broken"].items()),
        "amplifying bodies": f"largest answer {body['largest_answer_bytes']} bytes; /healthz median "
        f"{body['healthz_ms']['median']:.0f} ms, max {body['healthz_ms']['max']:.0f} ms over "
        f"{body['healthz_ms']['n']} probes",
        "small defects": f"{small['schedules_accepted_of_101']} of 101 schedules accepted; 20 concurrent deletes of "
        f"one schedule: {codes(small['concurrent_deletes_of_one_schedule'])}",
        "concurrent plots": f"73 PNGs, 8 at a time: {codes(ph['concurrent plots']['concurrent_pngs'])}",
        "durability": f"{keep['acknowledged']} acknowledged; after the log was deleted: "
        f"{codes(keep['after_the_log_was_deleted'])}; lost after SIGKILL and restart: {keep['lost']}",
    }
    lines = [f"| {name} | {sum(f['by_status'].values()):,} | {codes(f['by_status'])} | {held[name]} |"
             for name, f in ph.items()]  # fmt: skip
    lines.append(f"**{doc['requests']:,} requests, {doc['5xx']} × 5xx, {doc['lost']} acknowledged writes lost**")
    return lines


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def demo_time() -> list[str]:
    """docs/results.md: `make demo`'s wall-clock time (bench/wallclock.py)."""
    return [f"**{_duration(load('wallclock.json')['demo']['seconds'])} to the printed tables**"]


def readme() -> list[str]:
    """README.md: the set-up commands' wall-clock times (bench/wallclock.py) and the ladder's gap range."""
    w = load("wallclock.json")
    gaps = [s["gap_mean"] for s in load("cpu_ladder.json")["results"]["sizes"]]
    return [
        f"{_duration(w['demo']['seconds'])} on 2 cores with the install and the data directory in place "
        f"({w['demo']['date'][:10]})",
        f"`make install` from a fresh clone took {_duration(w['install']['seconds'])} and left a "
        f"{w['install']['du_bytes'] / 1e9:.1f} GB `.venv` ({w['install']['date'][:10]}",
        f"{_duration(w['ci']['seconds'])}; pytest said: {w['ci']['pytest']}",
        f"a mean myopia gap of {min(gaps):+.3f} to {max(gaps):+.3f} nats",
    ]


RENDERERS = {
    "README.md": readme,
    "docs/performance.md": lambda: bench_cpu() + run_overhead(),
    "docs/reliability.md": attack,
    "docs/science.md": lambda: dp_baseline() + interval_coverage(),
    "docs/results.md": lambda: (
        synthetic_cpu()
        + dp_calibration()
        + cpu_ladder()
        + demo()
        + text_calibration()
        + local_bonus()
        + local_control()
        + demo_time()
        + multiplication()
        + context()
    ),
}


if __name__ == "__main__":
    for doc, render in RENDERERS.items():
        print(f"## {doc}")
        print("\n".join(render()), end="\n\n")

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
    layer = [next(r["ms"] for r in run["layer"] if r["T"] == 2048 and r["mode"] == "vanilla") for run in runs]
    paper = [run["step"]["paper-style"]["median_ms"] / run["step"]["vanilla"]["median_ms"] for run in runs]
    step = [run["step"]["vanilla"]["median_ms"] / 1000 for run in runs]
    lines += [
        f"e.g. {min(layer):.0f}–{max(layer):.0f} ms at T = 2048",
        f"paper-style {min(paper):.2f}–{max(paper):.2f}; vanilla {min(step):.2f}–{max(step):.2f} s per step",
        f"grows quadratically ({runs[0]['layer'][-1]['memory_vs_vanilla']:.0f}× at T = 2048)",
    ]
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


def drift_example() -> list[str]:
    """docs/science.md: the drift tests on the cpu-ladder's 0.1m gaps (docs/figures/cpu_ladder.json) against a rerun
    22% larger for every seed: paired, Welch's, and Holm's beside two unchanged sizes."""
    from scipy import stats

    from services.gap_stats import drift, drift_across_sizes

    pairs = load("cpu_ladder.json")["results"]["pairs"]
    ladder = {p["seed"]: p["gap"] for p in pairs if p["size"] == "0.1m"}
    rerun = {seed: 1.22 * gap for seed, gap in ladder.items()}
    paired = drift(ladder, rerun)
    welch = stats.ttest_ind(list(rerun.values()), list(ladder.values()), equal_var=False).pvalue
    holm = drift_across_sizes([paired, drift(ladder, dict(ladder)), drift(ladder, dict(ladder))])[0]
    return [
        f"a rerun whose gaps all grow by 22% (the ladder's 0.1m gaps) has paired p = {paired.p_value:.3f}, where "
        f"Welch's test gives p = {welch:.2f}. Alone it is {'flagged' if paired.drift else 'not flagged'}; beside "
        f"two unchanged sizes Holm makes it {holm.p_holm:.3f}, {'flagged' if holm.drift else 'not flagged'}"
    ]


def reconciler_tick() -> list[str]:
    """docs/reliability.md: the reconciler's idle tick against the queue (bench/reconciler_tick.py --json)."""
    rows = load("reconciler_tick.json")["rows"]

    def ms(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    lines = [
        f"| {r['queued']:,} | {r['finished']:,} | {ms(r['tick_cpu_ms'])} | {ms(r['tick_wall_ms'])} |" for r in rows
    ]
    worst = max(max(r["tick_cpu_ms"]) for r in rows)
    return [*lines, f"At one tick a second that is at most {worst / 10:.2f}% of a core"]  # ms per 1,000 ms


def memory_calibration() -> list[str]:
    """docs/operations.md: the activation model's coefficients and its fit (bench/memory_calibration.py --json)."""
    doc = load("memory_calibration.json")
    c = {p: {k: round(v, 1) for k, v in terms.items()} for p, terms in doc["coefficients"].items()}
    half = "bf16 and fp16" if c["bf16"] == c["fp16"] else "bf16"
    logits = {terms["logit"] for terms in c.values()}
    logit = (
        f"{logits.pop():.1f} bytes per output logit in every precision"
        if len(logits) == 1
        else "per logit: " + (", ".join(f"{terms['logit']:.1f} in {p}" for p, terms in c.items()))
    )
    ratios = [r["peak"] / r["model"] for r in doc["rows"]]
    return [
        f"per layer {c['bf16']['layer']:.1f} bytes per token per hidden unit in {half} ({c['fp32']['layer']:.1f} in "
        f"fp32); {logit}",
        f"{c['bf16']['token']:.1f} (fp32: {c['fp32']['token']:.1f}) bytes per token per hidden unit outside the layers",
        f"Measured over predicted: {min(ratios):.3f} to {max(ratios):.3f} on every shape",
    ]


UNITS = {"wiki": "lead sections", "sotu": "addresses", "brown": "texts", "moby-dick": "chapters",
         "austen": "chapters of six novels"}  # fmt: skip


def corpora() -> tuple[list[str], list[str]]:
    """docs/data.md and docs/results.md: what the corpora and the CPU presets' mix hold (bench/corpus_counts.py)."""
    rows = load("corpora.json")["rows"]
    single = [r for r in rows if "+" not in r["corpus"]]
    ladder = next(r for r in rows if "+" in r["corpus"] and r["sequences"] == "packed")
    starts = next(r for r in rows if "+" in r["corpus"] and r["sequences"] == "document_start")
    data = [
        f"| {r['documents']:,} {UNITS[r['corpus']]} | {r['train_tokens']:,} / {r['heldout_tokens']:,} |" for r in single
    ]
    data += [
        f"{ladder['train_tokens'] / 1e6:.1f}M training and {ladder['heldout_tokens'] / 1e6:.1f}M held-out tokens",
        f"the `cpu-ladder`'s {ladder['vocab_size']:,} keep {ladder['vocab_coverage']:.0%} of the mix's training tokens",
    ]
    request = load("context.json")["request"]["run"]["train"]
    sequences = request["steps"] * request["global_batch"]
    results = [
        f"`{ladder['corpus']}`: {ladder['train_tokens'] / 1e6:.1f}M training tokens",
        f"the **{ladder['vocab_size'] - 1:,} most frequent training tokens** kept "
        f"({ladder['vocab_coverage']:.0%} of the tokens",
        f"spread evenly over the whole held-out stream of {ladder['heldout_sequences']:,}",
        f"The mix has {starts['train_sequences']:,} training document starts, so {sequences:,} sequences are "
        f"{sequences / starts['train_sequences']:.1f} epochs",
        f"Held out: all {starts['heldout_sequences']:,} held-out document starts",
    ]
    return data, results


def probe_controls() -> list[str]:
    """docs/science.md: the untrained model's layer-1 lag-0 probe R², at the preset's b and in the calibration."""
    import statistics

    runs = load("synthetic_cpu.json")["runs"]["vanilla"]
    preset = statistics.mean(next(p["r2_control"] for p in r["probes"] if p["layer"] == 1 and p["lag"] == 0)
                             for r in runs)  # fmt: skip
    grid = next(r for r in load("dp_calibration.json")["rows"] if r["d"] == 32 and r["b"] == 10)
    return [f"R² {preset:.3f} at b = 3, d 64", f"{grid['layer1_lag0_r2_control']:.3f} at b = 10, d 32"]


def interval_coverage() -> list[str]:
    """docs/science.md: coverage of 95% held-out intervals on AR(1) series, by method, and the replicates' own
    margin (1.96 · sqrt(0.95 · 0.05 / replicates))."""
    import re

    doc = load("interval_coverage.json")
    replicates = int(re.search(r"--replicates (\d+)", doc["command"]).group(1))
    lines = [f"{replicates:,} replicates each, so ±{1.96 * (0.95 * 0.05 / replicates) ** 0.5:.3f} at 95%"]
    cover = {k: [r["coverage"][k] for r in doc["rows"]] for k in ("fixed16", "chosen", "stationary_bootstrap")}
    lines += [
        f"falling to {min(cover['fixed16']):.0%} as the correlation lengthens",
        "(percentile interval) at {:.0f}–{:.0f}%".format(*(100 * f(cover["stationary_bootstrap"]) for f in (min, max))),
        "blocks cover {:.1f}–{:.1f}%".format(*(100 * f(cover["chosen"]) for f in (min, max))),
    ]
    for r in doc["rows"]:
        c = r["coverage"]
        cells = f"{c['fixed16']:.3f} | **{c['chosen']:.3f}** | {c['stationary_bootstrap']:.3f}"
        lines.append(f"| {r['phi']} | {r['n']:,} | {cells} |")
    return lines


def cpu_ladder() -> list[str]:
    """docs/results.md: the cpu-ladder's tables, as bench/sweep_report.py prints them from the sweep's results."""
    import sweep_report  # bench/ is on sys.path: this file's own folder

    res = load("cpu_ladder.json")["results"]
    tables = (sweep_report.size_table, sweep_report.fit_lines, sweep_report.pair_table, sweep_report.band_table,
              sweep_report.band_tests)  # fmt: skip
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
    gaps = doc["demo-synthetic"]["results"]["pairs"][0]["gap_per_position"]
    negative = next(i for i, g in enumerate(gaps) if g >= 0)  # the first positions, where vanilla misses the 0
    lines.append(f"The gap per position is negative at positions 0–{negative - 1}")
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


def probes() -> list[str]:
    """docs/results.md: the synthetic-cpu preset's probes (held-out R² of ridge probes, mean over lags 1-10, then
    over seeds; the control is the untrained model of the same seed), and the lag-0 probe at layer 1."""
    import statistics

    runs = load("synthetic_cpu.json")["runs"]

    def per_seed(r: dict, layer: int, key: str) -> float:
        return statistics.mean(p[key] for p in r["probes"] if p["layer"] == layer and 1 <= p["lag"] <= 10)

    lines = []
    for arm, rs in runs.items():
        cells = []
        for layer in (1, 2):
            r2, control = (statistics.mean(per_seed(r, layer, k) for r in rs) for k in ("r2", "r2_control"))
            cells += [f"{r2:.3f} ({control:.3f})", _mean_ci([per_seed(r, layer, "selectivity") for r in rs])]
        label = DP_ARMS[arm].removesuffix(" (the paper's)")
        lines.append(f"| {label} | {' | '.join(cells)} |")

    def lag0(arm: str, key: str = "r2") -> list[float]:
        return [next(p[key] for p in r["probes"] if p["layer"] == 1 and p["lag"] == 0) for r in runs[arm]]

    hidden = lag0("myopic-hidden")
    lines += [
        f"the untrained model's layer-1 probe is already R² {_mean_ci(lag0('vanilla', 'r2_control'))}; vanilla "
        f"keeps it ({statistics.mean(lag0('vanilla')):.3f}), and in the `hidden` arm it falls to "
        f"{_mean_ci(hidden)}",
        f"the probe fell only to {hidden[0]:.3f}, {hidden[1]:.3f} and {hidden[2]:.3f}",
    ]
    return lines


def local_bonus() -> list[str]:
    """docs/results.md: the local myopia bonus on the cpu-ladder (bench/local_bonus.py): the table, the arms' wall
    times, the smallest bonus, and the bonus's weighted fit against scale (as the service fits the gap)."""
    import numpy as np
    import sweep_report

    from services.gap_stats import SizeGap, fit_gap

    doc = load("local_bonus.json")
    lines = sweep_report.bonus_table({"sizes": doc["sizes"]})
    walls = {s["size"]: [r["wall_s"] for r in doc["runs"] if r["size"] == s["size"]] for s in doc["sizes"]}
    lines.append(
        "their recorded wall times ({}) are evaluation only; the 0.4m arms took {} each, the 14m arms {}".format(
            *(f"{min(w):.0f}–{max(w):.0f} s" for w in walls.values())
        )
    )
    bonuses = {s["size"]: [r["vanilla_loss"] - r["local_loss"] for r in doc["runs"] if r["size"] == s["size"]]
               for s in doc["sizes"]}  # fmt: skip
    every = [b for per_size in bonuses.values() for b in per_size]
    lines.append(f"the smallest of the {len(every)} bonuses is {min(every):+.3f}")
    points = []
    for s in doc["sizes"]:
        per_seed = bonuses[s["size"]]
        se = float(np.std(per_seed, ddof=1) / np.sqrt(len(per_seed)))
        points.append(
            SizeGap(size=s["size"], n_params_nonembedding=s["n_params_nonembedding"], n_pairs=len(per_seed),
                    gaps=per_seed, gap_mean=float(np.mean(per_seed)), gap_se=se, gap_ci95=None,
                    vanilla_loss_mean=s["vanilla_loss_mean"], myopic_loss_mean=s["local_loss_mean"])
        )  # fmt: skip
    fit = fit_gap(points)
    lo, hi = fit.slope_ci95
    lines.append(f"a weighted fit gives {fit.slope:+.3f} per decade, 95% CI [{lo:+.3f}, {hi:+.3f}]")
    return lines


def local_control() -> list[str]:
    """docs/results.md: the local arm against vanilla trained for its whole budget (bench/local_control.py)."""
    import local_control

    doc = load("local_control.json")
    walls = [r["wall_s"] for r in doc["runs"]]
    return [*local_control.table(doc["sizes"]), f"two runs at a time, {min(walls):.0f}–{max(walls):.0f} s each"]


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


def ladder_prose() -> list[str]:
    """docs/results.md: what the cpu-ladder's prose quotes from its results (cpu_ladder.json) and from the text
    calibration (text_calibration.json, the 300-step rows)."""
    res = load("cpu_ladder.json")["results"]
    means = [s["gap_mean"] for s in res["sizes"]]
    vanilla = [p["vanilla_loss"] for p in res["pairs"] if p["size"] == "0.4m"]
    gaps = [p["gap"] for p in res["pairs"] if p["size"] == "0.4m"]
    rows = {r["size"]: r for r in load("text_calibration.json")["rows"] if r["steps"] == 300}
    benefit = {size: r["loss"]["bigram"] - r["loss"]["vanilla"] for size, r in rows.items()}
    return [
        f"The mean gap is positive at all three sizes ({min(means):+.3f} to {max(means):+.3f} nats)",
        f"vanilla losses differ by up to {max(vanilla) - min(vanilla):.3f} between seeds at 0.4m",
        f"The bigram reference (below) loses {benefit['0.1m']:.3f} nats at 0.1m",
        f"losing the whole past costs {benefit['0.1m']:.3f} nats at 0.1m and {benefit['0.4m']:.3f} at 0.4m, of which "
        f"myopia loses {rows['0.1m']['share_lost']:.1%} and {rows['0.4m']['share_lost']:.1%}",
        f"the seed-to-seed spread of the ladder's gap ({min(gaps):+.4f} to {max(gaps):+.4f}) alone would move that "
        f"share between about {min(gaps) / benefit['0.4m']:.0%} and {max(gaps) / benefit['0.4m']:.0%}",
    ]


def sweep_runs() -> list[str]:
    """docs/results.md: how long the cpu-ladder and context-cpu sweeps ran, how far context-cpu's vanilla trained,
    and what its bigram reference costs per seed (bench/sweep_report.py --json: the runs' histories and MLflow)."""
    import statistics

    ladder, ctx = load("cpu_ladder.json"), load("context.json")
    total = ladder["created_to_last_ended_s"]
    done = [r for r in ctx["runs"] if r["status"] == "succeeded"]
    minutes = [r["running_s"] / 60 for r in done]
    trained = [r["train_loss_last_tenth"] for r in done if r["arm"] == "vanilla"]
    res = ctx["results"]
    size = res["sizes"][0]
    benefit = {p["seed"]: p["bigram_loss"] - p["vanilla_loss"] for p in res["pairs"] if p["bigram_loss"] is not None}
    mean_benefit = statistics.mean(benefit.values())
    return [
        f"{len(ladder['runs'])} runs, **{total / 60:.1f} minutes from submission to the last result stored** "
        f"({total:,.0f} s",
        f"{min(minutes):.0f}–{max(minutes):.0f} minutes a run",
        f"the last tenth of training at {min(trained):.2f}–{max(trained):.2f} nats for vanilla against "
        f"{size['vanilla_loss_mean']:.2f} held out",
        "Losing the whole past (bigram − vanilla) costs "
        + "; ".join(f"seed {seed}: {b:+.3f}" for seed, b in sorted(benefit.items()))
        + " nats: these models use their context",
        _share(size, mean_benefit),
    ]


def _share(size: dict, mean_benefit: float) -> str:
    """The share of the context benefit myopia loses: the service's, with Fieller's intervals, where every seed has
    its bigram arm; else the ratio of the means, without an interval."""
    if size.get("share_lost") is None:
        return f"myopia loses about {size['gap_mean'] / mean_benefit:.0%} of that benefit"
    (lo, hi), (elo, ehi) = size["share_lost_ci95"], size["share_lost_eval_ci95"]
    return (
        f"myopia loses {size['share_lost']:.1%} of that benefit (95% CI over seeds [{lo:.1%}, {hi:.1%}], over "
        f"held-out sequences [{elo:.1%}, {ehi:.1%}])"
    )


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
    tables = (sweep_report.size_table, sweep_report.band_table, sweep_report.band_tests)
    return [line for table in tables for line in table(res)]  # (its bigram costs per seed: sweep_runs)


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
    sizes = load("cpu_ladder.json")["results"]["sizes"]
    gaps = [s["gap_mean"] for s in sizes]
    excluding = sum(lo > 0 or hi < 0 for lo, hi in (s["gap_ci95"] for s in sizes))
    return [
        f"over seeds excluding zero at {excluding} sizes of {len(sizes)}",
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
    "docs/operations.md": memory_calibration,
    "docs/data.md": lambda: corpora()[0],
    "docs/reliability.md": lambda: attack() + reconciler_tick(),
    "docs/science.md": lambda: dp_baseline() + interval_coverage() + drift_example() + probe_controls(),
    "docs/results.md": lambda: (
        synthetic_cpu()
        + probes()
        + dp_calibration()
        + cpu_ladder()
        + ladder_prose()
        + demo()
        + text_calibration()
        + local_bonus()
        + local_control()
        + demo_time()
        + multiplication()
        + context()
        + corpora()[1]
        + sweep_runs()
    ),
}


if __name__ == "__main__":
    for doc, render in RENDERERS.items():
        print(f"## {doc}")
        print("\n".join(render()), end="\n\n")

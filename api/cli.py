"""The `myopia` command line. The control-plane commands (serve, sweep, run, schedule) arrive with the control plane."""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """myopia: scaling studies of myopic training (the myopia gap against model scale)."""


@main.command()
def zoo() -> None:
    """The Pythia sizes with their parameter counts."""
    from trainers.models import PYTHIA_SIZES

    table = Table("size", "layers", "hidden", "heads", "params", "non-embedding", "lr")
    for s in PYTHIA_SIZES.values():
        table.add_row(s.name, str(s.layers), str(s.hidden), str(s.heads), f"{s.n_params():,}",
                      f"{s.n_params_nonembedding():,}", f"{s.lr:g}")  # fmt: skip
    console.print(table)


@main.command()
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True, help="optimizer steps per arm")
@click.option("--p", "p", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True)
@click.option("--b", "b", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="sine frequency (the paper's 10; 3 is learnable fast on a CPU)")  # fmt: skip
@click.option("--variant", type=click.Choice(["hidden", "kv", "both"]), default="both", show_default=True,
              help="myopic variant(s), each trained against the same vanilla arm")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json-out", type=click.Path(dir_okay=False), help="also write the results here as JSON")
def demo(steps: int, p: float, b: float, variant: str, seed: int, json_out: str | None) -> None:
    """Train matched vanilla/myopic arms on the synthetic task D_p and print the myopia gap."""
    from trainers.synthetic import SyntheticTask
    from trainers.synthetic_pair import ArmConfig, run_pair

    variants = ("hidden", "kv") if variant == "both" else (variant,)
    config = ArmConfig(task=SyntheticTask(p=p, b=b), steps=steps, seed=seed)
    console.print(
        f"D_p (p={p}, b={b}, {config.task.lags} lags, T={config.task.seq_len}); GPT-NeoX 2 layers, d 128, 2 heads, "
        f"ReLU; batch {config.batch}, lr {config.lr}, {steps} steps per arm; same init and batches in every arm"
    )
    loss = TextColumn("loss {task.fields[loss]:.3f}")
    columns = (TextColumn("{task.description:>13}"), BarColumn(), MofNCompleteColumn(), loss, TimeElapsedColumn())
    names = ["vanilla", *(f"myopic-{v}" for v in variants)]
    with Progress(*columns, console=console) as progress:
        bars = {name: progress.add_task(name, total=steps, loss=float("nan")) for name in names}
        results = run_pair(
            config, lambda arm, step, loss: progress.update(bars[arm], completed=step, loss=loss), variants
        )

    lags = config.task.lags
    table = Table("arm", "held-out Huber/p", f"positions ≥ {lags}", "gap vs vanilla", "train time (s)",
                  title="D_p, held-out (predicting zero scores about 1.26)")  # fmt: skip
    for name in names:
        r, late = results[name], results[name]["per_position"][lags:]
        gap = "" if name == "vanilla" else f"{results['gap'][name]:+.3f}"
        table.add_row(name, f"{r['huber_over_p']:.3f}", f"{sum(late) / len(late):.3f}", gap, f"{r['seconds']:.0f}")
    console.print(table)
    console.print(
        "myopia gap = myopic − vanilla held-out Huber/p. The kv variant cuts every path from future losses into "
        "past positions; the hidden variant (the paper's) keeps the K/V weights' gradient, through which a model "
        "can learn to read features that past positions computed for themselves."
    )
    if json_out:
        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        with open(json_out, "w") as f:
            json.dump({"config": repr(config), **results}, f, indent=1)
        console.print(f"results written to {json_out}")


if __name__ == "__main__":
    sys.exit(main())

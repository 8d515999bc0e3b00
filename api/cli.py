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
@click.option("--variant", type=click.Choice(["hidden", "kv"]), default="hidden", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json-out", type=click.Path(dir_okay=False), help="also write the results here as JSON")
def demo(steps: int, p: float, b: float, variant: str, seed: int, json_out: str | None) -> None:
    """Train a matched vanilla/myopic pair on the synthetic task D_p and print the myopia gap."""
    from trainers.synthetic import SyntheticTask
    from trainers.synthetic_pair import ArmConfig, run_pair

    config = ArmConfig(task=SyntheticTask(p=p, b=b), steps=steps, variant=variant, seed=seed)  # type: ignore[arg-type]
    console.print(
        f"D_p (p={p}, b={b}, {config.task.lags} lags, T={config.task.seq_len}); GPT-NeoX 2 layers, d 128, 2 heads, "
        f"ReLU; batch {config.batch}, lr {config.lr}, {steps} steps per arm; myopic variant {variant}"
    )
    loss = TextColumn("loss {task.fields[loss]:.3f}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), loss, TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bars = {arm: progress.add_task(arm, total=steps, loss=float("nan")) for arm in ("vanilla", "myopic")}
        results = run_pair(config, lambda arm, step, loss: progress.update(bars[arm], completed=step, loss=loss))

    table = Table("arm", "held-out Huber/p", "Huber/p, positions ≥ lags", "train time (s)", title="matched pair on D_p")
    lags = config.task.lags
    for arm in ("vanilla", "myopic"):
        r = results[arm]
        late = r["per_position"][lags:]
        table.add_row(arm, f"{r['huber_over_p']:.3f}", f"{sum(late) / len(late):.3f}", f"{r['seconds']:.0f}")
    console.print(table)
    console.print(f"myopia gap (myopic − vanilla held-out Huber/p): [bold]{results['gap']:+.3f}[/bold]")
    if json_out:
        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        with open(json_out, "w") as f:
            json.dump({"config": repr(config), **results}, f, indent=1)
        console.print(f"results written to {json_out}")


if __name__ == "__main__":
    sys.exit(main())

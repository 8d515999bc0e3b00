"""MLflow tracking of one run (rank 0 only): params, per-step metrics, evaluation, artifacts, system metrics.

A restarted run continues the MLflow run it started (found by its `myopia.run` tag) instead of opening another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainers.spec import RunSpec, flat_params


def experiment_id(client: Any, uri: str, name: str) -> str:
    """The experiment's id, created if missing. A SQLite store keeps its artifacts beside the database file: MLflow's
    default would be `./mlruns` under whatever directory the creating process runs in."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - created meanwhile by another run of the sweep
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class Tracker:
    def __init__(self, spec: RunSpec, enabled: bool) -> None:
        self.spec = spec
        self.enabled = enabled and spec.tracking.mlflow_uri is not None
        self.run_id: str | None = None

    def start(self) -> None:
        if not self.enabled:
            return
        import mlflow

        t, spec = self.spec.tracking, self.spec
        mlflow.set_tracking_uri(t.mlflow_uri)
        experiment = mlflow.set_experiment(
            experiment_id=experiment_id(mlflow.MlflowClient(), t.mlflow_uri, t.experiment)
        )
        name = spec.name or spec.config_hash()
        found = mlflow.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`myopia.run` = '{name}'", output_format="list"
        )
        tags = {
            "myopia.run": name,
            "myopia.config_hash": spec.config_hash(),
            "myopia.pair_hash": spec.pair_hash(),
            "myopia.label": spec.label,
            "arm": spec.attention.mode,
            "size": spec.model.size,
            "seed": str(spec.seed),
            "data": spec.data.kind,
            **t.tags,
        }
        if t.parent_run_id:
            tags["mlflow.parentRunId"] = t.parent_run_id
        if found:
            run = mlflow.start_run(run_id=found[0].info.run_id, log_system_metrics=True)
        else:
            run = mlflow.start_run(run_name=name, tags=tags, log_system_metrics=True)
            mlflow.log_params({**flat_params(spec), "config_hash": spec.config_hash(), "label": spec.label})
        mlflow.set_tags(tags)
        self.run_id = run.info.run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics(values, step=step)

    def evaluation(self, result: dict, step: int, probes: list[dict] | None = None) -> None:
        if not self.enabled:
            return
        import mlflow

        scalars = {f"eval/{k}": v for k, v in result.items() if isinstance(v, int | float)}
        mlflow.log_metrics(scalars, step=step)
        per_position = result.get("per_position")
        if per_position:
            mlflow.log_table(
                {"position": list(range(len(per_position))), "loss": per_position},
                artifact_file=f"eval/per_position_step{step}.json",
            )
        if probes:
            mlflow.log_table({k: [row[k] for row in probes] for k in probes[0]}, artifact_file="eval/probes.json")

    def artifact(self, obj: Any, name: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_dict(obj, name)

    def end(self, status: str) -> None:
        if self.enabled and self.run_id:
            import mlflow

            mlflow.end_run(status=status)

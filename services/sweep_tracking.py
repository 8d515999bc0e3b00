"""MLflow above the training runs: a run per sweep, and under it a run per pair, under which the pair's two arm
runs log themselves (`tracking.parent_run_id`). A finished pair's run carries the gap and the non-embedding
parameter count, so MLflow's own charts plot gap against scale; a finished sweep's run carries the results
document, the gap table and the plot.

`open_runs` runs before a sweep's first job is submitted (the reconciler); `report` is the control plane's
reporter component: it acts only where a pair or a sweep has reached a final state since it last reported.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from sqlalchemy import or_, select
from sqlalchemy.orm import sessionmaker

from services.results import gap_plot, sweep_results, tracking_of
from services.store import Pair, RunStatus, Sweep
from trainers.tracking import experiment_id

log = logging.getLogger(__name__)

FINAL = {RunStatus.SUCCEEDED: "FINISHED", RunStatus.FAILED: "FAILED", RunStatus.CANCELLED: "KILLED"}


def open_runs(sweep: Sweep) -> None:
    """Create the sweep's MLflow run and its pairs' runs where missing (idempotent: ids are kept in the store)."""
    tracking = tracking_of(sweep)
    if tracking is None:
        return
    client = MlflowClient(tracking["mlflow_uri"])
    if sweep.mlflow_run_id is None:
        sweep.mlflow_experiment_id = experiment_id(client, tracking["mlflow_uri"], tracking["experiment"])
        request = sweep.request
        run = client.create_run(
            sweep.mlflow_experiment_id,
            run_name=f"{sweep.name} ({sweep.id})",
            tags={"myopia.sweep": sweep.id, "myopia.kind": "sweep"},
        )
        sweep.mlflow_run_id = run.info.run_id  # stored even if what follows fails: the reporter ends it
        keys = ("sizes", "seeds", "arms", "preset", "run", "lr_scale", "lr_by_size")
        client.log_batch(run.info.run_id, params=[Param(k, str(request.get(k))[:6000]) for k in keys])
    for pair in sweep.pairs:
        if pair.mlflow_run_id is None:
            run = client.create_run(
                sweep.mlflow_experiment_id,
                run_name=f"{sweep.name}-{pair.size}-s{pair.seed}",
                tags={
                    "myopia.sweep": sweep.id,
                    "myopia.pair": pair.id,
                    "myopia.kind": "pair",
                    "size": pair.size,
                    "seed": str(pair.seed),
                    "mlflow.parentRunId": sweep.mlflow_run_id,
                },
            )
            pair.mlflow_run_id = run.info.run_id


def report(db: sessionmaker) -> None:
    """Log every newly finished pair's gap and every newly finished sweep's results to their MLflow runs, one sweep
    per transaction: a sweep whose reporting fails is retried next time without holding back (or re-logging) the
    others."""
    unreported = or_(Sweep.mlflow_reported.is_(None), Sweep.mlflow_reported != Sweep.status)
    with db() as s:
        ids = list(s.scalars(select(Sweep.id).where(Sweep.mlflow_run_id.is_not(None), unreported)))
    for sweep_id in ids:
        try:
            _report_one(db, sweep_id)
        except Exception:  # noqa: BLE001 - MLflow down or one sweep's data: logged, retried on the next pass
            log.exception("MLflow report of sweep %s", sweep_id)


def _report_one(db: sessionmaker, sweep_id: str) -> None:
    with db.begin() as s:
        sweep = s.get(Sweep, sweep_id)
        tracking = tracking_of(sweep)
        client = MlflowClient(tracking["mlflow_uri"])
        pending = [p for p in sweep.pairs if p.mlflow_run_id and _pair_state(p) not in (None, p.mlflow_reported)]
        finished = sweep.status in FINAL and sweep.mlflow_reported != sweep.status
        if not (pending or finished):
            return
        res = sweep_results(db, sweep.id)
        rows = {row["pair_id"]: row for row in res["pairs"]}
        for pair in pending:
            _report_pair(client, pair, rows.get(pair.id))
            pair.mlflow_reported = _pair_state(pair)
        if finished:
            _report_sweep(client, sweep, res, gap_plot(res))
            sweep.mlflow_reported = sweep.status


def _pair_state(pair: Pair) -> str | None:
    """The arms' statuses once all are final (None before): a retried arm changes it, and the pair reports again."""
    states = [r.status for r in pair.runs]
    return "/".join(states) if all(st in FINAL for st in states) else None


def _report_pair(client: MlflowClient, pair: Pair, row: dict[str, Any] | None) -> None:
    run_id = pair.mlflow_run_id
    if row is None:  # an arm failed or was cancelled: no gap
        client.set_terminated(run_id, "FAILED" if any(r.status == RunStatus.FAILED for r in pair.runs) else "KILLED")
        return
    n = row["n_params_nonembedding"]
    for key, value in {
        "gap": row["gap"],
        "vanilla_loss": row["vanilla_loss"],
        "myopic_loss": row["myopic_loss"],
        "n_params_nonembedding": n,
        "log10_n_params_nonembedding": math.log10(n),
        **_interval_metrics("gap_eval_ci95", row["gap_eval_ci95"]),  # over held-out sequences
        **({"bigram_loss": row["bigram_loss"]} if row["bigram_loss"] is not None else {}),
        **({"local_loss": row["local_loss"], "bonus": row["bonus"]} if row["local_loss"] is not None else {}),
        **_interval_metrics("bonus_eval_ci95", row["bonus_eval_ci95"]),
        **{
            f"fraction_of_baseline.{arm}.{where}": value
            for arm, fractions in (row.get("fraction_of_baseline") or {}).items()
            for where, value in fractions.items()
        },
    }.items():
        client.log_metric(run_id, key, value)
    if row["gap_per_position"]:
        client.log_table(
            run_id,
            {"position": list(range(len(row["gap_per_position"]))), "gap": row["gap_per_position"]},
            "gap_per_position.json",
        )
    client.set_terminated(run_id, "FINISHED")


def _report_sweep(client: MlflowClient, sweep: Sweep, res: dict[str, Any], png: bytes) -> None:
    run_id = sweep.mlflow_run_id
    for row in res["sizes"]:
        size = row["size"]
        metrics = {f"gap_mean.{size}": row["gap_mean"]}
        for key in ("gap", "share_lost", "bonus"):  # intervals over seeds and over held-out sequences
            for interval in (f"{key}_ci95", f"{key}_eval_ci95"):
                metrics.update(_interval_metrics(f"{interval}.{size}", row.get(interval)))
        for key in ("share_lost", "bonus"):
            if row.get(key) is not None:
                metrics[f"{key}.{size}"] = row[key]
        for arm, fractions in (row.get("fraction_of_baseline") or {}).items():  # D_p
            for where, value in fractions.items():
                metrics[f"fraction_of_baseline.{arm}.{where}.{size}"] = value
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
    for fit in ("fit", "fit_from_160m"):
        for key in ("slope", "intercept", "r_squared") if res.get(fit) else ():
            client.log_metric(run_id, f"{fit}.{key}", res[fit][key])
    client.log_dict(run_id, res, "results.json")
    if res["sizes"]:
        client.log_table(run_id, {k: [row[k] for row in res["sizes"]] for k in res["sizes"][0]}, "gap_table.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gap_vs_scale.png"
        path.write_bytes(png)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, FINAL[sweep.status])


def _interval_metrics(key: str, ci: Any) -> dict[str, float]:
    """An interval as two metrics, `<key>_low` and `<key>_high` (MLflow metrics are scalars)."""
    return {f"{key}_low": ci[0], f"{key}_high": ci[1]} if ci else {}

"""Deleting sweeps for good: the store's rows (services.sweeps.delete_sweep), then what they left outside it: their
MLflow runs and their runs' checkpoints. `MYOPIA_RETENTION_DAYS` deletes ended sweeps that old on its own."""

from __future__ import annotations

import logging
from datetime import timedelta

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyarrow import fs
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from services.store import TERMINAL, Run, Schedule, Sweep, now
from services.sweeps import Deleted, delete_sweep
from trainers.job_protocol import is_uri, progress_file, run_storage

log = logging.getLogger("myopia.retention")


def remove(db: sessionmaker, sweep_id: str, job_env: dict[str, str]) -> dict:
    """Delete the sweep (a Conflict while any run is open), then its MLflow runs and checkpoints; what was removed,
    and what could not be reached from here."""
    gone = delete_sweep(db, sweep_id)
    return {"sweep_id": sweep_id, **_mlflow(gone), **_checkpoints(gone, job_env)}


def _mlflow(gone: Deleted) -> dict:
    """MLflow runs are marked deleted (`mlflow gc` purges them): the sweep's, its pairs' and its runs' (found by
    their parent too, so a run whose job died before reporting its id goes as well)."""
    if not gone.mlflow_uri or not gone.mlflow_runs:
        return {"mlflow_runs_deleted": 0, "mlflow_runs_not_deleted": []}
    client = MlflowClient(gone.mlflow_uri)
    ids = set(gone.mlflow_runs)
    try:
        experiments = {client.get_run(i).info.experiment_id for i in gone.mlflow_runs[-1:]}
        for parent in list(ids):
            children = client.search_runs(list(experiments), f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)
            ids |= {r.info.run_id for r in children}
    except MlflowException as e:
        log.warning("MLflow runs of deleted sweep %s: searching children failed: %s", gone.sweep_id, e)
    deleted, left = 0, []
    for run_id in sorted(ids):
        try:
            client.delete_run(run_id)
            deleted += 1
        except MlflowException as e:  # already deleted, gone with its store, or MLflow down: named, not lost
            log.warning("MLflow run %s of deleted sweep %s: %s", run_id, gone.sweep_id, e)
            left.append(run_id)
    return {"mlflow_runs_deleted": deleted, "mlflow_runs_not_deleted": left}


def _checkpoints(gone: Deleted, job_env: dict[str, str]) -> dict:
    """Each run's Ray Train folder and progress file under its storage (a folder this machine sees, or an object
    store through pyarrow, as Ray Train wrote them). A cluster folder not mounted here is reported, not guessed."""
    removed, unreachable = 0, []
    for storage_path, name in gone.checkpoints:
        where = storage_path or job_env.get("MYOPIA_JOB_STORAGE") or f"{job_env['MYOPIA_DATA_DIR'].rstrip('/')}/runs"
        storage = run_storage(where)
        try:
            filesystem, root = fs.FileSystem.from_uri(storage) if is_uri(storage) else (fs.LocalFileSystem(), storage)
            if filesystem.get_file_info(root).type == fs.FileType.NotFound:
                unreachable.append(storage)
                continue
            if filesystem.get_file_info(f"{root}/{name}").type == fs.FileType.Directory:
                filesystem.delete_dir(f"{root}/{name}")
                removed += 1
            if not is_uri(storage):
                progress_file(storage, name).unlink(missing_ok=True)
        except (OSError, ValueError) as e:
            log.warning("checkpoints of %s under %s: %s", name, storage, e)
            unreachable.append(storage)
    return {"checkpoints_deleted": removed, "storage_not_reachable": sorted(set(unreachable))}


def prune(db: sessionmaker, retention_days: float, job_env: dict[str, str]) -> list[str]:
    """Delete every sweep that ended more than `retention_days` ago (its last change), except a live schedule's
    latest sweep: its next sweep's drift test reads it. Returns the deleted ids."""
    cutoff = now() - timedelta(days=retention_days)
    with db() as s:
        open_sweeps = select(Run.sweep_id).where(Run.status.not_in(TERMINAL) | Run.job_live)
        compared = select(Schedule.last_sweep_id).where(Schedule.enabled, Schedule.last_sweep_id.is_not(None))
        old = list(s.scalars(select(Sweep.id).where(Sweep.status.in_(TERMINAL), Sweep.updated_at < cutoff,
                                                    Sweep.id.not_in(open_sweeps), Sweep.id.not_in(compared))
                             .limit(100)))  # fmt: skip
    deleted = []
    for sweep_id in old:
        try:
            summary = remove(db, sweep_id, job_env)
        except Exception:  # noqa: BLE001 - one sweep's failure must not keep the others
            log.exception("retention: deleting sweep %s failed", sweep_id)
            continue
        log.info("retention: deleted %s", summary)
        deleted.append(sweep_id)
    return deleted

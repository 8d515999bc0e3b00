"""The reconciler: brings Ray jobs in line with the store, one tick at a time (one reconciler per control plane).

Each tick polls the jobs of active runs into the store, retries failed attempts (a new attempt resumes from the
run's last checkpoint: same run name, same storage), stops the jobs of cancelled runs, submits queued runs within
the concurrency limit, and derives each sweep's status. Job ids are `<run id>-a<attempt>`: after a restart, a queued
run whose job already exists is adopted, never submitted twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.job_submission import JobStatus
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cluster.jobs import ACTIVE as JOB_ACTIVE
from cluster.jobs import Jobs, submission_id
from services import sweep_tracking
from services.store import ACTIVE, TERMINAL, Run, RunStatus, Sweep
from trainers.job_protocol import progress_file, run_storage


class Reconciler:
    def __init__(
        self,
        db: sessionmaker,
        jobs: Jobs,
        work_dir: Path,
        *,
        max_concurrent: int = 2,
        max_attempts: int = 3,
        job_env: dict[str, str] | None = None,
    ) -> None:
        self.db, self.jobs, self.max_concurrent, self.max_attempts = db, jobs, max_concurrent, max_attempts
        self.work_dir = work_dir
        self.job_env = job_env or {}

    # ------------------------------------------------------------------------------------------------ ticking
    def tick(self) -> None:
        with self.db.begin() as s:
            active = list(s.scalars(select(Run).where(Run.status.in_(ACTIVE))))
            for run in active:
                self._poll(run)
            for run in s.scalars(select(Run).where(Run.status == RunStatus.CANCELLED, Run.submission_id.is_not(None))):
                self.jobs.stop(run.submission_id)
            busy = sum(r.status in ACTIVE for r in active)
            queued = s.scalars(select(Run).where(Run.status == RunStatus.QUEUED).order_by(Run.created_at, Run.id))
            for run in queued:
                if busy >= self.max_concurrent:
                    break
                self._submit(run)
                busy += 1
            self._sweep_statuses(s)

    # ------------------------------------------------------------------------------------------------ a run
    def _submit(self, run: Run) -> None:
        sid = submission_id(run.id, run.attempt)
        if self.jobs.status(sid) is None:  # else: submitted before a crash of the control plane; adopt it
            sweep_tracking.open_runs(run.sweep)  # the arm runs log under their pair's MLflow run
            if run.pair.mlflow_run_id:
                run.spec = {**run.spec, "tracking": {**run.spec["tracking"], "parent_run_id": run.pair.mlflow_run_id}}
            self._progress_file(run).unlink(missing_ok=True)  # a previous attempt's
            self.jobs.submit(sid, run.spec, self.job_env)
        run.progress = None
        run.submission_id = sid
        run.set_status(RunStatus.SUBMITTED, sid)

    def _poll(self, run: Run) -> None:
        status = self.jobs.status(run.submission_id)
        if status in JOB_ACTIVE:
            if status == JobStatus.RUNNING:
                run.set_status(RunStatus.RUNNING)
                self._progress(run)
            return
        if status == JobStatus.SUCCEEDED:
            try:
                run.result = self.jobs.result(run.submission_id)
            except json.JSONDecodeError as e:
                return self._failed(run, f"the job succeeded but its result line is not JSON: {e}")
            if run.result is None:
                return self._failed(run, "the job succeeded but printed no result line")
            run.error = None
            run.set_status(RunStatus.SUCCEEDED)
            return
        why = "its job is gone (cluster restarted?)" if status is None else f"job {status.value}"
        self._failed(run, f"{why}: {self.jobs.logs(run.submission_id)[-2000:]}" if status else why)

    def _progress_file(self, run: Run) -> Path:
        return progress_file(run_storage(run.spec.get("storage_path"), self.work_dir), run.id)  # the jobs' data dir

    def _progress(self, run: Run) -> None:
        """The job's rank 0 writes {step, steps, loss} beside its checkpoints (readable where storage is shared)."""
        try:
            state = json.loads(self._progress_file(run).read_text())
        except (OSError, json.JSONDecodeError):
            return
        if state != run.progress:
            run.progress = state

    def _failed(self, run: Run, error: str) -> None:
        run.error = error
        if run.attempt + 1 < self.max_attempts:
            run.attempt += 1
            run.set_status(RunStatus.QUEUED, f"retry: {error[:200]}")  # resumes from the run's latest checkpoint
        else:
            run.set_status(RunStatus.FAILED, error[:500])

    @staticmethod
    def _sweep_statuses(s: Session) -> None:
        for sweep in s.scalars(select(Sweep).where(Sweep.status.in_((RunStatus.QUEUED, RunStatus.RUNNING)))):
            states = {r.status for r in sweep.runs}
            if states <= {RunStatus.SUCCEEDED}:
                sweep.status = RunStatus.SUCCEEDED
            elif states <= TERMINAL:
                sweep.status = RunStatus.FAILED if RunStatus.FAILED in states else RunStatus.CANCELLED
            elif states & ACTIVE or RunStatus.SUCCEEDED in states:
                sweep.status = RunStatus.RUNNING

"""The reconciler: brings Ray jobs in line with the store, one tick at a time (one reconciler per control plane).

A tick polls the runs whose job may be running (submitted, running, or cancelled with a job to stop), then submits
queued runs into the free slots, then derives the status of the sweeps it touched. A local arm waits in the queue,
taking no slot, until its vanilla partner has succeeded (it trains on that model's past), and fails if the partner
fails or is cancelled. Its cost is bounded by the concurrency limit, never by the queue or by history. Every run is
handled in a transaction of its own: a run whose submission or poll fails becomes an event with the cause and is
retried after a backoff, and every other run goes on. A failed attempt is retried as a new job that resumes from the
run's last checkpoint (same run name, same storage), up to `max_attempts`, with exponential backoff; a failure that
cannot succeed on retry (a spec or data error the job reports) fails the run at once. Job ids are `<run
id>-a<attempt>`: a queued run is claimed (its attempt's job marked as possibly live) in a transaction of its own
before its job is submitted, and recorded as submitted only if nobody changed it since; a cancel that lands in
between wins and the next poll stops the job; after a restart, a claimed run whose job already exists is adopted,
never submitted twice. While the Ray job server does not answer, a tick does nothing but say so (`cluster_error`);
jobs that vanished with a restarted cluster are resubmitted once it is back, without counting against the run.
The sweep's and pairs' MLflow runs are opened and their ids stored in a transaction of their own, before the job is
submitted (a submission lost to a cancel leaves them stored, for the reporter to end); a run whose MLflow runs cannot
be opened (MLflow down) waits in the queue (`tracking_error`), never failing for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from cluster.jobs import ACTIVE as JOB_ACTIVE
from cluster.jobs import Jobs, submission_id
from services import sweep_tracking
from services.store import ACTIVE, TERMINAL, Run, RunStatus, derive_sweep_status, now
from trainers.job_protocol import job_error, parse_result, progress_file, run_storage

log = logging.getLogger("myopia.reconciler")
PERMANENT = {"spec", "data", "environment"}  # errors a job reports that no retry can cure (environment: GPU driver)
LOG_TAIL = 4 * 2**20  # the end of a job's log holds its result or its error


SUCCEEDED_ONLY = frozenset({RunStatus.SUCCEEDED})
LOST = TERMINAL - SUCCEEDED_ONLY


def _partner_is(statuses: frozenset[str]) -> Any:
    """SQL: the run's pair has a vanilla run in one of `statuses` (a local arm runs after its vanilla partner)."""
    partner = aliased(Run)
    return exists().where(partner.pair_id == Run.pair_id, partner.arm == "vanilla", partner.status.in_(statuses))


class Reconciler:
    def __init__(
        self,
        db: sessionmaker,
        jobs: Jobs,
        work_dir: Path,
        *,
        max_concurrent: int = 2,
        max_attempts: int = 3,
        backoff_s: float = 10.0,
        job_env: dict[str, str] | None = None,
        stall_timeout_s: float = 0.0,
    ) -> None:
        self.db, self.jobs, self.max_concurrent, self.max_attempts = db, jobs, max_concurrent, max_attempts
        self.work_dir, self.backoff_s, self.stall_timeout_s = work_dir, backoff_s, stall_timeout_s
        self.started = now()
        self._unclaimed: dict[str, str | None] = {}  # run id -> its submission id before this tick's claim
        self.job_env = job_env or {}
        self.cluster_error: str | None = None  # why the last tick could not reach the job server
        self.tracking_error: str | None = None  # why the last submission could not open its MLflow runs

    # ------------------------------------------------------------------------------------------------ ticking
    def tick(self) -> None:
        self._unclaimed.clear()  # (a claim is given back, if at all, in the tick that made it)
        self.cluster_error = self.jobs.unreachable()
        if self.cluster_error:
            return
        touched: set[str] = set()
        with self.db() as s:
            live = list(s.scalars(select(Run.id).where(Run.job_live)))
        for run_id in live:
            touched |= self._each(run_id, self._poll)
        for run_id in self._orphaned_local_runs():
            touched |= self._each(run_id, self._partner_lost)
        with self.db() as s:
            busy = s.scalar(select(func.count()).select_from(Run).where(Run.status.in_(ACTIVE))) or 0
            due = (Run.not_before.is_(None)) | (Run.not_before <= now())
            queued = list(
                s.scalars(
                    select(Run.id)
                    .where(
                        Run.status == RunStatus.QUEUED,
                        ~Run.job_live,  # (a claimed run's job is polled: it may exist)
                        due,
                        (Run.arm != "local") | _partner_is(SUCCEEDED_ONLY),
                    )
                    .order_by(Run.created_at, Run.id)
                    .limit(max(0, self.max_concurrent - busy))
                )
            )
        for run_id in queued:
            if self._each(run_id, self._claim) and self._opened(run_id):
                touched |= self._each(run_id, self._submit)
        for sweep_id in touched:
            with self.db.begin() as s:
                derive_sweep_status(s, sweep_id)

    def _each(self, run_id: str, step: Callable[[Session, Run], None]) -> set[str]:
        """One run in a transaction of its own; an error becomes the run's event and a backoff, never the tick's."""
        try:
            with self.db.begin() as s:
                run = s.get(Run, run_id)
                if run is None:  # its sweep was deleted since the tick listed it
                    return set()
                step(s, run)
                return {run.sweep_id}
        except StaleDataError:  # a cancel (or retry) changed the run since this step read it: the change stands
            log.info("run %s changed during the tick; the next tick acts on what it is now", run_id)
            return set()
        except Exception as e:  # noqa: BLE001 - isolate the run: whatever it raised, the others go on
            log.exception("run %s", run_id)
            if why := self.jobs.unreachable():  # the cluster went away mid-tick: not the run's failure
                self.cluster_error = why
                return set()
            with self.db.begin() as s:
                run = s.get(Run, run_id)
                if run is None or run.status in TERMINAL:  # deleted or cancelled meanwhile: that stands
                    return set()
                self._failed(run, f"control plane: {type(e).__name__}: {e}"[:2000], permanent=False)
                return {run.sweep_id}

    def _orphaned_local_runs(self) -> list[str]:
        """Queued local arms whose vanilla partner ended without a model to take the past from."""
        with self.db() as s:
            lost = (Run.status == RunStatus.QUEUED) & (Run.arm == "local") & _partner_is(LOST)
            return list(s.scalars(select(Run.id).where(lost)))

    def _partner_lost(self, s: Session, run: Run) -> None:
        vanilla = next(r for r in run.pair.runs if r.arm == "vanilla")
        self._failed(run, f"its vanilla partner {vanilla.id} {vanilla.status}: no past to train on", permanent=True)

    # ------------------------------------------------------------------------------------------------ a run
    def _claim(self, s: Session, run: Run) -> None:
        """Mark the attempt's job as possibly live before it is submitted, in a compare-and-set of its own: a
        cancel that lands from here on leaves the mark, so the next poll stops whatever job exists."""
        if run.status == RunStatus.QUEUED and not run.job_live:  # (as listed: not cancelled since)
            self._unclaimed[run.id] = run.submission_id  # what a claim that submits nothing gives back
            run.job_live, run.submission_id = True, submission_id(run.id, run.attempt)

    def _opened(self, run_id: str) -> bool:
        """Open the sweep's and its pairs' MLflow runs and store their ids, in a transaction of their own that
        commits whatever was opened, even when MLflow fails partway: a submission that then loses to a cancel, or a
        later call that fails, leaves every created run's id stored, for the reporter to end with the sweep (else
        it stays RUNNING in MLflow, unknown to the store). Where MLflow failed, the claim is given back: the run
        waits in the queue, with no job, until MLflow answers (`tracking_error`), never failing for it."""
        failed: list[str] = []

        def step(s: Session, run: Run) -> None:
            if run.status == RunStatus.QUEUED and run.job_live:
                try:
                    sweep_tracking.open_runs(run.sweep)
                except Exception as e:  # noqa: BLE001 - whatever MLflow raised, the run is not at fault
                    failed.append(f"MLflow: {type(e).__name__}: {str(e)[:300]}")

        if not self._each(run_id, step):
            return False
        if not failed:
            self.tracking_error = None
            return True
        self.tracking_error = failed[0]
        log.warning("run %s waits: %s", run_id, failed[0])
        try:
            with self.db.begin() as s:  # give the claim back (nothing was submitted)
                run = s.get(Run, run_id)
                if run is not None and run.status == RunStatus.QUEUED and run.job_live:
                    run.job_live, run.submission_id = False, self._unclaimed.pop(run_id, None)
        except StaleDataError:  # cancelled meanwhile: that stands, and the next poll clears the claim
            pass
        return False

    def _submit(self, s: Session, run: Run) -> None:
        """Submit the claimed attempt's job and record it, only if the run is as claimed: recording compares the
        run's version, so a cancel that came after this read wins and the run is never recorded as submitted."""
        if run.status != RunStatus.QUEUED or not run.job_live:
            return  # cancelled since the claim: the poll stops the job if one exists
        sid = run.submission_id
        if self.jobs.status(sid) is None:  # else: submitted before a crash of the control plane; adopt it
            if run.pair.mlflow_run_id:  # the arm runs log under their pair's MLflow run
                run.spec = {**run.spec, "tracking": {**run.spec["tracking"], "parent_run_id": run.pair.mlflow_run_id}}
            self._progress_file(run).unlink(missing_ok=True)  # a previous attempt's
            self.jobs.submit(sid, run.spec, self.job_env)
        run.progress, run.progress_at = None, now()
        run.set_status(RunStatus.SUBMITTED, sid)

    def _poll(self, s: Session, run: Run) -> None:
        status = self.jobs.status(run.submission_id)
        # cancelled, failed, or requeued past this job (failed at its submission, stalled): the job, if any, must
        # go; the run is not submitted again until it has (its checkpoints are not shared with a dying job)
        if run.status in TERMINAL or run.submission_id != submission_id(run.id, run.attempt):
            if status in JOB_ACTIVE:
                self.jobs.stop(run.submission_id)
            else:
                run.job_live = False
            return
        if status in JOB_ACTIVE:
            if status == JobStatus.RUNNING:
                run.set_status(RunStatus.RUNNING)
                self._progress(run)
            elif run.status == RunStatus.QUEUED:  # claimed and submitted before a crash: adopt it
                run.set_status(RunStatus.SUBMITTED, run.submission_id)
            if stalled := self._stalled(run):
                self.jobs.stop(run.submission_id)  # its slot is free from now (a queued run takes none)
                self._failed(run, stalled, permanent=False)
            return
        run.job_live = False
        if status is None and run.status == RunStatus.QUEUED:  # claimed, never submitted: its id is still free
            return
        if status is None:  # the cluster lost it (restarted): run it again, not the run's failure
            run.attempt += 1
            run.set_status(RunStatus.QUEUED, f"job {run.submission_id} is gone (the cluster restarted?): resubmitting")
            return
        logs = self.jobs.tail(run.submission_id, LOG_TAIL)
        if status == JobStatus.SUCCEEDED:
            try:
                run.result = parse_result(logs)
            except json.JSONDecodeError as e:
                return self._failed(run, f"the job succeeded but its result line is not JSON: {e}", permanent=False)
            if run.result is None:
                return self._failed(run, "the job succeeded but printed no result line", permanent=False)
            run.error = None
            run.set_status(RunStatus.SUCCEEDED)
            return
        reported = job_error(logs)  # what the job said went wrong, where it could tell
        message = self.jobs.message(run.submission_id) or ""
        if reported and reported["kind"] == "version":  # the cluster's images, not the run: wait for the upgrade
            run.attempt += 1
            run.not_before = datetime.now(UTC) + timedelta(seconds=6 * self.backoff_s)  # a minute by default
            run.set_status(RunStatus.QUEUED, f"waiting for the cluster's upgrade: {reported['message'][:500]}")
            return
        if reported:
            self._failed(
                run, f"{reported['kind']} error: {reported['message']}", permanent=reported["kind"] in PERMANENT
            )
        else:
            tail = "\n".join(logs.strip().splitlines()[-15:])
            self._failed(run, f"job {status.value}: {message}\n{tail}".strip(), permanent=False)

    def _progress_file(self, run: Run) -> Path:
        storage = run_storage(run.spec.get("storage_path"), self.work_dir)  # in the jobs' data dir, or an object store
        return progress_file(storage, run.id, self.work_dir)

    def _progress(self, run: Run) -> None:
        """The job's rank 0 writes {step, steps, loss} beside its checkpoints (readable where storage is shared)."""
        try:
            state = json.loads(self._progress_file(run).read_text())
        except (OSError, json.JSONDecodeError):
            return
        if state != run.progress:
            run.progress, run.progress_at = state, now()

    def _stalled(self, run: Run) -> str | None:
        """Why the run counts as stalled: placed (its rank 0 has written progress, so progress is readable here)
        and silent since for stall_timeout_s. A run waiting for its workers on a busy cluster is queueing, not
        stalled (a request no node could ever place is refused at submission)."""
        if not self.stall_timeout_s or not run.progress or run.progress_at is None:
            return None
        since = run.progress_at if run.progress_at.tzinfo else run.progress_at.replace(tzinfo=UTC)
        idle = (now() - max(since, self.started)).total_seconds()  # a control plane that was down counts from now
        if idle <= self.stall_timeout_s:
            return None
        where = f"at step {run.progress.get('step')}, {run.progress.get('phase', 'training')}"
        return (f"no progress for {idle:.0f} s (MYOPIA_STALL_TIMEOUT_S = {self.stall_timeout_s:g}), {where}: "
                f"its job {run.submission_id} was stopped")  # fmt: skip

    def _failed(self, run: Run, error: str, *, permanent: bool) -> None:
        run.error = error
        run.failures += 1
        if not permanent and run.failures < self.max_attempts:
            run.attempt += 1
            delay = self.backoff_s * 2 ** (run.failures - 1)
            run.not_before = datetime.now(UTC) + timedelta(seconds=delay)
            run.set_status(RunStatus.QUEUED, f"retry in {delay:.0f} s: {error[:500]}")  # resumes from its checkpoint
        else:
            run.set_status(RunStatus.FAILED, error[:2000])

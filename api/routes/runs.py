"""/v1/runs/{id}: a run with its history, its job's logs, cancel, retry."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from api.deps import Db, JobsDep
from api.schemas import ErrorOut, RunOut
from services import sweeps

router = APIRouter(prefix="/runs", tags=["runs"], responses={404: {"model": ErrorOut}})


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: str, db: Db):
    return RunOut.of(sweeps.get_run(db, run_id), events=True)


@router.get("/{run_id}/logs", response_class=PlainTextResponse)
def run_logs(run_id: str, db: Db, jobs: JobsDep) -> str:
    run = sweeps.get_run(db, run_id)
    if jobs is None or run.submission_id is None:
        return ""
    return jobs.logs(run.submission_id)


@router.post("/{run_id}/cancel", response_model=RunOut)
def cancel_run(run_id: str, db: Db):
    return RunOut.of(sweeps.cancel_run(db, run_id), events=True)


@router.post("/{run_id}/retry", response_model=RunOut, responses={409: {"model": ErrorOut}})
def retry_run(run_id: str, db: Db):
    """A failed or cancelled run goes back to the queue as a new attempt that resumes from its checkpoint."""
    return RunOut.of(sweeps.retry_run(db, run_id), events=True)

"""/v1/sweeps: create (with an Idempotency-Key), list a page, get, cancel, delete, its runs a page at a time,
results as JSON and PNG."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse, Response

from api.body import body_schema, json_body
from api.deps import BackgroundDep, CapacityDep, Db, SettingsDep
from api.schemas import ErrorOut, RunOut, RunPage, SweepOut, SweepPage, SweepSummary
from services import results, retention, sweeps
from services.errors import InvalidRequest
from services.planner import SweepRequest
from services.scheduler import SCHEDULER_KEYS

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses={404: {"model": ErrorOut}})
SweepId = Annotated[str, Path(max_length=80)]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]


@router.post(
    "",
    status_code=201,
    response_model=SweepOut,
    responses={200: {"model": SweepOut}, 409: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    openapi_extra=body_schema(SweepRequest),
)
def create_sweep(
    body: json_body(SweepRequest),
    db: Db,
    settings: SettingsDep,
    background: BackgroundDep,
    capacity: CapacityDep,
    idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[\x21-\x7e]*$")] = None,
):
    """Plan the request into matched pairs and queue their runs (a 422 where the cluster could never place a run's
    workers: its largest node, its CPUs and GPUs in all). A known Idempotency-Key returns its sweep (200)
    for the same request and is a 409 for another; an empty key is no key. Keys beginning `schedule:` are the
    scheduler's own (a client using one could make a schedule's tick fail): 422."""
    if idempotency_key and idempotency_key.lower().startswith(SCHEDULER_KEYS):
        raise InvalidRequest([("header.Idempotency-Key", f"keys beginning {SCHEDULER_KEYS!r} are the scheduler's")])
    sweep, created = sweeps.create_sweep(
        db,
        body,
        idempotency_key=idempotency_key,
        mlflow_uri=settings.mlflow,
        profile=settings.resource_profile,
        allowed_roots=settings.data_roots,
        capacity=capacity,
    )
    if created and background is not None:
        background.wake("reconciler")
    return JSONResponse(status_code=201 if created else 200, content=SweepOut.of(sweep).model_dump(mode="json"))


@router.get("", response_model=SweepPage)
def list_sweeps(db: Db, limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: Cursor = None):
    """Newest first, without their runs (counted by status); pass `next_cursor` back for the next page."""
    items, next_cursor = sweeps.list_sweeps(db, limit, cursor)
    summaries = [
        SweepSummary(id=i["sweep"].id, name=i["sweep"].name, status=i["sweep"].status,
                     created_at=i["sweep"].created_at, runs_by_status=i["runs_by_status"])
        for i in items
    ]  # fmt: skip
    return SweepPage(items=summaries, next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=SweepOut)
def get_sweep(sweep_id: SweepId, db: Db):
    return SweepOut.of(sweeps.get_sweep(db, sweep_id))


@router.get("/{sweep_id}/runs", response_model=RunPage)
def list_runs(sweep_id: SweepId, db: Db, limit: Annotated[int, Query(ge=1, le=500)] = 100, cursor: Cursor = None):
    runs, next_cursor = sweeps.list_runs(db, sweep_id, limit, cursor)
    return RunPage(items=[RunOut.of(r) for r in runs], next_cursor=next_cursor)


@router.post("/{sweep_id}/cancel", response_model=SweepOut)
def cancel_sweep(sweep_id: SweepId, db: Db):
    return SweepOut.of(sweeps.cancel_sweep(db, sweep_id))


@router.delete("/{sweep_id}", responses={409: {"model": ErrorOut}})
def delete_sweep(sweep_id: SweepId, db: Db, settings: SettingsDep) -> dict:
    """An ended sweep, for good: its rows, its MLflow runs (marked deleted; `mlflow gc` purges them) and its runs'
    checkpoints. A sweep with a run not yet ended is a 409: cancel it first. Returns what was removed, and any
    checkpoint storage this machine cannot reach (a cluster folder not mounted here: remove it there)."""
    return retention.remove(db, sweep_id, settings.job_env())


@router.get("/{sweep_id}/results")
def sweep_results(sweep_id: SweepId, db: Db) -> dict:
    """The gap per pair, per size (mean, 95% interval over seeds), the fits against scale, the MLflow runs."""
    return results.sweep_results(db, sweep_id)


@router.get("/{sweep_id}/results.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def sweep_results_png(sweep_id: SweepId, db: Db) -> Response:
    return Response(results.gap_plot(results.sweep_results(db, sweep_id)), media_type="image/png")

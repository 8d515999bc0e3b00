"""/v1/sweeps: create (with an Idempotency-Key), list, get, cancel, results as JSON and PNG."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from api.deps import Db, SettingsDep
from api.schemas import ErrorOut, SweepOut
from services import results, sweeps
from services.planner import SweepRequest

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses={404: {"model": ErrorOut}})


@router.post(
    "", status_code=201, response_model=SweepOut, responses={200: {"model": SweepOut}, 422: {"model": ErrorOut}}
)
def create_sweep(
    body: SweepRequest,
    db: Db,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    """Plan the request into matched pairs and queue their runs; 200 with the existing sweep for a known key."""
    sweep, created = sweeps.create_sweep(
        db, body, idempotency_key=idempotency_key, mlflow_uri=settings.mlflow, profile=settings.resource_profile
    )
    return JSONResponse(status_code=201 if created else 200, content=SweepOut.of(sweep).model_dump(mode="json"))


@router.get("", response_model=list[SweepOut])
def list_sweeps(db: Db):
    return [SweepOut.of(s) for s in sweeps.list_sweeps(db)]


@router.get("/{sweep_id}", response_model=SweepOut)
def get_sweep(sweep_id: str, db: Db):
    return SweepOut.of(sweeps.get_sweep(db, sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepOut)
def cancel_sweep(sweep_id: str, db: Db):
    return SweepOut.of(sweeps.cancel_sweep(db, sweep_id))


@router.get("/{sweep_id}/results")
def sweep_results(sweep_id: str, db: Db) -> dict:
    """The gap per pair, per size (mean, 95% interval over seeds), the fits against scale, the MLflow runs."""
    return results.sweep_results(db, sweep_id)


@router.get("/{sweep_id}/results.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def sweep_results_png(sweep_id: str, db: Db) -> Response:
    return Response(results.gap_plot(results.sweep_results(db, sweep_id)), media_type="image/png")

"""The FastAPI app factory: routes under /v1, bearer-token auth when a token is set, JSON errors with a message."""

from __future__ import annotations

import secrets
import threading
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import text

from api.schemas import ErrorOut, RunOut, ScheduleOut, SweepOut
from cluster.jobs import Jobs
from services import results, scheduler, sweeps
from services.planner import FieldError, SweepRequest
from services.reconciler import Reconciler
from services.settings import Settings
from services.store import connect
from trainers.spec import error_path


def _every(interval: float, fn, stop: threading.Event) -> None:
    """Call fn every interval seconds until stop is set; a failing call is logged and retried next time."""
    while not stop.wait(interval):
        try:
            fn()
        except Exception:  # noqa: BLE001
            import logging

            logging.getLogger("myopia").exception("periodic task failed")


class UnauthorizedError(Exception):
    pass


def _error(code: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=code, content={"error": kind, "message": message})


def _invalid_fields(errors: list[tuple[str, str]]) -> JSONResponse:
    """422 naming each field by its path in the request (`run.train.steps`)."""
    fields = [{"field": field if field != "(top level)" else "body", "message": msg} for field, msg in errors]
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return JSONResponse(status_code=422, content={"error": "validation", "message": message, "detail": fields})


def create_app(settings: Settings | None = None, jobs: Jobs | None = None) -> FastAPI:
    """The app; with `jobs` (a Ray job server) it also runs the reconciler that executes the sweeps."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.db = connect(settings.database)  # migrates: a restarted control plane finds its sweeps
        app.state.reconciler = None
        stop = threading.Event()

        def fire() -> None:
            scheduler.tick(app.state.db, mlflow_uri=settings.mlflow, profile=settings.resource_profile)

        threading.Thread(target=_every, args=(30.0, fire, stop), name="scheduler", daemon=True).start()
        if jobs is not None:
            rec = Reconciler(
                app.state.db,
                jobs,
                settings.data_dir.expanduser(),
                max_concurrent=settings.max_concurrent_runs,
                max_attempts=settings.max_attempts,
                job_env={"MYOPIA_DATA_DIR": str(settings.data_dir.expanduser())},
            )
            threading.Thread(target=_every, args=(2.0, rec.tick, stop), name="reconciler", daemon=True).start()
            app.state.reconciler = rec
        yield
        stop.set()

    app = FastAPI(
        title="myopia",
        version="0.1.0",
        lifespan=lifespan,
        description="Scaling sweeps of myopic training: the myopia gap against model scale.",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return _invalid_fields(
            [(error_path({**err, "loc": [p for p in err["loc"] if p != "body"]}), err["msg"]) for err in e.errors()]
        )

    @app.exception_handler(FieldError)
    async def _refused_fields(_: Request, e: FieldError) -> JSONResponse:
        return _invalid_fields(e.errors)

    @app.exception_handler(sweeps.NotFound)
    async def _missing(_: Request, e: sweeps.NotFound) -> JSONResponse:
        return _error(404, "not_found", str(e))

    @app.exception_handler(ValueError)
    async def _refused(_: Request, e: ValueError) -> JSONResponse:
        return _error(422, "refused", str(e))

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        if settings.api_token is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, settings.api_token):
            raise UnauthorizedError

    @app.exception_handler(UnauthorizedError)
    async def _unauthorized(_: Request, __: Exception) -> JSONResponse:
        response = _error(401, "unauthorized", "a bearer token is required: Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)], responses={401: {"model": ErrorOut}})

    @v1.post("/sweeps", status_code=status.HTTP_201_CREATED, response_model=SweepOut)
    def create_sweep(
        body: SweepRequest, request: Request, idempotency_key: Annotated[str | None, Header(max_length=200)] = None
    ):
        sweep, created = sweeps.create_sweep(
            request.app.state.db,
            body,
            idempotency_key=idempotency_key,
            mlflow_uri=settings.mlflow,
            profile=settings.resource_profile,
        )
        return JSONResponse(status_code=201 if created else 200, content=SweepOut.of(sweep).model_dump(mode="json"))

    @v1.get("/sweeps", response_model=list[SweepOut])
    def list_sweeps(request: Request):
        return [SweepOut.of(s) for s in sweeps.list_sweeps(request.app.state.db)]

    @v1.get("/sweeps/{sweep_id}", response_model=SweepOut, responses={404: {"model": ErrorOut}})
    def get_sweep(sweep_id: str, request: Request):
        return SweepOut.of(sweeps.get_sweep(request.app.state.db, sweep_id))

    @v1.post("/sweeps/{sweep_id}/cancel", response_model=SweepOut, responses={404: {"model": ErrorOut}})
    def cancel_sweep(sweep_id: str, request: Request):
        return SweepOut.of(sweeps.cancel_sweep(request.app.state.db, sweep_id))

    @v1.get("/sweeps/{sweep_id}/results", responses={404: {"model": ErrorOut}})
    def sweep_results(sweep_id: str, request: Request) -> dict:
        return results.sweep_results(request.app.state.db, sweep_id)

    @v1.get("/sweeps/{sweep_id}/results.png", responses={200: {"content": {"image/png": {}}}})
    def sweep_results_png(sweep_id: str, request: Request) -> Response:
        return Response(results.gap_plot(results.sweep_results(request.app.state.db, sweep_id)), media_type="image/png")

    @v1.get("/runs/{run_id}", response_model=RunOut, responses={404: {"model": ErrorOut}})
    def get_run(run_id: str, request: Request):
        return RunOut.of(sweeps.get_run(request.app.state.db, run_id), events=True)

    @v1.get("/runs/{run_id}/logs", response_class=PlainTextResponse, responses={404: {"model": ErrorOut}})
    def run_logs(run_id: str, request: Request) -> str:
        run = sweeps.get_run(request.app.state.db, run_id)
        if jobs is None or run.submission_id is None:
            return ""
        return jobs.logs(run.submission_id)

    @v1.post("/runs/{run_id}/cancel", response_model=RunOut, responses={404: {"model": ErrorOut}})
    def cancel_run(run_id: str, request: Request):
        return RunOut.of(sweeps.cancel_run(request.app.state.db, run_id), events=True)

    @v1.post("/runs/{run_id}/retry", response_model=RunOut, responses={404: {"model": ErrorOut}})
    def retry_run(run_id: str, request: Request):
        return RunOut.of(sweeps.retry_run(request.app.state.db, run_id), events=True)

    @v1.post("/schedules", status_code=201, response_model=ScheduleOut)
    def add_schedule(body: scheduler.ScheduleRequest, request: Request):
        schedule = scheduler.add_schedule(request.app.state.db, body, settings.resource_profile)
        return ScheduleOut.model_validate(schedule, from_attributes=True)

    @v1.get("/schedules", response_model=list[ScheduleOut])
    def list_schedules(request: Request):
        return [
            ScheduleOut.model_validate(x, from_attributes=True) for x in scheduler.list_schedules(request.app.state.db)
        ]

    @v1.delete("/schedules/{schedule_id}", status_code=204, responses={404: {"model": ErrorOut}})
    def delete_schedule(schedule_id: str, request: Request) -> Response:
        scheduler.delete_schedule(request.app.state.db, schedule_id)
        return Response(status_code=204)

    app.include_router(v1)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request):
        try:
            with request.app.state.db() as s:
                s.execute(text("SELECT 1"))
        except Exception as e:  # noqa: BLE001 - readiness reports any failure
            return _error(503, "not_ready", f"database: {e}")
        return {"status": "ready", "database": "ok"}

    return app

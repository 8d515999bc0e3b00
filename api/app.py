"""The FastAPI app: routes under /v1 and /metrics (bearer auth when a token is set), probes, and, with a Ray job
server, the background components that run the sweeps."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from api import body, errors
from api.guard import RequestGuard
from api.routes import health, metrics, runs, schedules, sweeps
from api.schemas import ErrorOut
from cluster.jobs import Jobs
from cluster.local import EmbeddedHead
from services.background import control_plane
from services.planner import SweepRequest
from services.scheduler import ScheduleEdit, ScheduleRequest
from services.settings import Settings
from services.store import connect


def create_app(settings: Settings | None = None, jobs: Jobs | None = None, head: EmbeddedHead | None = None) -> FastAPI:
    """The app; with `jobs` it also runs the reconciler and reports results to MLflow; schedules always fire; with
    an embedded `head` it supervises it (restarted when it dies)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # migrates (unless MYOPIA_MIGRATE_ON_START=false): a restarted control plane finds its sweeps
        app.state.db = connect(settings.database, settings.migrate_on_start)
        background = control_plane(app.state.db, settings, jobs, head)
        app.state.background = background
        background.start()
        yield
        background.stop()
        if head is not None:  # here, not after uvicorn returns: it re-raises SIGTERM once the app has shut down
            head.stop()

    app = FastAPI(
        title="myopia",
        version="0.1.0",
        lifespan=lifespan,
        description="Scaling sweeps of myopic training: the myopia gap against model scale.",
    )
    app.state.settings, app.state.jobs = settings, jobs
    errors.install(app)
    metrics.install(app)
    app.add_middleware(
        RequestGuard, tokens=settings.api_tokens, max_body=settings.max_request_bytes, protected=("/v1", "/metrics")
    )
    v1 = APIRouter(prefix="/v1", responses={401: {"model": ErrorOut}, 413: {"model": ErrorOut}})
    for module in (sweeps, runs, schedules):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(metrics.router)
    body.register(app, (SweepRequest, ScheduleRequest, ScheduleEdit))
    return app

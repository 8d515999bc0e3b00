"""Prometheus metrics of the control plane (`GET /metrics`, behind the bearer token when one is set): runs and
sweeps by status from the store at scrape time, whether the Ray job server answers, and the API's requests by
route template and status."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from services.store import Run, Sweep

router = APIRouter(tags=["health"])


class StoreCollector(Collector):
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        db, jobs = getattr(self.app.state, "db", None), self.app.state.jobs
        if db is not None:
            with db() as s:  # one session for the whole scrape
                for model, name in ((Run, "runs"), (Sweep, "sweeps")):
                    family = GaugeMetricFamily(f"myopia_{name}", f"{name} in the store by status", labels=["status"])
                    for status, n in s.execute(select(model.status, func.count()).group_by(model.status)):
                        family.add_metric([status], n)
                    yield family
                live = s.scalar(select(func.count()).select_from(Run).where(Run.job_live))
            yield GaugeMetricFamily("myopia_live_jobs", "runs whose Ray job may be running", value=live or 0)
        if jobs is not None:
            up = 0.0 if jobs.unreachable() else 1.0
            yield GaugeMetricFamily("myopia_ray_up", "1 when the Ray job server answers", value=up)


def install(app: FastAPI) -> None:
    """A registry of the app's own (several apps in one process, as in the tests, never share counters)."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(app))
    requests = Counter("myopia_http_requests", "API requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("myopia_http_request_seconds", "API request latency", ["route"], registry=registry)
    app.state.metrics = registry

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = _template(request)
        requests.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return response


def _template(request: Request) -> str:
    """The matched route's template with its router's prefix (/v1/sweeps/{sweep_id}): bounded label values."""
    context = request.scope.get("fastapi", {}).get("effective_route_context")  # FastAPI's routers included lazily
    route = request.scope.get("route")
    return getattr(context, "path", None) or getattr(route, "path", None) or "unmatched"


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)

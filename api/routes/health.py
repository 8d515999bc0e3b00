"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import Db, JobsDep
from api.errors import error
from services.store import check

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process answers (on the event loop itself: no worker thread, so a busy thread pool does not delay it)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, db: Db, jobs: JobsDep):
    """Ready (200) when the database answers on a fresh connection at this version's schema and takes a write:
    then the API can list, cancel and queue. Ray is reported beside it, and does not make the API unready: while
    the Ray cluster is down, runs wait in the queue and the API stays in its Service. Without the API token (when
    one is set), only the names of what is down: the reasons can carry paths, SQL and ports."""
    down = {}
    try:
        check(db)
    except Exception as e:  # noqa: BLE001 - readiness reports any failure, by name
        down["database"] = f"{type(e).__name__}: {e}"[:500]
    ray_down = jobs.unreachable() if jobs is not None else None
    detail = request.scope.get("state", {}).get("authorized", False)
    ray = None if jobs is None else ("ok" if not ray_down else (f"down: {ray_down}" if detail else "down"))
    if down:
        why = "; ".join(f"{k}: {v}" for k, v in down.items()) if detail else ", ".join(down) + " down"
        return error(503, "not_ready", why)
    return {"status": "ready", "database": "ok", **({"ray": ray} if ray else {})}

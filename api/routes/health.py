"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Db, JobsDep
from api.errors import error
from services.store import check

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(db: Db, jobs: JobsDep):
    """Ready when the database answers on a fresh connection at this version's schema and takes a write, and the
    Ray job server answers; else 503 naming what is down."""
    down = {}
    try:
        check(db)
    except Exception as e:  # noqa: BLE001 - readiness reports any failure, by name
        down["database"] = f"{type(e).__name__}: {e}"[:500]
    if jobs is not None and (why := jobs.unreachable()):
        down["ray"] = why
    if down:
        return error(503, "not_ready", "; ".join(f"{k}: {v}" for k, v in down.items()))
    return {"status": "ready", "database": "ok", **({"ray": "ok"} if jobs is not None else {})}

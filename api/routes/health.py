"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import Db
from api.errors import error

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(db: Db):
    try:
        with db() as s:
            s.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - readiness reports any failure
        return error(503, "not_ready", f"database: {e}")
    return {"status": "ready", "database": "ok"}

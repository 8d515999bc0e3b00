"""Response models of the REST API (requests are `services.planner.SweepRequest`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class RunEventOut(BaseModel):
    attempt: int
    status: str
    message: str | None
    at: datetime


class RunOut(BaseModel):
    id: str
    sweep_id: str
    pair_id: str
    arm: str
    size: str
    seed: int
    status: str
    attempt: int
    config_hash: str
    error: str | None = None
    result: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    events: list[RunEventOut] = []

    @classmethod
    def of(cls, run: Any, events: bool = False) -> RunOut:
        spec = run.spec
        history = [RunEventOut.model_validate(e, from_attributes=True) for e in run.events] if events else []
        return cls(
            id=run.id,
            sweep_id=run.sweep_id,
            pair_id=run.pair_id,
            arm=run.arm,
            size=spec["model"]["size"],
            seed=spec["seed"],
            status=run.status,
            attempt=run.attempt,
            config_hash=run.config_hash,
            error=run.error,
            result=run.result,
            progress=run.progress,
            events=history,
        )


class SweepOut(BaseModel):
    id: str
    name: str
    status: str
    created_at: datetime
    request: dict[str, Any]
    runs: list[RunOut]

    @classmethod
    def of(cls, sweep: Any) -> SweepOut:
        return cls(
            id=sweep.id,
            name=sweep.name,
            status=sweep.status,
            created_at=sweep.created_at,
            request=sweep.request,
            runs=[RunOut.of(r) for r in sweep.runs],
        )


class ErrorOut(BaseModel):
    error: str
    message: str


class ScheduleOut(BaseModel):
    id: str
    name: str
    cron: str
    template: dict[str, Any]
    last_fired_at: datetime | None
    last_sweep_id: str | None

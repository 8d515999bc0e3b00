"""Response models of the REST API (requests are `services.planner.SweepRequest` and
`services.scheduler.ScheduleRequest`). Times are UTC with their offset; lists come a page at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from trainers.models import shape_label


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)  # SQLite returns naive datetimes


UTCTime = Annotated[datetime, AfterValidator(_utc)]


class RunEventOut(BaseModel):
    attempt: int
    status: str
    message: str | None
    at: UTCTime


class RunOut(BaseModel):
    id: str
    sweep_id: str
    pair_id: str
    arm: str
    size: str
    seed: int
    status: str
    attempt: int
    failures: int
    retry_after: UTCTime | None = None  # a queued retry waits until then
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
            size=shape_label(spec["model"]["size"], **spec["model"].get("overrides", {})),
            seed=spec["seed"],
            status=run.status,
            attempt=run.attempt,
            failures=run.failures or 0,
            retry_after=run.not_before,
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
    created_at: UTCTime
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


class SweepSummary(BaseModel):
    id: str
    name: str
    status: str
    created_at: UTCTime
    runs_by_status: dict[str, int]


class SweepPage(BaseModel):
    items: list[SweepSummary]
    next_cursor: str | None


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class FieldError(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    error: str
    message: str
    detail: list[FieldError] | None = Field(None, description="422: the first 20 fields at fault")
    error_count: int | None = Field(None, description="422: how many errors the request had in all")


class ScheduleOut(BaseModel):
    id: str
    name: str
    cron: str
    template: dict[str, Any]
    paused: bool
    created_at: UTCTime
    last_fired_at: UTCTime | None
    last_sweep_id: str | None


class SchedulePage(BaseModel):
    items: list[ScheduleOut]
    next_cursor: str | None

"""Scheduled sweeps: a cron expression and a sweep template; each tick of the cron creates one sweep, linked to the
previous one, exactly once, across restarts and concurrent control planes.

A tick's sweep carries the Idempotency-Key `schedule:<id>:<tick time>`, so a tick repeated after a crash (between
creating the sweep and recording the tick) returns the sweep it already made. Ticks missed while the control plane
was down collapse into the latest one: a schedule catches up once, not once per missed tick.
"""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter
from pydantic import Field, field_validator
from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from services.errors import InvalidRequest, NotFound
from services.planner import SweepRequest, plan
from services.store import Schedule, Sweep, new_id
from services.sweeps import create_sweep
from trainers.spec import Strict


class ScheduleRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(description="five-field cron expression, UTC, e.g. '0 3 * * 1'")
    template: SweepRequest

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        if not croniter.is_valid(v):
            raise ValueError(f"not a valid cron expression: {v!r}")
        return v


def add_schedule(db: sessionmaker, request: ScheduleRequest, profile: str = "cpu") -> Schedule:
    """Store a schedule whose template plans (a template that cannot is refused now, not at its first tick)."""
    try:
        plan(request.template, profile=profile)
    except InvalidRequest as e:
        raise InvalidRequest([(f"template.{field}", msg) for field, msg in e.errors]) from None
    with db.begin() as s:
        template = request.template.model_dump(mode="json", exclude_none=True)
        schedule = Schedule(
            id=new_id("sch"), name=request.name, cron=request.cron, template=template, created_at=datetime.now(UTC)
        )
        s.add(schedule)
    return schedule


def list_schedules(db: sessionmaker) -> list[Schedule]:
    with db() as s:
        return list(s.scalars(select(Schedule).where(Schedule.enabled).order_by(Schedule.created_at)))


def delete_schedule(db: sessionmaker, schedule_id: str) -> None:
    """Disable it (its sweeps keep their link)."""
    with db.begin() as s:
        schedule = s.get(Schedule, schedule_id)
        if schedule is None or not schedule.enabled:
            raise NotFound(f"no schedule {schedule_id!r}")
        schedule.enabled = False


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # SQLite returns naive datetimes


def tick(
    db: sessionmaker, now: datetime | None = None, *, mlflow_uri: str | None = None, profile: str = "cpu"
) -> list[str]:
    """Fire every schedule whose cron has ticked since it last fired; returns the ids of the sweeps created."""
    now = now or datetime.now(UTC)
    created = []
    for schedule in list_schedules(db):
        since = _utc(schedule.last_fired_at or schedule.created_at)
        due = croniter(schedule.cron, now).get_prev(datetime)  # the latest tick at or before now
        if due <= since:
            continue
        request = SweepRequest.model_validate(schedule.template)
        sweep, _ = create_sweep(
            db,
            request,
            idempotency_key=f"schedule:{schedule.id}:{due.isoformat()}",
            mlflow_uri=mlflow_uri,
            profile=profile,
        )
        with db.begin() as s:
            # record the tick only if nobody did it first; link the new sweep to the schedule's previous one
            won = s.execute(
                update(Schedule)
                .where(Schedule.id == schedule.id, Schedule.last_sweep_id.is_not_distinct_from(schedule.last_sweep_id))
                .values(last_fired_at=due, last_sweep_id=sweep.id)
            ).rowcount
            if won:
                s.execute(
                    update(Sweep)
                    .where(Sweep.id == sweep.id)
                    .values(schedule_id=schedule.id, previous_sweep_id=schedule.last_sweep_id)
                )
                created.append(sweep.id)
    return created

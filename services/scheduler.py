"""Scheduled sweeps: a cron expression and a sweep template; each tick of the cron creates one sweep, linked to the
previous one, exactly once, across restarts and concurrent control planes.

A tick's sweep carries the Idempotency-Key `schedule:<id>:<tick time>`, so a tick repeated after a crash (between
creating the sweep and recording the tick) returns the sweep it already made. Ticks missed while the control plane
was down collapse into the latest one: a schedule catches up once, not once per missed tick.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from croniter import CroniterBadDateError, croniter
from pydantic import Field, field_validator
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import sessionmaker

from services.errors import InvalidRequest, NotFound
from services.planner import SweepRequest, plan
from services.store import Schedule, Sweep, new_id
from services.sweeps import create_sweep, decode_time_cursor, encode_cursor
from trainers.spec import Strict

log = logging.getLogger("myopia.scheduler")


class ScheduleRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(description="five-field cron expression, UTC, e.g. '0 3 * * 1'")
    template: SweepRequest

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        """Parsable, and firing: its next and previous ticks exist (`0 0 30 2 *` parses but never fires)."""
        if not croniter.is_valid(v):
            raise ValueError(f"not a valid cron expression: {v!r}")
        try:
            now = datetime.now(UTC)
            croniter(v, now).get_next(datetime), croniter(v, now).get_prev(datetime)
        except (CroniterBadDateError, ValueError) as e:
            raise ValueError(f"cron expression {v!r} never fires: {e}") from None
        return v


def add_schedule(
    db: sessionmaker, request: ScheduleRequest, profile: str = "cpu", allowed_roots: list[Path] | None = None
) -> Schedule:
    """Store a schedule whose template plans (a template that cannot is refused now, not at its first tick)."""
    try:
        plan(request.template, profile=profile, allowed_roots=allowed_roots)
    except InvalidRequest as e:
        raise InvalidRequest([(f"template.{field}", msg) for field, msg in e.errors]) from None
    with db.begin() as s:
        template = request.template.model_dump(mode="json", exclude_none=True)
        schedule = Schedule(
            id=new_id("sch"), name=request.name, cron=request.cron, template=template, created_at=datetime.now(UTC)
        )
        s.add(schedule)
    return schedule


def list_schedules(
    db: sessionmaker, limit: int | None = None, cursor: str | None = None
) -> tuple[list[Schedule], str | None]:
    """Enabled schedules, oldest first, a page at a time (all of them without a limit); the next page's cursor."""
    with db() as s:
        query = select(Schedule).where(Schedule.enabled).order_by(Schedule.created_at, Schedule.id)
        if cursor:
            when, schedule_id = decode_time_cursor(cursor)
            query = query.where(
                or_(Schedule.created_at > when, and_(Schedule.created_at == when, Schedule.id > schedule_id))
            )
        page = list(s.scalars(query.limit(limit + 1) if limit else query))
    if limit and len(page) > limit:
        return page[:limit], encode_cursor(page[limit - 1].created_at.isoformat(), page[limit - 1].id)
    return page, None


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
    db: sessionmaker,
    now: datetime | None = None,
    *,
    mlflow_uri: str | None = None,
    profile: str = "cpu",
    allowed_roots: list[Path] | None = None,
) -> list[str]:
    """Fire every schedule whose cron has ticked since it last fired; returns the ids of the sweeps created. A
    schedule that fails (its template no longer plans, say) is logged and skipped: the others still fire."""
    now = now or datetime.now(UTC)
    created = []
    for schedule in list_schedules(db)[0]:
        try:
            sweep_id = _fire(db, schedule, now, mlflow_uri=mlflow_uri, profile=profile, allowed_roots=allowed_roots)
        except Exception:  # noqa: BLE001 - one schedule's failure must not stop the others
            log.exception("schedule %s (%s) failed to fire", schedule.id, schedule.name)
            continue
        if sweep_id:
            created.append(sweep_id)
    return created


def _fire(db: sessionmaker, schedule: Schedule, now: datetime, **plan_options: object) -> str | None:
    since = _utc(schedule.last_fired_at or schedule.created_at)
    due = croniter(schedule.cron, now).get_prev(datetime)  # the latest tick at or before now
    if due <= since:
        return None
    request = SweepRequest.model_validate(schedule.template)
    sweep, _ = create_sweep(db, request, idempotency_key=f"schedule:{schedule.id}:{due.isoformat()}", **plan_options)
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
            return sweep.id
    return None

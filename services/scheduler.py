"""Scheduled sweeps: a cron expression and a sweep template; each tick of the cron creates one sweep, linked to the
previous one, exactly once, across restarts and concurrent control planes.

A tick's sweep carries the Idempotency-Key `schedule:<id>:<revision>:<tick time>`, so a tick repeated after a crash
(between creating the sweep and recording the tick) returns the sweep it already made. The tick is recorded only if
the schedule is as the tick read it (no edit, pause or other tick since); else its new sweep is cancelled. Ticks
missed while the control plane was down collapse into the latest one: a schedule catches up once, not once per
missed tick.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from croniter import CroniterBadDateError, croniter
from pydantic import Field, ValidationError, field_validator
from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from cluster.capacity import Capacity
from services.errors import Conflict, InvalidRequest, NotFound
from services.planner import SweepRequest, plan
from services.store import Schedule, Sweep, changing, new_id
from services.sweeps import cancel_sweep, create_sweep, decode_time_cursor, encode_cursor
from trainers.spec import Strict, error_path

log = logging.getLogger("myopia.scheduler")
SCHEDULER_KEYS = "schedule:"  # the Idempotency-Keys of ticks and run-now sweeps; refused from clients


CRON_MAX_CHARS = 100  # the column's width; five fields of lists fit easily


def _firing_cron(v: str) -> str:
    """Five fields, parsable, and firing: its next and previous ticks exist (`0 0 30 2 *` parses but never fires).
    (croniter also takes a sixth field of seconds and a seventh of years: a seconds field would fire every tick.)"""
    if len(v) > CRON_MAX_CHARS:
        raise ValueError(f"a cron expression has at most {CRON_MAX_CHARS} characters, not {len(v):,}")
    if len(v.split()) != 5:
        raise ValueError(f"a cron expression has five fields (minute hour day month weekday), not {len(v.split())}")
    if not croniter.is_valid(v):
        raise ValueError(f"not a valid cron expression: {v!r}")
    try:
        now = datetime.now(UTC)
        croniter(v, now).get_next(datetime), croniter(v, now).get_prev(datetime)
    except (CroniterBadDateError, ValueError) as e:
        raise ValueError(f"cron expression {v!r} never fires: {e}") from None
    return v


CRON_HELP = "five-field cron expression, UTC, e.g. '0 3 * * 1'"


class ScheduleRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(description=CRON_HELP, max_length=CRON_MAX_CHARS)
    template: SweepRequest

    _cron = field_validator("cron")(_firing_cron)


class ScheduleEdit(Strict):
    """What `PATCH /v1/schedules/{id}` may change; fields left out stay as they are."""

    name: str | None = Field(None, min_length=1, max_length=200)
    cron: str | None = Field(
        None, description=CRON_HELP + "; it fires from its next tick, never for past ones", max_length=CRON_MAX_CHARS
    )
    template: SweepRequest | None = None
    paused: bool | None = Field(None, description="true: kept, not firing; false: fires again from its next tick")

    _cron = field_validator("cron")(lambda v: v if v is None else _firing_cron(v))


def add_schedule(
    db: sessionmaker,
    request: ScheduleRequest,
    profile: str = "cpu",
    allowed_roots: list[Path] | None = None,
    max_schedules: int = 100,
    capacity: Capacity | None = None,
) -> Schedule:
    """Store a schedule whose template plans (a template that cannot is refused now, not at its first tick), while
    fewer than `max_schedules` are live (each can fire a sweep a minute: an unbounded number floods the queue)."""
    _check_plans(request.template, profile, allowed_roots, capacity)
    with db.begin() as s:
        if s.get_bind().dialect.name == "postgresql":  # concurrent creations count one after another
            s.execute(text("LOCK TABLE schedules IN SHARE ROW EXCLUSIVE MODE"))
        template = request.template.model_dump(mode="json", exclude_none=True)
        schedule = Schedule(
            id=new_id("sch"), name=request.name, cron=request.cron, template=template, created_at=datetime.now(UTC)
        )
        s.add(schedule)
        s.flush()  # counted after the insert, under the write lock (SQLite's writer, PostgreSQL's table lock)
        live = s.scalar(select(func.count()).select_from(Schedule).where(Schedule.enabled)) or 0
        if live > max_schedules:  # (the exception rolls the insert back)
            raise Conflict(f"there are {live - 1} schedules, the most this control plane keeps "
                           "(MYOPIA_MAX_SCHEDULES): delete one first")  # fmt: skip
    return schedule


def _check_plans(
    template: SweepRequest, profile: str, allowed_roots: list[Path] | None, capacity: Capacity | None = None
) -> None:
    try:
        plan(template, profile=profile, allowed_roots=allowed_roots, capacity=capacity)
    except InvalidRequest as e:
        raise InvalidRequest([(f"template.{field}", msg) for field, msg in e.errors]) from None


def edit_schedule(
    db: sessionmaker,
    schedule_id: str,
    edit: ScheduleEdit,
    profile: str = "cpu",
    allowed_roots: list[Path] | None = None,
    now: datetime | None = None,
    capacity: Capacity | None = None,
) -> Schedule:
    """Rename, re-time, re-template, pause or resume a schedule. A new cron or a resumed schedule fires from its
    next tick: the ticks it missed (or that the new cron would have had) are skipped, not caught up."""
    if edit.template is not None:
        _check_plans(edit.template, profile, allowed_roots, capacity)
    # a compare-and-set on the revision read: of two concurrent edits, the second is decided again on the first's
    return changing(db, lambda s: _edit(s, schedule_id, edit, now))


def _edit(s: Session, schedule_id: str, edit: ScheduleEdit, now: datetime | None) -> Schedule:
    schedule = _live(s, schedule_id)
    if edit.name is not None:
        schedule.name = edit.name
    if edit.template is not None:
        schedule.template = edit.template.model_dump(mode="json", exclude_none=True)
    restart = (edit.cron is not None and edit.cron != schedule.cron) or (edit.paused is False and schedule.paused)
    if edit.cron is not None:
        schedule.cron = edit.cron
    if edit.paused is not None:
        schedule.paused = edit.paused
    if restart:
        latest_tick = croniter(schedule.cron, now or datetime.now(UTC)).get_prev(datetime)
        schedule.last_fired_at = max(_utc(schedule.last_fired_at or schedule.created_at), latest_tick)
    # (the revision is bumped by the update itself: a tick in flight that read the older one records nothing)
    return schedule


def run_now(db: sessionmaker, schedule_id: str, **plan_options: object) -> Sweep:
    """One sweep of the schedule's template now, linked after its last sweep like a tick's; the cron's own ticks go
    on as before (a paused schedule can be run now, too)."""
    with db() as s:
        schedule = _live(s, schedule_id)
    request = _template(schedule)
    sweep, _ = create_sweep(
        db, request, idempotency_key=f"{SCHEDULER_KEYS}{schedule.id}:now:{new_id('t')}", **plan_options
    )
    for _ in range(5):  # a tick that links its sweep first moves the chain on: link after whatever is latest now
        if _link(db, schedule, sweep.id, compare=(Schedule.last_sweep_id,)):
            break
        with db() as s:
            schedule = _live(s, schedule_id)
    return sweep


def _template(schedule: Schedule) -> SweepRequest:
    """The stored template as a request, or a 422 naming its fields (a template stored by an older version that this
    one's rules refuse: edit it with PATCH)."""
    try:
        return SweepRequest.model_validate(schedule.template)
    except ValidationError as e:
        fields = [
            (f"template.{error_path(err)}", f"{err['msg']} (stored template; PATCH a new one)") for err in e.errors()
        ]
        raise InvalidRequest(fields) from None


def _live(s: Session, schedule_id: str) -> Schedule:
    schedule = s.get(Schedule, schedule_id)
    if schedule is None or not schedule.enabled:
        raise NotFound(f"no schedule {schedule_id!r}")
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
    """Disable it (its sweeps keep their link): a compare-and-set, so of concurrent deletes one succeeds."""
    with db.begin() as s:
        gone = s.execute(update(Schedule).where(Schedule.id == schedule_id, Schedule.enabled).values(enabled=False))
        if not gone.rowcount:
            raise NotFound(f"no schedule {schedule_id!r}")


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
        if schedule.paused:
            continue
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
    request = _template(schedule)
    key = (
        f"{SCHEDULER_KEYS}{schedule.id}:{schedule.revision}:{due.isoformat()}"  # an edited template is another request
    )
    sweep, created = create_sweep(db, request, idempotency_key=key, **plan_options)
    if _link(db, schedule, sweep.id, fired_at=due):
        return sweep.id
    if created:  # an edit, a pause or another control plane got there first: this tick's sweep is not wanted
        cancel_sweep(db, sweep.id)
    return None


TICK_COMPARES = (Schedule.last_sweep_id, Schedule.last_fired_at, Schedule.revision, Schedule.paused, Schedule.enabled)


def _link(
    db: sessionmaker,
    schedule: Schedule,
    sweep_id: str,
    fired_at: datetime | None = None,
    compare: tuple = TICK_COMPARES,
) -> bool:
    """Record the sweep as the schedule's latest (and the tick, if it is one) only if the schedule is still as it
    was read (`compare`'s columns: no tick recorded, no edit, no pause since); link it to its previous sweep."""
    with db.begin() as s:
        values = {"last_sweep_id": sweep_id, **({"last_fired_at": fired_at} if fired_at else {})}
        unchanged = [column.is_not_distinct_from(getattr(schedule, column.key)) for column in compare]
        won = s.execute(update(Schedule).where(Schedule.id == schedule.id, *unchanged).values(**values)).rowcount
        if won:
            s.execute(
                update(Sweep)
                .where(Sweep.id == sweep_id)
                .values(schedule_id=schedule.id, previous_sweep_id=schedule.last_sweep_id)
            )
    return bool(won)

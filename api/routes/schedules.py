"""/v1/schedules: sweeps rerun on a cron schedule (create, list a page, edit, pause and resume, run now, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api.body import body_schema, json_body
from api.deps import BackgroundDep, CapacityDep, Db, SettingsDep
from api.schemas import ErrorOut, ScheduleOut, SchedulePage, SweepOut
from services import scheduler

router = APIRouter(prefix="/schedules", tags=["schedules"], responses={404: {"model": ErrorOut}})


@router.post(
    "",
    status_code=201,
    response_model=ScheduleOut,
    responses={409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    openapi_extra=body_schema(scheduler.ScheduleRequest),
)
def add_schedule(body: json_body(scheduler.ScheduleRequest), db: Db, settings: SettingsDep, capacity: CapacityDep):
    """The cron must fire (its next and previous ticks exist) and the template must plan, or nothing is stored;
    beyond `MYOPIA_MAX_SCHEDULES` live schedules, a 409."""
    made = scheduler.add_schedule(
        db, body, settings.resource_profile, settings.data_roots, settings.max_schedules, capacity=capacity
    )
    return ScheduleOut.model_validate(made, from_attributes=True)


@router.get("", response_model=SchedulePage)
def list_schedules(
    db: Db,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
):
    page, next_cursor = scheduler.list_schedules(db, limit, cursor)
    return SchedulePage(
        items=[ScheduleOut.model_validate(x, from_attributes=True) for x in page], next_cursor=next_cursor
    )


ScheduleId = Annotated[str, Path(max_length=80)]


@router.patch(
    "/{schedule_id}",
    response_model=ScheduleOut,
    responses={422: {"model": ErrorOut}},
    openapi_extra=body_schema(scheduler.ScheduleEdit),
)
def edit_schedule(
    schedule_id: ScheduleId,
    body: json_body(scheduler.ScheduleEdit),
    db: Db,
    settings: SettingsDep,
    capacity: CapacityDep,
):
    """Change its name, cron or template, or pause (`"paused": true`) and resume it. A new cron or a resumed
    schedule fires from its next tick; missed ticks are skipped. A template that does not plan changes nothing."""
    made = scheduler.edit_schedule(
        db, schedule_id, body, settings.resource_profile, settings.data_roots, capacity=capacity
    )
    return ScheduleOut.model_validate(made, from_attributes=True)


@router.post("/{schedule_id}/run", status_code=201, response_model=SweepOut, responses={422: {"model": ErrorOut}})
def run_schedule_now(
    schedule_id: ScheduleId, db: Db, settings: SettingsDep, background: BackgroundDep, capacity: CapacityDep
):
    """One sweep of its template now (paused or not), linked after its last sweep; the cron goes on as before."""
    sweep = scheduler.run_now(
        db, schedule_id, mlflow_uri=settings.mlflow, profile=settings.resource_profile,
        allowed_roots=settings.data_roots, capacity=capacity,
    )  # fmt: skip
    if background is not None:
        background.wake("reconciler")
    return SweepOut.of(sweep)


@router.delete("/{schedule_id}", status_code=204)
def delete_schedule(schedule_id: ScheduleId, db: Db) -> Response:
    scheduler.delete_schedule(db, schedule_id)
    return Response(status_code=204)

"""/v1/schedules: sweeps rerun on a cron schedule (create, list a page, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api.deps import Db, SettingsDep
from api.schemas import ErrorOut, ScheduleOut, SchedulePage
from services import scheduler

router = APIRouter(prefix="/schedules", tags=["schedules"], responses={404: {"model": ErrorOut}})


@router.post("", status_code=201, response_model=ScheduleOut, responses={422: {"model": ErrorOut}})
def add_schedule(body: scheduler.ScheduleRequest, db: Db, settings: SettingsDep):
    """The cron must fire (its next and previous ticks exist) and the template must plan, or nothing is stored."""
    made = scheduler.add_schedule(db, body, settings.resource_profile, settings.data_roots)
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


@router.delete("/{schedule_id}", status_code=204)
def delete_schedule(schedule_id: Annotated[str, Path(max_length=80)], db: Db) -> Response:
    scheduler.delete_schedule(db, schedule_id)
    return Response(status_code=204)

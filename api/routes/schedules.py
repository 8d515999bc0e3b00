"""/v1/schedules: sweeps rerun on a cron schedule (create, list, delete)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import Db, SettingsDep
from api.schemas import ErrorOut, ScheduleOut
from services import scheduler

router = APIRouter(prefix="/schedules", tags=["schedules"], responses={404: {"model": ErrorOut}})


@router.post("", status_code=201, response_model=ScheduleOut, responses={422: {"model": ErrorOut}})
def add_schedule(body: scheduler.ScheduleRequest, db: Db, settings: SettingsDep):
    return ScheduleOut.model_validate(scheduler.add_schedule(db, body, settings.resource_profile), from_attributes=True)


@router.get("", response_model=list[ScheduleOut])
def list_schedules(db: Db):
    return [ScheduleOut.model_validate(x, from_attributes=True) for x in scheduler.list_schedules(db)]


@router.delete("/{schedule_id}", status_code=204)
def delete_schedule(schedule_id: str, db: Db) -> Response:
    scheduler.delete_schedule(db, schedule_id)
    return Response(status_code=204)

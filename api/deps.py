"""What route handlers get through `Depends`: the settings, the database, the Ray job server. (The bearer token is
checked before a request's body is read: api/guard.py.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import sessionmaker

from cluster.jobs import Jobs
from services.background import Background
from services.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> sessionmaker:
    return request.app.state.db


def get_jobs(request: Request) -> Jobs | None:
    return request.app.state.jobs


def get_background(request: Request) -> Background | None:
    return getattr(request.app.state, "background", None)


SettingsDep = Annotated[Settings, Depends(get_settings)]
Db = Annotated[sessionmaker, Depends(get_db)]
JobsDep = Annotated[Jobs | None, Depends(get_jobs)]
BackgroundDep = Annotated[Background | None, Depends(get_background)]

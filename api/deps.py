"""What route handlers get through `Depends`: the settings, the database, the Ray job server, the caller's auth."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import sessionmaker

from cluster.jobs import Jobs
from services.settings import Settings


class Unauthorized(Exception):
    """No or a wrong bearer token where the API requires one."""


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> sessionmaker:
    return request.app.state.db


def get_jobs(request: Request) -> Jobs | None:
    return request.app.state.jobs


def authorized(
    settings: Annotated[Settings, Depends(get_settings)], authorization: Annotated[str | None, Header()] = None
) -> None:
    """Bearer-token auth when `MYOPIA_API_TOKEN` is set."""
    if settings.api_token is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), settings.api_token.encode()):
        raise Unauthorized


SettingsDep = Annotated[Settings, Depends(get_settings)]
Db = Annotated[sessionmaker, Depends(get_db)]
JobsDep = Annotated[Jobs | None, Depends(get_jobs)]

"""What route handlers get through `Depends`: the settings, the database, the Ray job server. (The bearer token is
checked before a request's body is read: api/guard.py.)"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import sessionmaker

from cluster.capacity import Capacity
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


CAPACITY_TTL_S = 30.0


def get_capacity(request: Request) -> Capacity | None:
    """What the cluster can ever offer one run (None: not known, nothing refused for it): a remote cluster's
    profile limits, or the embedded head's nodes, asked at most every 30 s."""
    settings, jobs = get_settings(request), get_jobs(request)
    if jobs is None:
        return None
    if jobs.remote:
        return Capacity.of_profile(settings.resource_profile)
    state = request.app.state
    at, known = getattr(state, "capacity", (float("-inf"), None))
    if time.monotonic() - at > CAPACITY_TTL_S:  # (an answer of none is kept as long: a hung head is asked rarely)
        try:
            known = Capacity.of_nodes(jobs.nodes(), "the embedded Ray head's nodes")
        except Exception:  # noqa: BLE001 - a head that does not answer refuses nothing: its runs wait in the queue
            known = None
        state.capacity = (time.monotonic(), known)
    return known if known and known.nodes else None  # (a head still registering its node knows nothing yet)


SettingsDep = Annotated[Settings, Depends(get_settings)]
CapacityDep = Annotated[Capacity | None, Depends(get_capacity)]
Db = Annotated[sessionmaker, Depends(get_db)]
JobsDep = Annotated[Jobs | None, Depends(get_jobs)]
BackgroundDep = Annotated[Background | None, Depends(get_background)]

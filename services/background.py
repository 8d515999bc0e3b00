"""The control plane's background work as named components, each on its own period (APScheduler): the reconciler
(jobs ↔ store), the MLflow reporter (finished pairs and sweeps), the scheduler (cron ticks). A component's run
never overlaps itself; one that fails is logged by APScheduler and runs again at its next period."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import sessionmaker

from cluster.jobs import Jobs
from cluster.local import EmbeddedHead
from services import retention, scheduler, sweep_tracking
from services.reconciler import Reconciler
from services.settings import Settings
from services.store import at_head

log = logging.getLogger("myopia.background")


@dataclass(frozen=True)
class Component:
    name: str
    period_s: float
    tick: Callable[[], object]


class Background:
    def __init__(self, components: list[Component]) -> None:
        self.components = components
        self._scheduler = BackgroundScheduler(timezone=UTC)
        for c in components:
            self._scheduler.add_job(
                c.tick,
                "interval",
                seconds=c.period_s,
                id=c.name,
                name=c.name,
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),
            )

    def start(self) -> None:
        self._scheduler.start()

    def wake(self, name: str) -> None:
        """Run a component now rather than at its next period (a new sweep's runs start without waiting out a tick);
        it still never overlaps itself."""
        job = self._scheduler.get_job(name)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def stop(self) -> None:
        self._scheduler.shutdown(wait=True)


def control_plane(
    db: sessionmaker, settings: Settings, jobs: Jobs | None, head: EmbeddedHead | None = None
) -> Background:
    """What `myopia serve` runs beside the API: schedules always; with a Ray job server, the runs and reporting;
    with an embedded head, its supervisor."""
    roots = settings.data_roots
    components = [
        Component(
            "scheduler",
            30.0,
            lambda: scheduler.tick(
                db, mlflow_uri=settings.mlflow, profile=settings.resource_profile, allowed_roots=roots
            ),
        ),
    ]
    if jobs is not None:
        job_env = settings.job_env()
        reconciler = Reconciler(
            db,
            jobs,
            Path(job_env["MYOPIA_DATA_DIR"]),  # progress files are read there, where this machine shares it
            max_concurrent=settings.max_concurrent_runs,
            max_attempts=settings.max_attempts,
            backoff_s=settings.retry_backoff_s,
            stall_timeout_s=settings.stall_timeout_s,
            job_env=job_env,
        )
        components += [
            Component("reconciler", 1.0, reconciler.tick),  # a tick costs milliseconds (docs/reliability.md)
            Component("mlflow-reporter", 5.0, lambda: sweep_tracking.report(db)),
        ]
    if settings.retention_days:
        days, env = settings.retention_days, settings.job_env()
        components.append(Component("retention", 3600.0, lambda: retention.prune(db, days, env)))
    if not settings.migrate_on_start:  # nothing touches a store of another schema until `myopia db upgrade`
        components = [gated(c, lambda: at_head(db)) for c in components]
    if head is not None:
        components.append(Component("ray-head", 5.0, lambda: supervise(head)))
    return Background(components)


def gated(component: Component, ready: Callable[[], bool]) -> Component:
    """The component, ticking only once `ready()` has said yes (and from then on)."""
    opened = False

    def tick() -> object:
        nonlocal opened
        opened = opened or ready()
        return component.tick() if opened else None

    return Component(component.name, component.period_s, tick)


def supervise(head: EmbeddedHead) -> None:
    """Restart the embedded head when it stops answering (its jobs are lost: the reconciler resubmits them)."""
    if head.answers():
        return
    log.error("the embedded Ray head does not answer: restarting it (restart %d)", head.restarts + 1)
    head.restart()
    log.warning("the embedded Ray head is back at %s", head.jobs_address)

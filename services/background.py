"""The control plane's background work as named components, each on its own period (APScheduler): the reconciler
(jobs ↔ store), the MLflow reporter (finished pairs and sweeps), the scheduler (cron ticks). A component's run
never overlaps itself; one that fails is logged by APScheduler and runs again at its next period."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import sessionmaker

from cluster.jobs import Jobs
from services import scheduler, sweep_tracking
from services.reconciler import Reconciler
from services.settings import Settings


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

    def stop(self) -> None:
        self._scheduler.shutdown(wait=True)


def control_plane(db: sessionmaker, settings: Settings, jobs: Jobs | None) -> Background:
    """What `myopia serve` runs beside the API: schedules always; with a Ray job server, the runs and reporting."""
    components = [
        Component(
            "scheduler", 30.0, lambda: scheduler.tick(db, mlflow_uri=settings.mlflow, profile=settings.resource_profile)
        ),
    ]
    if jobs is not None:
        data_dir = settings.data_dir.expanduser()
        reconciler = Reconciler(
            db,
            jobs,
            data_dir,
            max_concurrent=settings.max_concurrent_runs,
            max_attempts=settings.max_attempts,
            job_env={"MYOPIA_DATA_DIR": str(data_dir)},
        )
        components += [
            Component("reconciler", 2.0, reconciler.tick),
            Component("mlflow-reporter", 5.0, lambda: sweep_tracking.report(db)),
        ]
    return Background(components)

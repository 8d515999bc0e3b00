"""Sweeps in the store: create (planned pairs and queued runs in one transaction), read, cancel."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from services.errors import Conflict, NotFound
from services.planner import SweepRequest, plan
from services.store import TERMINAL, Pair, Run, RunStatus, Sweep, new_id
from trainers.spec import TrackingSpec


def create_sweep(
    db: sessionmaker,
    request: SweepRequest,
    *,
    idempotency_key: str | None = None,
    profile: str = "cpu",
    mlflow_uri: str | None = None,
) -> tuple[Sweep, bool]:
    """(sweep, created). A key seen before returns the sweep it created, whatever the request now says."""
    if idempotency_key:
        existing = _by_key(db, idempotency_key)
        if existing:
            return existing, False
    sweep_id = new_id("sw")
    planned = plan(request, profile=profile)  # refuses bad templates (naming the field) and unmatched pairs
    try:
        with db.begin() as s:
            sweep = Sweep(
                id=sweep_id,
                name=request.name,
                request=request.model_dump(mode="json", exclude_none=True),
                idempotency_key=idempotency_key,
            )
            s.add(sweep)
            for p in planned:
                pair = Pair(
                    id=new_id("pr"),
                    sweep=sweep,
                    size=p.size,
                    seed=p.seed,
                    pair_hash=next(iter(p.runs.values())).pair_hash(),
                )
                for arm, spec in p.runs.items():
                    tracking = TrackingSpec(
                        mlflow_uri=mlflow_uri,
                        experiment=f"myopia/{request.name}",
                        tags={"sweep": sweep_id, "pair": pair.id},
                    )
                    name = f"{sweep_id}-{p.size}-s{p.seed}-{arm}"
                    spec = spec.model_copy(update={"name": name, "tracking": tracking})
                    run = Run(
                        id=name,
                        sweep=sweep,
                        pair=pair,
                        arm=arm,
                        spec=spec.model_dump(mode="json"),
                        config_hash=spec.config_hash(),
                    )
                    run.set_status(RunStatus.QUEUED, "planned")
                    s.add(run)  # (SQLAlchemy 2 does not cascade through the backref assignment above)
    except IntegrityError:
        if idempotency_key and (existing := _by_key(db, idempotency_key)):  # the same key, concurrently
            return existing, False
        raise
    return get_sweep(db, sweep_id), True


def _by_key(db: sessionmaker, key: str) -> Sweep | None:
    with db() as s:
        sweep = s.scalars(select(Sweep).where(Sweep.idempotency_key == key)).one_or_none()
        return get_sweep(db, sweep.id) if sweep else None


def _loaded(s: Session):
    return select(Sweep).options(selectinload(Sweep.runs).selectinload(Run.events), selectinload(Sweep.pairs))


def _require(s: Session, model: type[Sweep] | type[Run], key: str):
    obj = s.get(model, key)
    if obj is None:
        raise NotFound(f"no {model.__tablename__[:-1]} {key!r}")
    return obj


def get_sweep(db: sessionmaker, sweep_id: str) -> Sweep:
    with db() as s:
        sweep = s.scalars(_loaded(s).where(Sweep.id == sweep_id)).one_or_none()
        if sweep is None:
            raise NotFound(f"no sweep {sweep_id!r}")
        return sweep


def list_sweeps(db: sessionmaker, limit: int = 100) -> list[Sweep]:
    with db() as s:
        return list(s.scalars(_loaded(s).order_by(Sweep.created_at.desc()).limit(limit)))


def get_run(db: sessionmaker, run_id: str) -> Run:
    with db() as s:
        run = s.scalars(select(Run).options(selectinload(Run.events)).where(Run.id == run_id)).one_or_none()
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run


def cancel_sweep(db: sessionmaker, sweep_id: str) -> Sweep:
    """Mark the sweep and its unfinished runs cancelled; the reconciler stops their jobs."""
    with db.begin() as s:
        sweep = _require(s, Sweep, sweep_id)
        for run in sweep.runs:
            if run.status not in TERMINAL:
                run.set_status(RunStatus.CANCELLED, "sweep cancelled")
        sweep.status = RunStatus.CANCELLED
    return get_sweep(db, sweep_id)


def cancel_run(db: sessionmaker, run_id: str) -> Run:
    """Mark one run cancelled; the reconciler stops its job."""
    with db.begin() as s:
        run = _require(s, Run, run_id)
        if run.status not in TERMINAL:
            run.set_status(RunStatus.CANCELLED, "run cancelled")
    return get_run(db, run_id)


def retry_run(db: sessionmaker, run_id: str) -> Run:
    """A failed or cancelled run goes back to the queue as a new attempt (it resumes from its checkpoint)."""
    with db.begin() as s:
        run = _require(s, Run, run_id)
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise Conflict(f"run {run_id} is {run.status}; only a failed or cancelled run can be retried")
        run.attempt += 1
        run.set_status(RunStatus.QUEUED, "retry requested")
        if run.sweep.status in TERMINAL:
            run.sweep.status = RunStatus.RUNNING
    return get_run(db, run_id)

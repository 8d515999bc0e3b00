"""Sweeps in the store: create (planned pairs and queued runs in one transaction), read, cancel, delete."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import DateTime, and_, case, delete, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from cluster.capacity import Capacity
from services.errors import Conflict, InvalidRequest, NotFound
from services.planner import SweepRequest, plan
from services.store import (
    TERMINAL,
    Pair,
    Run,
    RunEvent,
    RunStatus,
    Schedule,
    Sweep,
    changing,
    derive_sweep_status,
    new_id,
    now,
)
from trainers.spec import TrackingSpec


def request_hash(request: SweepRequest) -> str:
    """Of the validated request (the preset filled in): the same sweep asked twice hashes the same."""
    doc = request.model_dump(mode="json", exclude_none=True)
    if not doc.get("unpaired"):  # (added later, default off: a request hashes as it did before the field existed)
        doc.pop("unpaired", None)
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def create_sweep(
    db: sessionmaker,
    request: SweepRequest,
    *,
    idempotency_key: str | None = None,
    profile: str = "cpu",
    mlflow_uri: str | None = None,
    allowed_roots: list[Path] | None = None,
    capacity: Capacity | None = None,
) -> tuple[Sweep, bool]:
    """(sweep, created). A key seen before returns the sweep it created for the same request; for another request
    it is a Conflict. An empty key is no key."""
    key = idempotency_key or None
    digest = request_hash(request)
    if key and (existing := _by_key(db, key, digest)):
        return existing, False
    sweep_id = new_id("sw")
    # refuses bad templates (naming the field), paths outside the allowed roots and unmatched pairs
    planned = plan(request, profile=profile, allowed_roots=allowed_roots, capacity=capacity)
    try:
        with db.begin() as s:
            sweep = Sweep(
                id=sweep_id,
                name=request.name,
                request=request.model_dump(mode="json", exclude_none=True),
                idempotency_key=key,
                request_hash=digest,
            )
            s.add(sweep)
            for p in planned:
                label = next(iter(p.runs.values())).label  # the size, or the shape where overrides change it
                pair = Pair(
                    id=new_id("pr"),
                    sweep=sweep,
                    size=label,
                    seed=p.seed,
                    pair_hash=next(iter(p.runs.values())).pair_hash(),
                )
                for arm, spec in p.runs.items():
                    tracking = TrackingSpec(
                        mlflow_uri=mlflow_uri,
                        experiment=f"myopia/{request.name}",
                        tags={"sweep": sweep_id, "pair": pair.id},
                    )
                    name = f"{sweep_id}-{label}-s{p.seed}-{arm}"
                    if arm == "local":  # its past: the pair's vanilla model, once trained (the reconciler waits)
                        spec = spec.arm("local", past_from=f"{sweep_id}-{label}-s{p.seed}-vanilla")
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
        if key and (existing := _by_key(db, key, digest)):  # the same key, concurrently
            return existing, False
        raise
    return get_sweep(db, sweep_id), True


def _by_key(db: sessionmaker, key: str, digest: str) -> Sweep | None:
    with db() as s:
        found = s.execute(select(Sweep.id, Sweep.request_hash).where(Sweep.idempotency_key == key)).one_or_none()
    if found is None:
        return None
    if found.request_hash != digest:
        raise Conflict(f"Idempotency-Key {key!r} was used for another request (sweep {found.id})")
    return get_sweep(db, found.id)


def _loaded(s: Session):
    return select(Sweep).options(selectinload(Sweep.runs), selectinload(Sweep.pairs))


def encode_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps([str(p) for p in parts]).encode()).decode()


def decode_cursor(cursor: str, n: int) -> list[str]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        assert isinstance(parts, list) and len(parts) == n and all(isinstance(p, str) for p in parts)
        return parts
    except (ValueError, AssertionError, TypeError):
        raise InvalidRequest([("query.cursor", "not a cursor this API returned")]) from None


def decode_time_cursor(cursor: str) -> tuple[datetime, str]:
    """A (created_at, id) cursor; whatever else was sent is the client's error, named."""
    at, key = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(at), key
    except ValueError:
        raise InvalidRequest([("query.cursor", "not a cursor this API returned")]) from None


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


def list_sweeps(db: sessionmaker, limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
    """A page of sweeps, newest first, with their runs counted by status (not listed); the cursor of the next."""
    with db() as s:
        query = select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)
        if cursor:
            when, sweep_id = decode_time_cursor(cursor)
            query = query.where(or_(Sweep.created_at < when, and_(Sweep.created_at == when, Sweep.id < sweep_id)))
        page = list(s.scalars(query))
        more, page = len(page) > limit, page[:limit]
        counts: dict[str, dict[str, int]] = {sw.id: {} for sw in page}
        rows = s.execute(
            select(Run.sweep_id, Run.status, func.count())
            .where(Run.sweep_id.in_(list(counts)))
            .group_by(Run.sweep_id, Run.status)
        )
        for sweep_id, status, n in rows:
            counts[sweep_id][status] = n
        items = [{"sweep": sw, "runs_by_status": counts[sw.id]} for sw in page]
    return items, (encode_cursor(page[-1].created_at.isoformat(), page[-1].id) if more else None)


def list_runs(
    db: sessionmaker, sweep_id: str, limit: int = 100, cursor: str | None = None
) -> tuple[list[Run], str | None]:
    """A page of a sweep's runs in id order; the cursor of the next."""
    with db() as s:
        _require(s, Sweep, sweep_id)
        query = select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id).limit(limit + 1)
        if cursor:
            query = query.where(Run.id > decode_cursor(cursor, 1)[0])
        page = list(s.scalars(query))
    return page[:limit], (encode_cursor(page[limit - 1].id) if len(page) > limit else None)


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
        open_runs = (Run.sweep_id == sweep_id) & Run.status.not_in(TERMINAL)
        # in bulk: a sweep of many runs cancels in one statement, with one history row per run
        s.execute(
            insert(RunEvent).from_select(
                ["run_id", "attempt", "status", "message", "at"],
                select(Run.id, Run.attempt, literal(RunStatus.CANCELLED.value), literal("sweep cancelled"),
                       literal(now(), DateTime(timezone=True))).where(open_runs),
            )
        )  # fmt: skip
        # the version bump makes a change the reconciler decided before this cancel fail (it never overwrites it)
        cancelled = {"status": RunStatus.CANCELLED, "version": Run.version + 1}
        s.execute(update(Run).where(open_runs).values(**cancelled).execution_options(synchronize_session=False))
        # a compare-and-set: a sweep that ended before this (its runs all succeeded, say) keeps its status
        open_ = Sweep.status.in_([str(RunStatus.QUEUED), str(RunStatus.RUNNING)])
        s.execute(update(Sweep).where(Sweep.id == sweep.id, open_).values(status=RunStatus.CANCELLED))
    return get_sweep(db, sweep_id)


def cancel_run(db: sessionmaker, run_id: str) -> Run:
    """Mark one run cancelled (a compare-and-set on the run as read: a concurrent change makes it decide again);
    the reconciler stops its job."""

    def cancel(s: Session) -> None:
        run = _require(s, Run, run_id)
        if run.status not in TERMINAL:
            run.set_status(RunStatus.CANCELLED, "run cancelled")
            s.flush()
            derive_sweep_status(s, run.sweep_id)  # its last open run: the sweep ends now, not at a later tick

    changing(db, cancel)
    return get_run(db, run_id)


def _requeue(run: Run, why: str) -> None:
    """Back to the queue as a new attempt, with a fresh failure count and no backoff."""
    run.attempt += 1
    run.failures, run.not_before = 0, None
    run.set_status(RunStatus.QUEUED, why)


def retry_run(db: sessionmaker, run_id: str) -> Run:
    """A failed or cancelled run goes back to the queue as a new attempt (it resumes from its checkpoint). A
    compare-and-set on the run as read: of concurrent retries one wins and the others find it queued (409)."""
    changing(db, lambda s: _retry(s, run_id))
    return get_run(db, run_id)


def _retry(s: Session, run_id: str) -> None:
    run = _require(s, Run, run_id)
    if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise Conflict(f"run {run_id} is {run.status}; only a failed or cancelled run can be retried")
    if run.job_live:
        raise Conflict(f"run {run_id}'s job is still being stopped; retry it in a few seconds")
    _requeue(run, "retry requested")
    if run.arm == "vanilla":  # a local arm failed for want of this partner waits for it again
        for local in (r for r in run.pair.runs if r.arm == "local" and r.status == RunStatus.FAILED):
            if "vanilla partner" in (local.error or ""):
                _requeue(local, f"its vanilla partner {run.id} is retried")
    # the sweep runs again, decided on the row as it is when this commits (a cancel of the sweep that lands
    # between this read and this write still ends with the retried run's sweep running, never cancelled over it)
    # (an UPDATE of the row whatever its status: it takes the row's lock, so a concurrent derivation of the sweep's
    # status waits for this retry or is waited for, and never ends the sweep over the queued run)
    ended = Sweep.status.in_([str(t) for t in TERMINAL])
    running = case((ended, str(RunStatus.RUNNING)), else_=Sweep.status)
    s.execute(update(Sweep).where(Sweep.id == run.sweep_id).values(status=running))


@dataclass
class Deleted:
    """What a deleted sweep leaves outside the store, for services.retention to remove: its MLflow runs (the
    sweep's, its pairs', its runs') and its runs' checkpoint names under their Ray Train storage."""

    sweep_id: str
    mlflow_uri: str | None = None
    mlflow_runs: list[str] = field(default_factory=list)
    checkpoints: list[tuple[str | None, str]] = field(default_factory=list)  # (spec storage_path, run name)


def delete_sweep(db: sessionmaker, sweep_id: str) -> Deleted:
    """Remove an ended sweep from the store (its runs, pairs and histories); a sweep with a run still open or a job
    still being stopped is a Conflict: cancel it first. Later sweeps of its schedule lose their link to it."""
    with db.begin() as s:
        s.execute(select(Run.id).where(Run.sweep_id == sweep_id).with_for_update())  # a retry racing this waits
        sweep = s.scalars(_loaded(s).where(Sweep.id == sweep_id).with_for_update()).one_or_none()
        if sweep is None:
            raise NotFound(f"no sweep {sweep_id!r}")
        busy = [r.id for r in sweep.runs if r.status not in TERMINAL or r.job_live]
        if busy:
            raise Conflict(f"sweep {sweep_id} has {len(busy)} run(s) not ended (e.g. {busy[0]}); cancel it first")
        gone = Deleted(sweep_id)
        for run in sweep.runs:
            gone.mlflow_uri = gone.mlflow_uri or run.spec.get("tracking", {}).get("mlflow_uri")
            if (run.result or {}).get("mlflow_run_id"):
                gone.mlflow_runs.append(run.result["mlflow_run_id"])
            if run.submission_id:  # a run that never reached a job has no checkpoints
                gone.checkpoints.append((run.spec.get("storage_path"), run.spec.get("name") or run.id))
        gone.mlflow_runs += [x.mlflow_run_id for x in (sweep, *sweep.pairs) if x.mlflow_run_id]
        run_ids = [r.id for r in sweep.runs]
        s.execute(delete(RunEvent).where(RunEvent.run_id.in_(run_ids)))
        # only runs still ended and jobless (a compare-and-set: SQLite read them outside this write): a retry or
        # claim that landed since keeps the sweep, and this delete is a Conflict
        ended = Run.status.in_([str(t) for t in TERMINAL]) & ~Run.job_live
        gone_runs = s.execute(delete(Run).where(Run.sweep_id == sweep_id, ended)).rowcount
        if gone_runs != len(run_ids):
            raise Conflict(f"sweep {sweep_id} has a run that was retried while it was being deleted: try again")
        s.execute(delete(Pair).where(Pair.sweep_id == sweep_id))
        s.execute(update(Sweep).where(Sweep.previous_sweep_id == sweep_id).values(previous_sweep_id=None))
        s.execute(update(Schedule).where(Schedule.last_sweep_id == sweep_id).values(last_sweep_id=None))
        if not s.execute(delete(Sweep).where(Sweep.id == sweep_id)).rowcount:  # a concurrent delete got there first
            raise NotFound(f"no sweep {sweep_id!r}")
    return gone

"""The control plane's database: sweeps, pairs, runs (with attempts and a status history) and schedules.

SQLAlchemy 2 models; the schema is created and upgraded by Alembic (`services/migrations`), never by
`create_all`, so a database written by an older version is migrated in place and nothing stored is lost.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    case,
    create_engine,
    event,
    exists,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class RunStatus(StrEnum):
    """A run's state; a sweep's status takes the same values, derived from its runs."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({RunStatus.SUBMITTED, RunStatus.RUNNING})  # a job exists for the current attempt
TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class Base(DeclarativeBase):
    pass


class Sweep(Base):
    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_created_id", "created_at", "id"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("sw"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED, index=True)
    request: Mapped[dict] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))  # of the request the key was first used with
    schedule_id: Mapped[str | None] = mapped_column(ForeignKey("schedules.id"))
    previous_sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id"))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))  # the parent of its pairs' MLflow runs
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_reported: Mapped[str | None] = mapped_column(String(40))  # the status whose results MLflow holds
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)
    pairs: Mapped[list[Pair]] = relationship(back_populates="sweep", order_by="Pair.id")
    runs: Mapped[list[Run]] = relationship(back_populates="sweep", order_by="Run.id")


class Pair(Base):
    __tablename__ = "pairs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pr"))
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id"), index=True)
    size: Mapped[str] = mapped_column(String(10))
    seed: Mapped[int] = mapped_column(Integer)
    pair_hash: Mapped[str] = mapped_column(String(32))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))  # child of the sweep's; parent of the arms'
    mlflow_reported: Mapped[str | None] = mapped_column(String(40))  # the arms' statuses when the gap was logged
    sweep: Mapped[Sweep] = relationship(back_populates="pairs")
    runs: Mapped[list[Run]] = relationship(back_populates="pair", order_by="Run.arm")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_status_created", "status", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("run"))
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id"), index=True)
    pair_id: Mapped[str] = mapped_column(ForeignKey("pairs.id"), index=True)
    arm: Mapped[str] = mapped_column(String(10))
    spec: Mapped[dict] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED, index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # one Ray job per attempt: `<run id>-a<attempt>`
    failures: Mapped[int] = mapped_column(Integer, default=0)  # attempts that failed (a vanished job is not one)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # retry backoff
    job_live: Mapped[bool] = mapped_column(Boolean, default=False, index=True)  # the attempt's job may be running
    submission_id: Mapped[str | None] = mapped_column(String(80))
    result: Mapped[dict | None] = mapped_column(JSON)
    progress: Mapped[dict | None] = mapped_column(JSON)  # {step, steps, loss} of the attempt running now
    progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # submitted, or progress last moved
    error: Mapped[str | None] = mapped_column(Text)
    # compared and bumped by every ORM update of the row: a change decided on a stale read raises StaleDataError
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)
    __mapper_args__ = {"version_id_col": version}
    sweep: Mapped[Sweep] = relationship(back_populates="runs")
    pair: Mapped[Pair] = relationship(back_populates="runs")
    events: Mapped[list[RunEvent]] = relationship(back_populates="run", order_by="RunEvent.id")

    def set_status(self, status: RunStatus, message: str | None = None) -> None:
        """Change status and record it in the run's history (one row per change)."""
        if status != self.status or message:  # (column defaults apply at flush: a new run has attempt None here)
            self.events.append(RunEvent(attempt=self.attempt or 0, status=status, message=message))
        self.status = status


class RunEvent(Base):
    __tablename__ = "run_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    message: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    run: Mapped[Run] = relationship(back_populates="events")


class Heartbeat(Base):
    """One row the readiness probe writes: proof the database takes writes."""

    __tablename__ = "heartbeat"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Schedule(Base):
    __tablename__ = "schedules"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("sch"))
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(100))
    template: Mapped[dict] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(default=True)  # False: deleted (its sweeps keep their link)
    paused: Mapped[bool] = mapped_column(default=False)  # kept, not firing; resumed at the next tick, not the missed
    # bumped and compared by every ORM update (an edit): a tick's record compares it, and of two concurrent edits
    # the second fails instead of overwriting the first
    revision: Mapped[int] = mapped_column(Integer, default=0)
    last_fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_sweep_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    __mapper_args__ = {"version_id_col": revision}


def derive_sweep_status(s: Session, sweep_id: str) -> None:
    """Set a queued or running sweep's status from its runs as they are when this commits: the sweep's row locked
    first (PostgreSQL: a concurrent cancel or retry of its runs waits, or is waited for), then one statement that
    reads the runs and writes the status (SQLite runs it under its one writer's lock). Never from runs read earlier."""
    s.execute(select(Sweep.id).where(Sweep.id == sweep_id).with_for_update())

    def some(*statuses: RunStatus) -> Any:
        return exists().where(Run.sweep_id == sweep_id, Run.status.in_([str(x) for x in statuses]))

    ended = ~some(RunStatus.QUEUED, *ACTIVE)
    new = case(
        (~exists().where(Run.sweep_id == sweep_id, Run.status != str(RunStatus.SUCCEEDED)), str(RunStatus.SUCCEEDED)),
        (ended & some(RunStatus.FAILED), str(RunStatus.FAILED)),
        (ended, str(RunStatus.CANCELLED)),
        (some(RunStatus.SUCCEEDED, *ACTIVE), str(RunStatus.RUNNING)),
        else_=Sweep.status,
    )
    open_ = Sweep.status.in_([str(RunStatus.QUEUED), str(RunStatus.RUNNING)])
    s.execute(update(Sweep).where(Sweep.id == sweep_id, open_).values(status=new))


def changing(db: sessionmaker, change: Callable[[Session], T], attempts: int = 20) -> T:
    """`change(session)` in a transaction of its own, rerun on fresh rows when a row it changed was changed by
    someone else since it was read (its version compare failed): it decides again on what the row is now."""
    for _ in range(attempts - 1):
        try:
            with db.begin() as s:
                return change(s)
        except StaleDataError:
            continue
    with db.begin() as s:
        return change(s)


def migrate(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema to the newest migration (or to `revision`)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, revision)


SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreUnavailable(RuntimeError):
    """The database cannot be used safely (its file deleted or replaced); nothing is written until it can."""


@functools.cache
def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def at_head(db: sessionmaker) -> bool:
    """Whether the store's schema is this code's (False too when it cannot be read)."""
    try:
        with db() as s:
            return s.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    except Exception:  # noqa: BLE001 - unreadable is not at head
        return False


def current_revision(url: str) -> str | None:
    """The store's schema version (None: an empty database)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def connect(url: str, migrate_schema: bool = True) -> sessionmaker:
    """Migrate (unless told not to: then a store at another version leaves /readyz at 503 until `myopia db
    upgrade`), then a session factory. SQLite gets foreign keys, a busy timeout (several threads write) and a
    guard: a connection is handed out only while the file is the one the control plane started with, so writes
    never go to a deleted file's ghost."""
    if migrate_schema:
        migrate(url)
    sqlite = url.startswith("sqlite")
    connect_args = {"timeout": 30} if sqlite else {}
    engine = create_engine(url, connect_args=connect_args, pool_size=10, max_overflow=30)
    info: dict = {"connect_args": connect_args}  # for the readiness probe's fresh connections
    if sqlite:
        _sqlite_pragmas(engine)
        info["guard"] = _guard_file(engine, Path(url.removeprefix("sqlite:///")))
    return sessionmaker(engine, expire_on_commit=False, info=info)


def check(db: sessionmaker) -> None:
    """A fresh connection (not a pooled one) that reads the schema version and writes the heartbeat row, or the
    reason it cannot."""
    engine: Engine = db.kw["bind"]
    info = db.kw.get("info", {})
    if guard := info.get("guard"):
        guard()
        return _probe_sqlite(Path(engine.url.database))
    probe = create_engine(engine.url, poolclass=NullPool, connect_args=info.get("connect_args", {}))
    try:
        _probe(probe)
    finally:
        probe.dispose()


# The SQLite probe runs in a child process: a crash inside SQLite's memory-mapped index (the Bus error seen after the
# store's files were made immutable and writable again) ends the child, not the control plane, and is reported;
# and no descriptor of the database file is opened and closed in this process (closing one drops every POSIX lock
# the process holds on the file, its pooled connections' included).
SQLITE_PROBE = """
import sqlite3, sys
path, head, at = sys.argv[1:4]
connection = sqlite3.connect(path, timeout=30)
version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
if not version or version[0] != head:
    print(version[0] if version else None)
    sys.exit(3)
with connection:
    if not connection.execute("UPDATE heartbeat SET at = ? WHERE id = 1", (at,)).rowcount:
        connection.execute("INSERT INTO heartbeat (id, at) VALUES (1, ?)", (at,))
connection.close()
"""


def _probe_sqlite(path: Path) -> None:
    at = now().strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLAlchemy stores a DateTime in SQLite
    try:
        child = subprocess.run([sys.executable, "-I", "-c", SQLITE_PROBE, str(path), head_revision(), at],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise StoreUnavailable(f"the database {path} did not answer the probe in 60 s (locked?)") from None
    if child.returncode == 3:
        raise StoreUnavailable(
            f"the schema is at {child.stdout.strip()}, this control plane needs {head_revision()}: run `myopia db "
            "upgrade` with this version (or run the control plane of the store's version)"
        )
    if child.returncode < 0:
        raise StoreUnavailable(f"the probe of {path} was killed by {signal.Signals(-child.returncode).name}")
    if child.returncode:
        raise StoreUnavailable((child.stderr.strip().splitlines() or ["(no message)"])[-1][:300])


def _probe(engine: Engine) -> None:
    with engine.connect() as connection, connection.begin():
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if version != head_revision():
            raise StoreUnavailable(
                f"the schema is at {version}, this control plane needs {head_revision()}: run `myopia db upgrade` "
                "with this version (or run the control plane of the store's version)"
            )
        updated = connection.execute(text("UPDATE heartbeat SET at = :at WHERE id = 1"), {"at": now()}).rowcount
        if not updated:
            connection.execute(text("INSERT INTO heartbeat (id, at) VALUES (1, :at)"), {"at": now()})


def _guard_file(engine: Engine, path: Path) -> Callable[..., None]:
    identity = _identity(path)
    # One descriptor for the life of the engine, never closed: closing any descriptor of the database file drops
    # every POSIX lock this process holds on it, SQLite's included; another process's closing connection would then
    # take the file for its last user and delete the write-ahead log this process still writes to (seen: a
    # bench reading the store beside `myopia serve` lost the server's writes).
    header = os.open(path, os.O_RDONLY) if identity else None
    # One connection open for the life of the engine, too: SQLite deletes the write-ahead log when its last
    # connection closes, so with this one open the log exists throughout, and a log that vanishes or changes is
    # someone else's doing (deleted under the server, its connections would go on appending to the unlinked file,
    # and acknowledged writes would be gone at the next start).
    logs, log = (Path(f"{path}-wal"), Path(f"{path}-shm")), {}  # the log and its index

    def guard(*_: object) -> None:
        if _identity(path) != identity or header is None:
            raise StoreUnavailable(f"the database file {path} was deleted or replaced while the control plane ran: "
                                   "restore it and restart (nothing was written meanwhile)")  # fmt: skip
        # 16 bytes: a pooled connection would not notice an overwritten header itself
        if os.pread(header, 16, 0) != SQLITE_MAGIC:
            raise StoreUnavailable(f"the database file {path} is not an SQLite database any more (corrupted?)")
        if "identity" not in log:
            anchor = sqlite3.connect(path, check_same_thread=False)
            anchor.execute("PRAGMA journal_mode=WAL").fetchall()
            anchor.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opens the log and its index
            log.update(anchor=anchor, identity=[_identity(f) for f in logs])
        if [_identity(f) for f in logs] != log["identity"]:
            # the anchor still reads the unlinked log: copy what it holds into the file, again at every refusal (a
            # transaction already under way when the loss was found commits into the old log after this)
            busy, _, _ = log["anchor"].execute("PRAGMA wal_checkpoint(FULL)").fetchone()
            saved = "was copied into the database file" if not busy else "is being copied into the database file"
            raise StoreUnavailable(
                f"the write-ahead log or its index ({logs[0]}, {logs[1].name}) was deleted or replaced while the "
                f"control plane ran; what was acknowledged {saved}, and nothing more is written: restart the "
                "control plane to take writes again"
            )

    # before a new connection would create a ghost file, and before a pooled one is handed out
    event.listen(engine, "do_connect", guard)
    event.listen(engine, "checkout", guard)
    return guard


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

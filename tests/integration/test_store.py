"""The store on real SQLite and PostgreSQL databases, schema made by the Alembic migrations."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from services.store import Pair, Run, Sweep, connect, migrate


@pytest.fixture
def db(database_url):
    return connect(database_url)


def test_migrations_create_every_table_and_rerun_safely(database_url):
    url = database_url
    connect(url)
    migrate(url)  # a second upgrade (a restarted control plane) is a no-op
    from sqlalchemy import create_engine

    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"sweeps", "pairs", "runs", "run_events", "schedules", "alembic_version"} <= tables
    assert {"mlflow_run_id", "mlflow_reported"} <= {c["name"] for c in inspect(create_engine(url)).get_columns("pairs")}


def test_an_older_schema_is_upgraded_in_place_keeping_its_rows(database_url):
    from sqlalchemy import create_engine, text

    migrate(database_url, "0001")  # a store written before the MLflow columns existed
    with create_engine(database_url).begin() as c:
        now = "CURRENT_TIMESTAMP"
        c.execute(
            text(
                "INSERT INTO sweeps (id, name, status, request, created_at, updated_at) "
                f"VALUES ('sw-old', 'old', 'succeeded', '{{}}', {now}, {now})"
            )
        )
    db = connect(database_url)
    with db() as s:
        old = s.get(Sweep, "sw-old")
        assert (old.name, old.status, old.mlflow_reported) == ("old", "succeeded", None)


def test_a_sweep_with_pairs_runs_and_history_round_trips(db):
    with db.begin() as s:
        sweep = Sweep(name="ladder", request={"sizes": ["14m"]}, idempotency_key="k1")
        pair = Pair(sweep=sweep, size="14m", seed=0, pair_hash="abc")
        for arm in ("vanilla", "myopic"):
            run = Run(sweep=sweep, pair=pair, arm=arm, spec={"arm": arm}, config_hash=f"h-{arm}")
            run.set_status("queued", "planned")
            s.add(run)
    sweep_id = sweep.id  # assigned at flush
    with db.begin() as s:
        run = s.scalars(select(Run).where(Run.arm == "myopic")).one()
        run.attempt = 1
        run.set_status("running")
        run.set_status("succeeded")
    with db() as s:
        sweep = s.get(Sweep, sweep_id)
        assert [r.arm for r in sweep.pairs[0].runs] == ["myopic", "vanilla"]
        myopic = next(r for r in sweep.runs if r.arm == "myopic")
        assert [(e.attempt, e.status) for e in myopic.events] == [(0, "queued"), (1, "running"), (1, "succeeded")]
        assert myopic.events[0].message == "planned"


def test_idempotency_key_is_unique(db):
    with db.begin() as s:
        s.add(Sweep(name="a", request={}, idempotency_key="same"))
    with pytest.raises(IntegrityError), db.begin() as s:
        s.add(Sweep(name="b", request={}, idempotency_key="same"))
    with db() as s:
        assert [x.name for x in s.scalars(select(Sweep))] == ["a"]  # the first one is untouched


def test_the_models_match_the_migrations(database_url):
    """Alembic's own comparison: nothing in services.store that the migrations do not create, and the reverse."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from services.store import Base

    migrate(database_url)
    with create_engine(database_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_another_process_closing_the_store_loses_none_of_this_ones_writes(tmp_path):
    """The file guard reads the database's header on every checkout; were it to open and close the file, it would
    drop this process's SQLite locks (POSIX locks belong to the process), and another process closing its own
    connection would take itself for the last user and delete the write-ahead log this process still writes to."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'cp.db'}"
    db = connect(url)

    def add(name: str) -> None:
        with db.begin() as s:  # a checkout: the guard runs
            s.add(Sweep(id=name, name=name, status="queued", request={}))

    add("sw-first")
    add("sw-before")  # its checkout runs the guard while the connection holds its locks from the first write
    other = f"from services.store import connect; connect({url!r}).kw['bind'].dispose()"  # migrate, probe, close
    subprocess.run([sys.executable, "-c", other], check=True, timeout=120)
    add("sw-after")
    path = tmp_path / "cp.db"
    seen = (
        f"import sqlite3; print(sorted(r[0] for r in sqlite3.connect({str(path)!r}).execute('select id from sweeps')))"
    )
    out = subprocess.run([sys.executable, "-c", seen], capture_output=True, text=True)
    assert out.stdout.strip() == "['sw-after', 'sw-before', 'sw-first']", out.stderr


def test_a_backup_restores_every_sweep_run_and_schedule(database_url, tmp_path):
    """The restore drill of docs/operations.md ("Backup and restore"): the documented commands, on a store with a
    sweep and a schedule; the restored store is one the control plane reads whole."""
    import sqlite3
    import subprocess

    from sqlalchemy import create_engine, text

    from services import scheduler
    from services.planner import SweepRequest
    from services.sweeps import create_sweep, get_sweep
    from tests.integration.conftest import _pg_bin

    db = connect(database_url)
    request = {"name": "kept", "sizes": ["14m"], "seeds": [0, 1], "run": {"train": {"steps": 5}}}
    sweep, _ = create_sweep(db, SweepRequest.model_validate(request))
    scheduler.add_schedule(db, scheduler.ScheduleRequest(name="nightly", cron="0 3 * * *", template=request))
    db.kw["bind"].dispose()
    if database_url.startswith("sqlite"):
        live = database_url.removeprefix("sqlite:///")
        backup = tmp_path / "backup.db"
        with sqlite3.connect(live) as src, sqlite3.connect(backup) as dst:  # the documented one-liner's work
            src.backup(dst)
        __import__("os").remove(live)  # the disk is lost
        with sqlite3.connect(backup) as src, sqlite3.connect(live) as dst:
            src.backup(dst)
    else:
        server, name = database_url.rsplit("/", 1)
        libpq = server.replace("+psycopg2", "")
        dump = tmp_path / "myopia.dump"
        subprocess.run([_pg_bin() / "pg_dump", "-Fc", "-f", dump, f"{libpq}/{name}"], check=True)
        admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:  # the database is lost, and made again empty
            c.execute(text(f"DROP DATABASE {name}"))
            c.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        subprocess.run([_pg_bin() / "pg_restore", "--no-owner", "-d", f"{libpq}/{name}", dump], check=True)
    restored = connect(database_url)
    again = get_sweep(restored, sweep.id)
    assert [(r.id, r.status, r.spec) for r in again.runs] == [(r.id, r.status, r.spec) for r in sweep.runs]
    assert [s.name for s in scheduler.list_schedules(restored)[0]] == ["nightly"]


def test_the_init_script_makes_two_roles_that_are_not_superusers(tmp_path):
    """cluster/compose/postgres-init.sh (compose mounts it; the Kubernetes ConfigMap carries the same text) on a
    fresh server, as the postgres image's entrypoint runs it: each database owned by its own role, neither role a
    superuser nor able to make roles or databases, each able to log in with its password and migrate its store."""
    from pathlib import Path

    from sqlalchemy import create_engine, text

    from tests.integration.conftest import _pg_bin, postgres

    script = Path(__file__).resolve().parents[2] / "cluster" / "compose" / "postgres-init.sh"
    with postgres(superuser="postgres", auth_host="scram-sha-256") as (url, pg, socket):
        port = url.rsplit(":", 1)[1]
        env = {"PATH": f"{_pg_bin()}:/usr/sbin:/usr/bin:/sbin:/bin", "POSTGRES_USER": "postgres", "PGHOST": str(socket),
               "PGPORT": port, "STORE_ROLE_PASSWORD": "m-pw", "MLFLOW_ROLE_PASSWORD": "f-pw"}  # fmt: skip
        pg("bash", str(script), env=env)  # as the entrypoint does: over the socket, as the superuser
        admin = create_engine(f"postgresql+psycopg2://postgres@/postgres?host={socket}&port={port}")
        with admin.connect() as c:
            roles = dict(c.execute(text("SELECT rolname, rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles "
                                        "WHERE rolname IN ('myopia', 'mlflow')")).all())  # fmt: skip
            owners = dict(c.execute(text("SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
                                         "WHERE datname IN ('myopia', 'mlflow')")).all())  # fmt: skip
        admin.dispose()
        assert roles == {"myopia": False, "mlflow": False} and owners == {"myopia": "myopia", "mlflow": "mlflow"}
        server = url.split("@", 1)[1]
        connect(f"postgresql+psycopg2://myopia:m-pw@{server}/myopia")  # the store migrates as its own role
        with create_engine(f"postgresql+psycopg2://mlflow:f-pw@{server}/mlflow").connect() as c:
            assert c.execute(text("SELECT current_user")).scalar() == "mlflow"

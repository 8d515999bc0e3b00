"""A real PostgreSQL server for the store's tests, started by the suite (Debian's `postgresql`, installed by the
Makefile) on loopback in a temporary directory, and stopped at the end."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from api.demo import free_port
from cluster.jobs import Jobs
from cluster.local import EmbeddedHead


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not found[-1]:
        pytest.fail("PostgreSQL is not installed: `make install` installs Debian's postgresql package")
    return Path(found[-1]).parent


@contextmanager
def postgres(superuser: str = "myopia", auth_host: str = "trust") -> Iterator[tuple[str, Callable[..., None], Path]]:
    """A fresh PostgreSQL server on loopback: (its URL as `superuser`, a runner of its binaries as its user, its
    socket folder). TCP logins take `auth_host`; the socket trusts its users."""
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="myopia-pg-"))  # under /tmp: the server's user must reach it
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"

    def pg(*cmd: str, **kw) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, **kw)

    auth = ["--auth-local=trust", f"--auth-host={auth_host}"]
    pg(str(bindir / "initdb"), "-D", str(data), *auth, "-U", superuser, "--no-sync", "-E", "UTF8")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg2://{superuser}@127.0.0.1:{port}", pg, root
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    with postgres() as (url, _, _):
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'myopia.db'}"
    server = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """An embedded head (its own ports, token auth) as `myopia serve` starts one; its jobs find the DeepSpeed op
    built once in the usual cache."""
    root = tmp_path_factory.mktemp("cp")
    cache = Path(os.environ.get("MYOPIA_DATA_DIR", Path.home() / ".myopia")) / "torch_extensions"
    os.environ["TORCH_EXTENSIONS_DIR"] = str(cache)
    h = EmbeddedHead(num_cpus=2).start()
    jobs = Jobs(lambda: h.jobs_address, token=h.token, log_dir=lambda: h.log_dir)
    yield {"root": root, "jobs": jobs, "address": h.jobs_address, "head": h}
    h.stop()

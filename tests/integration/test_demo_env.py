"""`make demo` from a shell that exported another control plane's settings: its own server must still answer its
client and run on its own Ray head, store and MLflow."""

from __future__ import annotations

import httpx
import pytest

from api.demo import control_plane, demo_env, free_port

pytestmark = pytest.mark.slow


def test_the_demo_ignores_a_hostile_environment(tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    hostile = {
        "MYOPIA_API_TOKEN": "someone-elses-token",
        "RAY_ADDRESS": dead,
        "MYOPIA_MLFLOW_URI": dead,
        "MLFLOW_TRACKING_URI": dead,
        "MYOPIA_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "MYOPIA_RESOURCE_PROFILE": "no-such-profile",
        "RAY_AUTH_TOKEN": "another-clusters-token",
    }
    for k, v in hostile.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MYOPIA_DATA_DIR", str(tmp_path))
    assert demo_env({**hostile, "MYOPIA_DATA_DIR": "/d", "PATH": "/bin"}) == {"MYOPIA_DATA_DIR": "/d", "PATH": "/bin"}

    store = f"sqlite:///{tmp_path / 'demo.db'}"
    with control_plane(free_port(), {"MYOPIA_DATABASE_URL": store}, tmp_path / "serve.log") as api:
        assert api.token is None
        assert api.call("GET", "/v1/sweeps").json()["items"] == []  # its own server takes its client: no 401
        ready = httpx.get(f"{api.url}/readyz").json()
        assert ready == {"status": "ready", "database": "ok", "ray": "ok"}  # its own head, not the dead address
    log = "".join((tmp_path / "serve.log").read_text().split())  # rich wraps the line anywhere
    assert "anembeddedhead" in log and f"database{store}" in log and f"MLflowsqlite:///{tmp_path}" in log

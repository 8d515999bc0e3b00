"""`make demo` on one machine: a control plane as a child process (its own store, a loopback Ray head, a local
MLflow), the demo sweeps submitted over REST and followed, their gap tables and plots, then everything stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx

from api.client_cli import Api, console, fit_lines, follow, results_table, submit
from services.presets import LADDER_CORPUS
from services.settings import Settings
from trainers import corpora

DEMO_SWEEPS = ("demo-synthetic", "demo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until `url/readyz` answers 200; a server that exits first is an error showing its log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException(f"the control plane exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise click.ClickException(f"the control plane did not become ready in {timeout:.0f} s (log: {log})")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM: uvicorn shuts down and the process's Ray head goes with it; kill the group if it lingers."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# The demo runs on embedded defaults whatever the shell exported for another control plane: a token would make its
# own server refuse its client (401), a cluster address would send its runs there, another store or tracking server
# would get its sweeps. Only where data lives and how many runs at once carry over.
KEPT = ("MYOPIA_DATA_DIR", "MYOPIA_MAX_CONCURRENT_RUNS")
FOREIGN = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI",
           "MLFLOW_TRACKING_TOKEN")  # fmt: skip


def demo_env(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """`environ` without what would point the demo elsewhere."""
    return {k: v for k, v in environ.items() if k in KEPT or not (k.startswith("MYOPIA_") or k in FOREIGN)}


@contextmanager
def control_plane(port: int, env: dict[str, str], log: Path) -> Iterator[Api]:
    """`myopia serve` as a child process with `env` over this one's (less what points elsewhere); stopped on
    exit."""
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            env={**demo_env(os.environ), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(url, server, log)
            yield Api(url, env.get("MYOPIA_API_TOKEN"))
        finally:
            stop(server)


def run_demo(port: int = 0, json_out: str | None = None) -> dict[str, Any]:
    settings = Settings.model_construct(data_dir=Settings().data_dir)  # the child's: embedded defaults
    # the text sweep's corpora and the tokenizer (once; then cached)
    corpora.fetch(corpora.corpus_names(LADDER_CORPUS) or [], log=console.print)
    out_dir = settings.data_dir.expanduser() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # a store of its own: a control plane resumes every unfinished sweep of its store, and the demo runs its own
    database = f"sqlite:///{out_dir / time.strftime('demo-%Y%m%d-%H%M%S.db')}"
    log = out_dir / "serve.log"
    console.print(f"starting the control plane at http://127.0.0.1:{port} (log: {log}); store {database}")
    everything = {}
    with control_plane(port, {"MYOPIA_DATABASE_URL": database}, log) as api:
        ids = [submit(api, {"preset": name})["id"] for name in DEMO_SWEEPS]
        follow(api, *ids)
        for sweep_id in ids:
            sweep = api.call("GET", f"/v1/sweeps/{sweep_id}").json()
            res = api.call("GET", f"/v1/sweeps/{sweep_id}/results").json()
            png = out_dir / f"{sweep['name']}.png"
            png.write_bytes(api.call("GET", f"/v1/sweeps/{sweep_id}/results.png").content)
            table = results_table(res)
            table.title = f"{sweep['name']} ({sweep_id}): {sweep['status']}"
            console.print(table)
            for line in fit_lines(res):
                console.print(line)
            console.print(f"plot: {png}")
            everything[sweep["name"]] = {"sweep": sweep, "results": res}
    console.print(
        "myopia gap = myopic − vanilla held-out loss (Huber/p on D_p, cross-entropy on text), "
        "same init, data order and hyper-parameters in both arms."
    )
    sweep_runs = {name: (r["results"]["mlflow"] or {}).get("sweep_run_id") for name, r in everything.items()}
    console.print(
        f"MLflow: experiments {', '.join(f'myopia/{n}' for n in everything)} in {settings.mlflow} "
        f"(sweep runs {sweep_runs}); open the dashboard with "
        f"`.venv/bin/mlflow ui --backend-store-uri {settings.mlflow}` → http://127.0.0.1:5000"
    )
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(everything, indent=1))
        console.print(f"results written to {json_out}")
    return everything

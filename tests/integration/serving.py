"""`myopia serve` as a real child process for the tests: start it on a store, kill it (SIGKILL) or stop it, ask it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.demo import free_port, wait_ready


class ServeProcess:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp_path / "serve.log"
        self.env = {
            **os.environ,
            "MYOPIA_DATABASE_URL": f"sqlite:///{tmp_path / 'cp.db'}",
            "MYOPIA_MLFLOW_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "MYOPIA_MAX_CONCURRENT_RUNS": "1",
            "MYOPIA_RETRY_BACKOFF_S": "1",
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", self.url.rsplit(":", 1)[1]],
            env=self.env,
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_ready(self.url, self.proc, self.log)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def get(self, path: str) -> dict:
        return httpx.get(self.url + path, timeout=30).json()

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60)

    def until(self, predicate, timeout: float = 400, step: float = 0.5):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            assert time.monotonic() < deadline, f"timed out; serve log:\n{self.log.read_text()[-3000:]}"
            time.sleep(step)
        return value


def until(predicate, timeout: float = 400, step: float = 0.5, tick=None):
    """Poll (calling `tick` between polls) until `predicate` holds; every half second, as the control plane's own
    reconciler ticks every second (a coarser poll only adds waiting to the suite)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        if tick:
            tick()
        time.sleep(step)

"""The embedded Ray head: a local, loopback-only cluster for one machine, when RAY_ADDRESS names none.

`EmbeddedHead` runs `ray start --head --block` as a child process with its own temp dir, a free port for every
component (so another Ray on the host, or a previous head still shutting down, never collides with it) and token
auth (a local user cannot submit jobs to it without the token). The control plane talks to it over HTTP only, so
the head can die and be restarted while the API stays up. `ensure_ray` connects this process to a cluster as a
Ray driver, for one-off runs (`myopia train`, the benches, the tests).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainers.runtime import RAY_TRAIN_ENV

LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray reads this once, when first imported: without it a local head binds the host's interface address
    # even when told 127.0.0.1.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
PORT_FLAGS = ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port",
              "--ray-client-server-port")  # fmt: skip


def configure_loopback() -> None:
    """Entry points call this before anything imports ray: a local head must stay on loopback, and uses token auth
    with a token of this process's own (explicitly: Ray would otherwise adopt whatever token another Ray on the
    host left in ~/.ray)."""
    if os.environ.get("RAY_ADDRESS"):
        return
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        raise RuntimeError("ray was imported before cluster.local.configure_loopback(): call it first")
    for key, value in {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}.items():
        os.environ.setdefault(key, value)


WORKER_PORTS = 200  # the workers' range: one port each


def worker_range_start(taken: set[int]) -> int:
    """A start for the workers' port range that overlaps none of the head's own ports (Ray refuses to start if it
    does; the workers then bind what is free inside the range)."""
    while True:
        start = free_port()
        if start + WORKER_PORTS < 65536 and not any(start <= p <= start + WORKER_PORTS for p in taken):
            return start


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: all bound at once, so the system cannot hand the same one out twice (it does, when
    each socket is closed before the next is bound, and Ray then refuses to start)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class HeadError(RuntimeError):
    """The embedded head did not start or is not answering."""


class EmbeddedHead:
    """A single-node Ray cluster on 127.0.0.1, supervised by whoever holds this object.

    With a `state_file`, the head outlives a control plane that is killed: the next one adopts it (its jobs go on)
    instead of starting another beside it. The file holds the token: it is written readable by its owner only.
    """

    def __init__(self, num_cpus: int | None = None, token: str | None = None, state_file: Path | None = None) -> None:
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.token = token or os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16)
        self.state_file = state_file
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.temp_dir: Path | None = None
        self.ports: dict[str, int] = {}
        self.restarts = 0

    @classmethod
    def open(cls, state_file: Path, num_cpus: int | None = None) -> EmbeddedHead:
        """The head a previous control plane left running (if it still answers), else a new one."""
        head = cls(num_cpus, state_file=state_file)
        try:
            state = json.loads(state_file.read_text())
            head.token, head.pid, head.ports = state["token"], state["pid"], state["ports"]
            head.temp_dir = Path(state["temp_dir"])
        except (OSError, ValueError, KeyError):
            return head.start()
        if head.answers():
            return head
        head.stop()  # what is left of it
        return head.start()

    @property
    def env(self) -> dict[str, str]:
        """What a client of this head needs in its environment (token auth)."""
        return {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['--port']}"

    @property
    def jobs_address(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def log_dir(self) -> Path | None:
        """Where the head writes its job-driver logs."""
        return self.temp_dir / "session_latest" / "logs" if self.temp_dir else None

    def start(self, timeout: float = 120) -> EmbeddedHead:
        return self.launch().wait_ready(timeout)

    def launch(self) -> EmbeddedHead:
        """Start the head's process and return at once (`wait_ready` waits for it): a caller can import its heavy
        modules while the head comes up."""
        # a short path: Ray's unix sockets live under it and their names must stay under ~107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="myopia-ray-", dir="/tmp"))
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        worker_port = worker_range_start(set(self.ports.values()))
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
               "--include-dashboard", "true", "--num-cpus", str(self.num_cpus), "--temp-dir", str(self.temp_dir),
               "--disable-usage-stats", "--min-worker-port", str(worker_port), "--max-worker-port",
               str(worker_port + WORKER_PORTS)]  # fmt: skip
        for flag, port in self.ports.items():
            cmd += [flag, str(port)]
        log = (self.temp_dir / "head.log").open("w")
        env = {**RAY_TRAIN_ENV, **os.environ, **self.env}  # (the raylet's environment is its workers')
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        self.pid = self.proc.pid
        if self.state_file is not None:  # at once: whoever sees the head answer can also find it (adoption, tests)
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            state = {"pid": self.pid, "temp_dir": str(self.temp_dir), "ports": self.ports, "token": self.token}
            fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
        return self

    def wait_ready(self, timeout: float = 120) -> EmbeddedHead:
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.temp_dir / "head.log").read_text()[-3000:]
                self.stop()
                raise HeadError(f"the embedded Ray head did not start:\n{tail}")
            time.sleep(0.5)
        return self

    def answers(self) -> bool:
        """Its process is alive and its job server answers."""
        import httpx

        if not self._alive():
            return False
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            return httpx.get(f"{self.jobs_address}/api/version", headers=headers, timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def _alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.pid is None:  # adopted: not our child, ask the system
            return False
        import psutil

        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM: `ray start --block` stops what it started; the process group is killed if it lingers past
        `grace` seconds (0: at once, for a throwaway head whose jobs are over)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.temp_dir is not None:
            kill_processes_under(self.temp_dir)  # Ray's daemons start sessions of their own: find them by dir
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)
        self.proc, self.pid = None, None


def kill_processes_under(temp_dir: Path) -> None:
    import psutil

    mark = str(temp_dir)
    killed = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(mark in part for part in p.info["cmdline"] or ()):
                p.kill()
                killed.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    deadline = time.monotonic() + 10
    while killed and time.monotonic() < deadline:  # gone, or dead and waiting for a parent to reap it
        killed = [p for p in killed if _lives(p)]
        time.sleep(0.1)


def _lives(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


_driver_head: EmbeddedHead | None = None  # the head `ensure_ray` started for this process


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect this process as a Ray driver: to RAY_ADDRESS if set, else to an embedded head of its own (every port
    free-picked, stopped when the process exits or at `stop_ray`)."""
    global _driver_head
    configure_loopback()
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return
    if _driver_head is None:
        launch_ray(num_cpus)
    if not _driver_head.answers():
        _driver_head.wait_ready()
    ray.init(address=_driver_head.gcs_address, log_to_driver=False, logging_level=logging.WARNING)


def launch_ray(num_cpus: int | None = None) -> None:
    """Start the embedded head `ensure_ray` will connect to, without waiting for it (nothing when RAY_ADDRESS names a
    cluster): a command calls this first and imports torch and the trainers while the head comes up."""
    global _driver_head
    configure_loopback()
    if _driver_head is None and not os.environ.get("RAY_ADDRESS"):
        _driver_head = EmbeddedHead(num_cpus).launch()
        atexit.register(_stop_driver_head)


def _stop_driver_head() -> None:
    """At exit, or when the command is done: the driver's own head holds nothing worth a graceful stop."""
    global _driver_head
    if _driver_head is not None:
        _driver_head.stop(grace=0)
        _driver_head = None


def stop_ray() -> None:
    """Disconnect, and stop the head `ensure_ray` started."""
    import ray

    ray.shutdown()
    _stop_driver_head()

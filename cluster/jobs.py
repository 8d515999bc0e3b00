"""Ray Jobs for runs: one job per attempt, `submission_id` = `<run id>-a<attempt>`, so a resubmission after a
crash of the control plane finds the job instead of starting a second one.

Nothing travels through a shared filesystem or the command line: each job's working directory is a fresh folder
holding its `spec.json`, which Ray uploads with the job; the result comes back as the job's last log line
(`trainers.job_protocol`). On a remote cluster the `trainers` package travels too (`py_modules`; it imports
nothing else of the project) and the cluster's image supplies the packages.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from trainers.job_protocol import SPEC_FILE
from trainers.runtime import RAY_TRAIN_ENV

ACTIVE = {JobStatus.PENDING, JobStatus.RUNNING}
TRAINERS = Path(__file__).resolve().parents[1] / "trainers"
# never uploaded with a job, whatever lands beside the code: secrets (.env files), caches
UPLOAD_EXCLUDES = [".env", "*.env", ".git/", "__pycache__/", "*.pyc"]


def submission_id(run_id: str, attempt: int) -> str:
    return f"{run_id}-a{attempt}"


class Jobs:
    def __init__(
        self,
        address: str | Callable[[], str],
        *,
        token: str | None = None,
        remote: bool = False,
        python: str | None = None,
        log_dir: Callable[[], Path | None] | None = None,
    ) -> None:
        """`address`: the job server's, or a function giving it (an embedded head moves when it restarts);
        `token`: Ray's auth token where the cluster requires one (else Ray's own RAY_AUTH_TOKEN settings apply);
        `remote`: a cluster that does not share this machine's checkout (the code is shipped); `python`: the
        jobs' interpreter (default: `python` on a remote cluster, this very one on the embedded head); `log_dir`:
        where the head keeps its job-driver logs, when it is on this machine (logs are then read in slices)."""
        self._address = address if callable(address) else (lambda: address)
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._client: JobSubmissionClient | None = None
        self._client_address: str | None = None
        self.remote = remote
        self.python = python or ("python" if remote else sys.executable)
        self._log_dir = log_dir or (lambda: None)

    @property
    def client(self) -> JobSubmissionClient:
        address = self._address()
        if self._client is None or address != self._client_address:
            self._client = JobSubmissionClient(address, headers=self._headers)
            self._client_address = address
        return self._client

    def unreachable(self) -> str | None:
        """None when the job server answers, else why not (one line)."""
        try:
            self.client.get_version()
            return None
        except Exception as e:  # noqa: BLE001 - any failure to answer is the answer
            self._client = None
            return f"the Ray job server at {self._address()} does not answer: {type(e).__name__}: {str(e)[:300]}"

    def message(self, sid: str) -> str | None:
        """Ray's own account of how the job ended."""
        try:
            return self.client.get_job_info(sid).message
        except RuntimeError:
            return None

    def status(self, sid: str) -> JobStatus | None:
        try:
            return self.client.get_job_status(sid)
        except RuntimeError as e:  # the job server answers 404 for an unknown id
            if "does not exist" in str(e) or "404" in str(e):
                return None
            raise

    def submit(self, sid: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> None:
        with tempfile.TemporaryDirectory(prefix="myopia-job-") as job_dir:
            (Path(job_dir) / SPEC_FILE).write_text(json.dumps(spec))
            runtime_env: dict[str, Any] = {
                "working_dir": job_dir,
                "env_vars": {**RAY_TRAIN_ENV, **(env or {})},
                "excludes": UPLOAD_EXCLUDES,
            }
            if self.remote:
                runtime_env["py_modules"] = [str(TRAINERS)]
            self.client.submit_job(
                entrypoint=f"{self.python} -m trainers.entry {SPEC_FILE}",
                submission_id=sid,
                runtime_env=runtime_env,
            )

    def stop(self, sid: str) -> None:
        if self.status(sid) in ACTIVE:
            self.client.stop_job(sid)

    def logs(self, sid: str) -> str:
        try:
            return self.client.get_job_logs(sid)
        except RuntimeError:
            return ""

    def log_file(self, sid: str) -> Path | None:
        """The job driver's log file, where the head runs on this machine."""
        log_dir = self._log_dir()
        path = log_dir / f"job-driver-{sid}.log" if log_dir else None
        return path if path and path.exists() else None

    def tail(self, sid: str, n_bytes: int) -> str:
        """The last n bytes of the job's log (read from the file where it is local, else from the job server)."""
        path = self.log_file(sid)
        if path is None:
            return self.logs(sid)[-n_bytes:]
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - n_bytes))
            return f.read().decode(errors="replace")

    def nodes(self) -> list[dict[str, float]]:
        """Each live node's total resources ({"CPU": 2.0, "GPU": 1.0, ...}), from the head's state API."""
        import httpx  # (the job client has no call for it)

        answer = httpx.get(
            f"{self._address()}/api/v0/nodes",
            params={"limit": 10_000, "detail": "true"},
            headers=self._headers,
            timeout=3,
        )
        answer.raise_for_status()
        rows = answer.json()["data"]["result"]["result"]
        return [row["resources_total"] for row in rows if row.get("state") == "ALIVE"]

    def submission_ids(self) -> list[str]:
        return [j.submission_id for j in self.client.list_jobs() if j.submission_id]

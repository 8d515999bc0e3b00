"""Ray Jobs for runs: one job per attempt, `submission_id` = `<run id>-a<attempt>`, so a resubmission after a
crash of the control plane finds the job instead of starting a second one.

Nothing travels through a shared filesystem: the spec goes in the entrypoint (base64 JSON) and the result comes
back as the job's last log line, so jobs run the same on the embedded head and on a remote cluster. On a remote
cluster the project itself is shipped as the job's `working_dir` (the cluster's image supplies the packages).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

ACTIVE = {JobStatus.PENDING, JobStatus.RUNNING}
RESULT_MARK = "MYOPIA_RESULT "
PROJECT = Path(__file__).resolve().parents[1]
# What a job needs of the project: its packages and the resource table; not data, venvs or VCS history.
SHIP_EXCLUDES = [".git", ".venv", "**/__pycache__", "tests", "docs", "bench", "*.db", ".ruff_cache", ".pytest_cache"]


def submission_id(run_id: str, attempt: int) -> str:
    return f"{run_id}-a{attempt}"


def encode_spec(spec: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(spec, separators=(",", ":")).encode()).decode()


def parse_result(logs: str) -> dict[str, Any] | None:
    """The result the entrypoint printed last, or None."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    return None


class Jobs:
    def __init__(self, address: str, *, remote: bool = False, python: str | None = None) -> None:
        """`remote`: a cluster that does not share this machine's checkout (the code is shipped); `python`: the
        jobs' interpreter (default: `python` on a remote cluster, this very one on the embedded head)."""
        self.client = JobSubmissionClient(address)
        self.remote = remote
        self.python = python or ("python" if remote else sys.executable)

    def runtime_env(self, env: dict[str, str]) -> dict[str, Any]:
        if not self.remote:
            return {"env_vars": env}
        return {"env_vars": env, "working_dir": str(PROJECT), "excludes": SHIP_EXCLUDES}

    def status(self, sid: str) -> JobStatus | None:
        try:
            return self.client.get_job_status(sid)
        except RuntimeError as e:  # the job server answers 404 for an unknown id
            if "does not exist" in str(e) or "404" in str(e):
                return None
            raise

    def submit(self, sid: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.client.submit_job(
            entrypoint=f"{self.python} -m trainers.entry --spec-b64 {encode_spec(spec)}",
            submission_id=sid,
            runtime_env=self.runtime_env(env or {}),
        )

    def result(self, sid: str) -> dict[str, Any] | None:
        return parse_result(self.logs(sid))

    def stop(self, sid: str) -> None:
        if self.status(sid) in ACTIVE:
            self.client.stop_job(sid)

    def logs(self, sid: str) -> str:
        try:
            return self.client.get_job_logs(sid)
        except RuntimeError:
            return ""

    def submission_ids(self) -> list[str]:
        return [j.submission_id for j in self.client.list_jobs() if j.submission_id]

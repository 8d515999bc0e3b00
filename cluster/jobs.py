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
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from trainers.job_protocol import SPEC_FILE, parse_result

ACTIVE = {JobStatus.PENDING, JobStatus.RUNNING}
TRAINERS = Path(__file__).resolve().parents[1] / "trainers"


def submission_id(run_id: str, attempt: int) -> str:
    return f"{run_id}-a{attempt}"


class Jobs:
    def __init__(self, address: str, *, remote: bool = False, python: str | None = None) -> None:
        """`remote`: a cluster that does not share this machine's checkout (the code is shipped); `python`: the
        jobs' interpreter (default: `python` on a remote cluster, this very one on the embedded head)."""
        self.client = JobSubmissionClient(address)
        self.remote = remote
        self.python = python or ("python" if remote else sys.executable)

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
            runtime_env: dict[str, Any] = {"working_dir": job_dir, "env_vars": env or {}}
            if self.remote:
                runtime_env["py_modules"] = [str(TRAINERS)]
            self.client.submit_job(
                entrypoint=f"{self.python} -m trainers.entry {SPEC_FILE}",
                submission_id=sid,
                runtime_env=runtime_env,
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

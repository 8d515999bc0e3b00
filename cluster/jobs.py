"""Ray Jobs for runs: one job per attempt, `submission_id` = `<run id>-a<attempt>`, so a resubmission after a
crash of the control plane finds the job instead of starting a second one."""

from __future__ import annotations

import sys

from ray.job_submission import JobStatus, JobSubmissionClient

ACTIVE = {JobStatus.PENDING, JobStatus.RUNNING}


def submission_id(run_id: str, attempt: int) -> str:
    return f"{run_id}-a{attempt}"


class Jobs:
    def __init__(self, address: str, python: str | None = None) -> None:
        self.client = JobSubmissionClient(address)
        self.python = python or sys.executable  # the same interpreter on a local head; "python" on a cluster

    def status(self, sid: str) -> JobStatus | None:
        try:
            return self.client.get_job_status(sid)
        except RuntimeError as e:  # the job server answers 404 for an unknown id
            if "does not exist" in str(e) or "404" in str(e):
                return None
            raise

    def submit(self, sid: str, spec_path: str, result_path: str, env: dict[str, str] | None = None) -> None:
        self.client.submit_job(
            entrypoint=f"{self.python} -m trainers.entry {spec_path} --out {result_path}",
            submission_id=sid,
            runtime_env={"env_vars": env or {}},
        )

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

"""A dying cluster and a poisoned queue, on real Ray heads: the control plane keeps going, says what is wrong, and
loses no sweep.

- a run that cannot succeed (its corpus is missing) fails at once, with the cause, beside a sweep that finishes;
- a run whose submission fails (the job server says it has no agent) waits out a backoff while the others run;
- `myopia serve` SIGKILLed mid-sweep on its embedded head: the next one adopts the head, the job goes on;
- the embedded Ray head killed mid-run: the API stays up and says so, the head is restarted, the lost job is
  resubmitted without counting against the run, and the sweep finishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cluster.jobs import Jobs
from services.planner import SweepRequest
from services.reconciler import Reconciler
from services.store import connect
from services.sweeps import create_sweep, get_run, get_sweep
from tests.integration.serving import ServeProcess, until
from tests.integration.test_reconciler import SWEEP

pytestmark = pytest.mark.slow


def longer(steps: int, **extra) -> dict:
    return {**SWEEP, **extra, "run": {**SWEEP["run"], "train": {**SWEEP["run"]["train"], "steps": steps}}}


class FlakySubmissions(Jobs):
    """The real job client, except that one run's first submissions fail as an agentless job server answers."""

    def __init__(self, jobs: Jobs, run_prefix: str, failures: int) -> None:
        self.__dict__.update(jobs.__dict__)
        self.run_prefix, self.failures_left = run_prefix, failures

    def submit(self, sid, spec, env=None):
        if sid.startswith(self.run_prefix) and self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("Request failed with status code 503: No available agent to submit job")
        return super().submit(sid, spec, env)


def test_the_embedded_head_refuses_clients_without_its_token(head):
    """Token auth on: the job server (which runs code on the cluster) and the GCS refuse a client without it."""
    import httpx

    url = f"{head['address']}/api/version"
    assert httpx.get(url, timeout=10).status_code in (401, 403)
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code in (401, 403)
    assert httpx.get(url, headers={"Authorization": f"Bearer {head['head'].token}"}, timeout=10).status_code == 200
    # Ray's own client, in a process without this one's token (this one holds it: it started the head)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    code = "import sys\nfrom ray.job_submission import JobSubmissionClient\n"
    code += "JobSubmissionClient(sys.argv[1]).submit_job(entrypoint='true')"
    refused = subprocess.run(
        [sys.executable, "-c", code, head["address"]], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and ("401" in refused.stderr or "nauthori" in refused.stderr), refused.stderr[-2000:]
    assert not [sid for sid in head["jobs"].submission_ids() if sid.startswith("raysubmit")]


def test_a_poisoned_run_and_a_failing_submission_do_not_stop_the_queue(head, tmp_path):
    db = connect(f"sqlite:///{tmp_path / 'cp.db'}")
    missing = head["root"] / "no-such-corpus.txt"
    poisoned = {**SWEEP, "name": "poisoned", "arms": ["vanilla"], "unpaired": True,
                "run": {**SWEEP["run"], "data": {"kind": "text", "corpus": str(missing)}}}  # fmt: skip
    bad, _ = create_sweep(db, SweepRequest.model_validate(poisoned), allowed_roots=[head["root"]])
    healthy, _ = create_sweep(db, SweepRequest.model_validate(SWEEP))
    flaky_run = healthy.runs[0].id
    jobs = FlakySubmissions(head["jobs"], flaky_run, failures=2)
    rec = Reconciler(db, jobs, head["root"], max_concurrent=1, backoff_s=1.0,
                     job_env={"MYOPIA_DATA_DIR": str(head["root"])})  # fmt: skip
    until(lambda: {get_sweep(db, s.id).status for s in (bad, healthy)} <= {"succeeded", "failed"}, tick=rec.tick)

    (run,) = get_sweep(db, bad.id).runs
    assert run.status == "failed" and run.attempt == 0 and run.failures == 1  # no retry: it cannot succeed
    assert run.error.startswith("data error:") and str(missing) in run.error
    done = get_sweep(db, healthy.id)
    assert done.status == "succeeded", [(r.id, r.status, r.error) for r in done.runs]
    flaky = get_run(db, flaky_run)
    events = [e.message or "" for e in flaky.events]
    assert sum("No available agent" in m for m in events) == 2 and flaky.failures == 2  # the cause, twice
    assert any(m.startswith("retry in 1 s") for m in events) and any(m.startswith("retry in 2 s") for m in events)


def test_a_cluster_of_another_version_holds_the_run_until_it_is_upgraded(head, tmp_path):
    """The job's node runs an image of another version than the control plane's: the job refuses at once, and the
    run waits in the queue, not failed, no failure counted, until the cluster carries the control plane's version."""
    db = connect(f"sqlite:///{tmp_path / 'cp.db'}")
    sweep, _ = create_sweep(db, SweepRequest.model_validate({**SWEEP, "arms": ["vanilla"], "unpaired": True}))
    run_id = sweep.runs[0].id
    old_cluster = {"MYOPIA_DATA_DIR": str(head["root"]), "MYOPIA_EXPECTED_VERSION": "v2", "MYOPIA_VERSION": "v1"}
    rec = Reconciler(db, head["jobs"], head["root"], max_concurrent=1, backoff_s=0.5, job_env=old_cluster)
    until(lambda: any("waiting for the cluster's upgrade" in (e.message or "") for e in get_run(db, run_id).events),
          tick=rec.tick, timeout=240)  # fmt: skip
    held = get_run(db, run_id)
    assert held.status == "queued" and held.failures == 0 and "image is version v1" in held.events[-1].message
    rec.job_env = {**old_cluster, "MYOPIA_VERSION": "v2"}  # upgraded
    until(lambda: get_run(db, run_id).status in ("succeeded", "failed"), tick=rec.tick, timeout=300)
    assert get_run(db, run_id).status == "succeeded"


def embedded_serve(tmp_path: Path) -> ServeProcess:
    data = tmp_path / "data"
    cache = Path(os.environ.get("MYOPIA_DATA_DIR", Path.home() / ".myopia")) / "torch_extensions"
    return ServeProcess(tmp_path, MYOPIA_DATA_DIR=str(data), TORCH_EXTENSIONS_DIR=str(cache))


def head_state(serve: ServeProcess) -> dict:
    (state,) = (Path(serve.env["MYOPIA_DATA_DIR"])).glob("ray-head-*.json")
    return json.loads(state.read_text())


def running(serve: ServeProcess, sweep_id: str) -> bool:
    return any(r["status"] == "running" and (r["progress"] or {}).get("step", 0) > 0
               for r in serve.get(f"/v1/sweeps/{sweep_id}")["runs"])  # fmt: skip


def test_a_killed_control_plane_adopts_its_embedded_head(tmp_path):
    serve = embedded_serve(tmp_path).start()
    try:
        sweep_id = serve.post("/v1/sweeps", longer(300)).json()["id"]
        serve.until(lambda: running(serve, sweep_id), timeout=300)
        pid = head_state(serve)["pid"]
        serve.kill()
        assert psutil.pid_exists(pid)  # the head, and the job on it, live on
        serve.start()
        assert head_state(serve)["pid"] == pid  # adopted, not replaced
        done = serve.until(lambda: (s := serve.get(f"/v1/sweeps/{sweep_id}"))["status"] in ("succeeded", "failed")
                           and s, timeout=600)  # fmt: skip
    finally:
        serve.stop()
    assert done["status"] == "succeeded", [(r["id"], r["status"], r["error"]) for r in done["runs"]]
    assert all(r["attempt"] == 0 for r in done["runs"])  # one job per run: the first went on
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # stopped with serve


def test_a_killed_ray_head_is_restarted_and_its_lost_jobs_run_again(tmp_path):
    serve = embedded_serve(tmp_path).start()
    try:
        sweep_id = serve.post("/v1/sweeps", longer(300, arms=["myopic"], unpaired=True)).json()["id"]
        serve.until(lambda: running(serve, sweep_id), timeout=300)
        before = head_state(serve)
        for p in psutil.process_iter(["cmdline"]):  # the whole head: GCS, raylet, dashboard, the job's workers
            if any(before["temp_dir"] in part for part in p.info["cmdline"] or ()) or p.pid == before["pid"]:
                p.kill()
        # the API stays ready (listing and cancelling need no Ray); /readyz names Ray as down
        down = serve.until(lambda: (r := httpx_get(serve, "/readyz")).json().get("ray", "").startswith("down")
                           and r, timeout=60)  # fmt: skip
        assert down.status_code == 200 and serve.get(f"/v1/sweeps/{sweep_id}")["id"] == sweep_id
        serve.until(lambda: httpx_get(serve, "/readyz").json().get("ray") == "ok", timeout=180)  # restarted
        assert head_state(serve)["pid"] != before["pid"]
        done = serve.until(lambda: (s := serve.get(f"/v1/sweeps/{sweep_id}"))["status"] in ("succeeded", "failed")
                           and s, timeout=600)  # fmt: skip
        run = serve.get(f"/v1/runs/{done['runs'][0]['id']}")
    finally:
        serve.stop()
    assert done["status"] == "succeeded", [(r["id"], r["status"], r["error"]) for r in done["runs"]]
    assert run["attempt"] >= 1 and run["failures"] == 0  # resubmitted, not held against the run
    assert any("is gone" in (e["message"] or "") for e in run["events"])


def httpx_get(serve: ServeProcess, path: str):
    import httpx

    try:
        return httpx.get(serve.url + path, timeout=10)
    except httpx.HTTPError as e:
        raise AssertionError(f"the API went down: {e}") from None

"""Every status change is a compare-and-set on the row as it was read: a cancel that lands while the reconciler
submits a run wins (the run is never recorded as anything else, and its job is stopped), concurrent retries each
count an attempt, concurrent deletes of a schedule give one success. On SQLite and PostgreSQL, with the real job
server of a local Ray head."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cluster.jobs import Jobs
from services.errors import Conflict, NotFound
from services.planner import SweepRequest
from services.reconciler import Reconciler
from services.scheduler import ScheduleRequest, add_schedule, delete_schedule
from services.store import connect
from services.sweeps import cancel_run, cancel_sweep, create_sweep, get_run, get_sweep, retry_run
from tests.integration.serving import until
from tests.integration.test_reconciler import SWEEP

pytestmark = pytest.mark.slow

LONG = {**SWEEP, "run": {**SWEEP["run"], "train": {**SWEEP["run"]["train"], "steps": 5000}}}  # never ends by itself


class Racing(Jobs):
    """The head's real job server, with a cancel started in another thread at one moment of a submission:
    `claimed` (the reconciler asks whether the attempt's job exists, right after claiming the run) or `submitted`
    (the job exists, not yet recorded). The reconciler goes on at most `wait` s later, as a busy machine would
    interleave them; on SQLite a cancel that waits for the reconciler's write lands after its commit instead."""

    def __init__(self, jobs: Jobs, moment: str, cancel, wait: float = 1.0) -> None:
        self.__dict__.update(jobs.__dict__)
        self.moment, self.cancel, self.wait, self.thread = moment, cancel, wait, None

    def _race(self, moment: str) -> None:
        if moment == self.moment and self.thread is None:
            self.thread = threading.Thread(target=self.cancel)
            self.thread.start()
            self.thread.join(self.wait)

    def status(self, sid):
        self._race("claimed")
        return super().status(sid)

    def submit(self, sid, spec, env=None):
        super().submit(sid, spec, env)
        self._race("submitted")


def at_once(call, n: int, outcomes: tuple[str, str], refused: type[Exception]) -> Counter:
    """`call()` from n threads at once: how many succeeded and how many were refused (`outcomes`' names)."""

    def once(_: int) -> str:
        try:
            call()
            return outcomes[0]
        except refused:
            return outcomes[1]

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(once, range(n)))


def settle(rec: Reconciler, db, sweep_id: str) -> None:
    """Tick until no run of the sweep has a job that may still run."""
    until(lambda: not any(r.job_live for r in get_sweep(db, sweep_id).runs), tick=rec.tick, timeout=120)


def assert_cancelled_for_good(head, db, sweep_id: str) -> None:
    sweep = get_sweep(db, sweep_id)
    assert sweep.status == "cancelled"
    for run in sweep.runs:
        run = get_run(db, run.id)
        history = [e.status for e in run.events]
        assert run.status == "cancelled" and "cancelled" in history, history
        after = history[history.index("cancelled") :]
        assert set(after) == {"cancelled"}, f"{run.id} moved after its cancel: {history}"
        if run.submission_id and (job := head["jobs"].status(run.submission_id)) is not None:
            assert job.value in ("STOPPED", "FAILED"), f"{run.submission_id} is {job.value} after its run's cancel"


@pytest.mark.parametrize("moment", ["claimed", "submitted", "recorded"])
def test_a_cancel_that_lands_during_submission_wins(head, database_url, moment):
    db = connect(database_url)
    sweep, _ = create_sweep(db, SweepRequest.model_validate(LONG))
    racing = Racing(head["jobs"], moment, lambda: cancel_sweep(db, sweep.id))
    env = {"MYOPIA_DATA_DIR": str(head["root"])}
    rec = Reconciler(db, racing, head["root"], max_concurrent=1, job_env=env)
    rec.tick()
    if moment == "recorded":  # after the tick: the run is submitted, and its job stopped by the next ticks
        assert "submitted" in {r.status for r in get_sweep(db, sweep.id).runs}
        cancel_sweep(db, sweep.id)
    assert racing.thread is not None or moment == "recorded", "the race was not run"
    if racing.thread:
        racing.thread.join()
    settle(rec, db, sweep.id)
    assert_cancelled_for_good(head, db, sweep.id)


def test_a_submission_lost_to_a_cancel_leaves_no_mlflow_run_running(head, database_url, tmp_path):
    """The sweep's and pairs' MLflow runs are stored before the submission that loses its compare-and-set: the
    reporter ends them with the cancelled sweep (before, they were rolled back with it and stayed RUNNING)."""
    from mlflow.tracking import MlflowClient

    from services import sweep_tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    db = connect(database_url)
    sweep, _ = create_sweep(db, SweepRequest.model_validate(LONG), mlflow_uri=uri)
    racing = Racing(head["jobs"], "claimed", lambda: cancel_sweep(db, sweep.id))
    rec = Reconciler(db, racing, head["root"], max_concurrent=1, job_env={"MYOPIA_DATA_DIR": str(head["root"])})
    rec.tick()
    racing.thread.join()
    settle(rec, db, sweep.id)
    assert_cancelled_for_good(head, db, sweep.id)
    sweep_tracking.report(db)
    client = MlflowClient(uri)
    made = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`myopia.sweep` = '{sweep.id}'"
    )
    assert made, "the submission opened no MLflow run: the race was not run"
    histories = [[e.status for e in get_run(db, r.id).events] for r in get_sweep(db, sweep.id).runs]
    assert not any("submitted" in h for h in histories), f"the submission won: the race was not run {histories}"
    assert {r.info.status for r in made} == {"KILLED"}, [(r.data.tags["myopia.kind"], r.info.status) for r in made]
    stored = get_sweep(db, sweep.id)
    assert {r.info.run_id for r in made} == {stored.mlflow_run_id, *(p.mlflow_run_id for p in stored.pairs)}


def test_a_cancel_at_any_offset_wins(head, database_url):
    """The reported race: a run cancelled 0-300 ms after its sweep is queued, while the reconciler ticks."""
    db = connect(database_url)
    rec = Reconciler(db, head["jobs"], head["root"], max_concurrent=1, job_env={"MYOPIA_DATA_DIR": str(head["root"])})
    rng = random.Random(22)
    for offset in [0.0, 0.005, 0.02, *(rng.uniform(0, 0.3) for _ in range(3))]:
        sweep, _ = create_sweep(db, SweepRequest.model_validate({**LONG, "arms": ["vanilla"], "unpaired": True}))
        run_id = sweep.runs[0].id
        canceller = threading.Timer(offset, lambda: cancel_run(db, run_id))  # noqa: B023 - started and joined here
        canceller.start()
        deadline = time.monotonic() + offset + 0.5
        while time.monotonic() < deadline:
            rec.tick()
        canceller.join()
        settle(rec, db, sweep.id)
        assert_cancelled_for_good(head, db, sweep.id)


def test_concurrent_retries_and_cancels_count_every_attempt(database_url):
    db = connect(database_url)
    sweep, _ = create_sweep(db, SweepRequest.model_validate({**SWEEP, "arms": ["vanilla"], "unpaired": True}))
    run_id = sweep.runs[0].id
    cancel_run(db, run_id)

    def call(i: int) -> str:
        try:
            (retry_run if i % 2 else cancel_run)(db, run_id)
            return "retried" if i % 2 else "cancelled"
        except Conflict:
            return "refused"

    with ThreadPoolExecutor(16) as pool:
        answers = Counter(pool.map(call, range(60)))
    run = get_run(db, run_id)
    retries = [e for e in run.events if e.message == "retry requested"]
    assert answers["retried"] >= 1 and answers["retried"] == run.attempt == len(retries), (answers, run.attempt)


def test_concurrent_deletes_of_a_schedule_give_one_success(database_url):
    db = connect(database_url)
    schedule = add_schedule(db, ScheduleRequest.model_validate({"name": "n", "cron": "0 3 * * *", "template": SWEEP}))

    answers = at_once(lambda: delete_schedule(db, schedule.id), 20, ("deleted", "not found"), NotFound)
    assert answers == Counter({"deleted": 1, "not found": 19}), answers


def test_a_placed_run_that_makes_no_progress_is_failed_and_frees_its_slot(head, tmp_path):
    """A run waiting for workers the head has not free (2 × 2 CPUs on 2) is queueing, not stalled: it is left alone.
    A placed run whose rank 0 is frozen (SIGSTOP) past the timeout is failed with the reason, its job stopped, and
    the next sweep's run takes the slot."""
    db = connect(f"sqlite:///{tmp_path / 'cp.db'}")
    one = {**LONG, "arms": ["vanilla"], "unpaired": True}
    waiting, _ = create_sweep(db, SweepRequest.model_validate(
        {**one, "run": {**one["run"], "resources": {"workers": 2, "cpus_per_worker": 2}}}))  # fmt: skip
    env = {"MYOPIA_DATA_DIR": str(head["root"])}
    rec = Reconciler(db, head["jobs"], head["root"], max_concurrent=1, max_attempts=1, job_env=env, stall_timeout_s=6)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rec.tick()
        time.sleep(0.5)
    assert get_sweep(db, waiting.id).runs[0].status in ("submitted", "running")  # still waiting, not failed
    cancel_sweep(db, waiting.id)
    settle(rec, db, waiting.id)

    hung, _ = create_sweep(db, SweepRequest.model_validate(one))
    later, _ = create_sweep(db, SweepRequest.model_validate(one))
    run_id = hung.runs[0].id
    until(lambda: (get_run(db, run_id).progress or {}).get("step", 0) >= 1, tick=rec.tick, timeout=300)
    pid = get_run(db, run_id).progress["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        until(lambda: get_sweep(db, hung.id).status == "failed", tick=rec.tick, timeout=120)
        run = get_run(db, run_id)
        assert "no progress for" in run.error and "training" in run.error, run.error
        job_ended = ("STOPPED", "FAILED")
        until(lambda: head["jobs"].status(run.submission_id).value in job_ended, tick=rec.tick, timeout=180)
        until(lambda: get_sweep(db, later.id).runs[0].status in ("submitted", "running"), tick=rec.tick, timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    cancel_sweep(db, later.id)
    settle(rec, db, later.id)


def test_a_request_the_cluster_can_never_place_is_refused(head, tmp_path):
    """The embedded head's nodes (one, 2 CPUs, no GPU) bound what a request may ask, field by field."""
    from services.settings import Settings
    from tests.integration.test_api import Server

    srv = Server(Settings(data_dir=tmp_path, mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"), jobs=head["jobs"])
    srv.start()
    try:
        for resources, field in (
            ({"gpus_per_worker": 1}, "run.resources.gpus_per_worker"),
            ({"workers": 1024, "cpus_per_worker": 512}, "run.resources.cpus_per_worker"),
            ({"workers": 3, "cpus_per_worker": 1}, "run.resources.workers"),
            ({"workers": 2, "placement": "STRICT_SPREAD", "cpus_per_worker": 1}, "run.resources.placement"),
        ):
            body = {
                **SWEEP,
                "run": {**SWEEP["run"], "resources": resources, "train": {"global_batch": 3072, "micro_batch": 1}},
            }
            r = httpx.post(f"{srv.url}/v1/sweeps", json=body, timeout=60)
            assert r.status_code == 422 and field in [d["field"] for d in r.json()["detail"]], (resources, r.text)
            assert "embedded Ray head" in r.text
            schedule = {"name": "n", "cron": "0 3 * * *", "template": body}
            r = httpx.post(f"{srv.url}/v1/schedules", json=schedule, timeout=60)
            assert r.status_code == 422 and f"template.{field}" in [d["field"] for d in r.json()["detail"]], r.text
        huge = {
            **SWEEP,
            "run": {**SWEEP["run"], "train": {"micro_batch": 65_536, "global_batch": 65_536, "seq_len": 2048}},
        }
        r = httpx.post(f"{srv.url}/v1/sweeps", json=huge, timeout=60)
        assert r.status_code == 422 and "run.train.micro_batch" in [d["field"] for d in r.json()["detail"]], r.text
        assert httpx.get(f"{srv.url}/v1/sweeps", timeout=30).json()["items"] == []  # nothing stored
    finally:
        srv.stop()


def race(*calls) -> list:
    """The calls at once, each in its thread; what each returned or raised."""
    barrier = threading.Barrier(len(calls))

    def go(call):
        barrier.wait()
        try:
            return call()
        except (Conflict, NotFound) as e:
            return e

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(go, calls))


def test_a_retry_racing_a_delete_or_the_status_derivation_is_never_lost(database_url):
    """Many times over: a retry of a cancelled run against the deletion of its sweep (never both succeed), and
    against the derivation of its sweep's status (never a sweep ended over a queued run)."""
    from services.store import derive_sweep_status
    from services.sweeps import delete_sweep

    db = connect(database_url)
    one = SweepRequest.model_validate({**SWEEP, "arms": ["vanilla"], "unpaired": True})
    both = Counter()
    for _ in range(15):
        sweep, _ = create_sweep(db, one)
        run_id = sweep.runs[0].id
        cancel_run(db, run_id)
        retried, deleted = race(lambda: retry_run(db, run_id), lambda: delete_sweep(db, sweep.id))  # noqa: B023
        ok = (not isinstance(retried, Exception), not isinstance(deleted, Exception))
        both[ok] += 1
        assert ok != (True, True), "a retry answered 200 on a sweep that was deleted"
        if ok[0]:
            assert get_run(db, run_id).status == "queued"

        sweep, _ = create_sweep(db, one)
        run_id = sweep.runs[0].id
        cancel_run(db, run_id)

        def derive(sweep_id=sweep.id):
            with db.begin() as s:
                derive_sweep_status(s, sweep_id)

        race(lambda: retry_run(db, run_id), derive)  # noqa: B023
        assert (get_run(db, run_id).status, get_sweep(db, sweep.id).status) == ("queued", "running")
    assert sum(both.values()) == 15


def test_concurrent_schedule_creations_never_pass_the_cap(database_url):
    db = connect(database_url)
    request = ScheduleRequest.model_validate({"name": "n", "cron": "0 3 * * *", "template": SWEEP})

    answers = at_once(lambda: add_schedule(db, request, max_schedules=3), 12, ("added", "refused"), Conflict)
    assert answers == Counter({"added": 3, "refused": 9}), answers

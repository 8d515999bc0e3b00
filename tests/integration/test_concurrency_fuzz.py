"""A Hypothesis state machine over the REST API (real uvicorn, a real SQLite store, no Ray): sweeps are created,
then hit by bursts of concurrent cancels, retries and deletes. After every step: no 5xx, each run's attempt counts
exactly the retries answered 200, an ended sweep has no open run, a deleted sweep is gone whole, and of the
concurrent deletes of one sweep at most one succeeded. Derandomized: the same steps on every run of the suite."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from services.settings import Settings
from tests.integration.test_api import Server

pytestmark = pytest.mark.slow

REQUEST = {
    "name": "fuzz",
    "sizes": ["14m"],
    "seeds": [0],
    "run": {"model": {"overrides": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2}},
            "data": {"kind": "synthetic"}, "train": {"steps": 5}},
}  # fmt: skip
OPEN = {"queued", "submitted", "running"}
SENT: Counter = Counter()  # status codes of every request of the test, for its report


class ControlPlane(RuleBasedStateMachine):
    url: str = ""
    sweeps = Bundle("sweeps")

    def __init__(self) -> None:
        super().__init__()
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.retried: Counter = Counter()  # run id -> retries answered 200
        self.deleted: set[str] = set()
        self.known: set[str] = set()

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        r = self.client.request(method, path, **kw)
        SENT[r.status_code] += 1
        assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r

    @rule(target=sweeps, arms=st.sampled_from([["vanilla", "myopic"], ["vanilla", "myopic", "bigram"]]))
    def create(self, arms):
        r = self.call("POST", "/v1/sweeps", json={**REQUEST, "arms": arms})
        assert r.status_code == 201
        self.known.add(r.json()["id"])
        return r.json()["id"]

    @rule(
        sweep=sweeps,
        burst=st.lists(st.sampled_from(["cancel_sweep", "cancel_run", "retry_run", "delete"]), min_size=1, max_size=12),
        which=st.integers(0, 2),
    )
    def burst(self, sweep, burst, which):
        if sweep in self.deleted:
            return
        runs = [r["id"] for r in self.call("GET", f"/v1/sweeps/{sweep}").json()["runs"]]
        run = runs[which % len(runs)]
        paths = {
            "cancel_sweep": ("POST", f"/v1/sweeps/{sweep}/cancel"),
            "cancel_run": ("POST", f"/v1/runs/{run}/cancel"),
            "retry_run": ("POST", f"/v1/runs/{run}/retry"),
            "delete": ("DELETE", f"/v1/sweeps/{sweep}"),
        }
        with ThreadPoolExecutor(len(burst)) as pool:
            answers = list(pool.map(lambda op: (op, self.call(*paths[op]).status_code), burst))
        self.retried[run] += sum(1 for op, code in answers if op == "retry_run" and code == 200)
        deletes = [code for op, code in answers if op == "delete" and code in (200, 204)]
        assert len(deletes) <= 1, answers
        if deletes:
            self.deleted.add(sweep)

    @invariant()
    def consistent(self):
        for sweep in self.known:
            r = self.call("GET", f"/v1/sweeps/{sweep}")
            if sweep in self.deleted:
                assert r.status_code == 404
                continue
            body = r.json()
            if body["status"] in ("cancelled", "failed", "succeeded"):  # an ended sweep has no open run
                assert not [x["id"] for x in body["runs"] if x["status"] in OPEN], body
            for run in body["runs"]:
                assert run["attempt"] == self.retried[run["id"]], (run["id"], run["attempt"], self.retried[run["id"]])

    def teardown(self):
        self.client.close()


def test_concurrent_create_cancel_retry_delete_keep_the_store_consistent(tmp_path):
    srv = Server(Settings(data_dir=tmp_path, mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")).start()
    ControlPlane.url = srv.url
    SENT.clear()
    try:
        run_state_machine_as_test(
            ControlPlane,
            settings=settings(
                max_examples=12,
                stateful_step_count=10,
                derandomize=True,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        srv.stop()
    print(f"requests by status: {dict(sorted(SENT.items()))}")
    assert sum(SENT.values()) > 200 and not [c for c in SENT if c >= 500]

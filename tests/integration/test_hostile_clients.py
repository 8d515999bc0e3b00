"""A hostile but fair client against the REST API over real HTTP (uvicorn on loopback, a real SQLite store): fuzzing
from the OpenAPI schema, paths and format strings, oversized bodies, concurrent idempotency keys, pagination, and a
store that goes read-only, missing or corrupt. No Ray here: the control plane runs without a job server."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from services.settings import Settings
from tests.integration.test_api import REQUEST, Server

FUZZ_CASES = 1000
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(tmp_path):
    srv = Server(Settings(data_dir=tmp_path, api_token=TOKEN, mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    yield srv.start()
    srv.stop()


def test_fuzzed_requests_never_get_a_5xx_and_every_422_names_its_field(server):
    """Schemathesis generates valid and invalid requests for every operation of the OpenAPI schema."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    per_operation = -(-FUZZ_CASES // len(operations))
    outcomes: Counter = Counter()
    bad: list[str] = []
    lock = threading.Lock()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(max_examples=per_operation, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))  # fmt: skip
                @given(case=op.as_strategy(generation_mode=mode))
                def call(case) -> None:
                    kwargs = case.as_transport_kwargs(base_url=server.url, headers=AUTH)
                    r = client.request(kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                                       headers=kwargs.get("headers"), content=_body(kwargs))  # fmt: skip
                    label = case.operation.label
                    with lock:
                        outcomes[(label, r.status_code)] += 1
                    if r.status_code >= 500:
                        bad.append(f"{label} → {r.status_code}: {r.text[:300]}")
                    elif r.status_code == 422:
                        detail = r.json().get("detail") or []
                        if not detail or not all(d.get("field") for d in detail):
                            bad.append(f"{label} → 422 without a field: {r.text[:300]}")
                    elif r.status_code >= 400 and not {"error", "message"} <= r.json().keys():
                        bad.append(f"{label} → {r.status_code} without error/message: {r.text[:300]}")

                try:
                    call()
                except Unsatisfiable:  # no invalid request exists for an operation without inputs (/healthz)
                    assert mode == GenerationMode.NEGATIVE
    total = sum(outcomes.values())
    by_status = Counter()
    for (_, status), n in outcomes.items():
        by_status[status] += n
    print(f"\nfuzzed {total} requests over {len(operations)} operations: {dict(sorted(by_status.items()))}")
    assert total >= FUZZ_CASES and not bad, bad[:10]


def _body(kwargs: dict) -> bytes | None:
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    return kwargs.get("content") or kwargs.get("data")


@pytest.mark.parametrize(
    "run,field",
    [
        ({"data": {"kind": "text", "corpus": "/etc/passwd"}}, "run.data.corpus"),
        ({"data": {"kind": "text", "corpus": "/"}}, "run.data.corpus"),
        ({"data": {"kind": "text", "corpus": "../../../../etc"}}, "run.data.corpus"),
        ({"data": {"kind": "hf", "dataset": "/root"}}, "run.data.dataset"),
        ({"data": {"kind": "hf", "dataset": "org/../../etc"}}, "run.data.dataset"),
        ({"protocol": {"kind": "finetune", "checkpoint": "/home"}}, "run.protocol.checkpoint"),
        ({"protocol": {"kind": "finetune", "checkpoint": "{size.__class__.__mro__}"}}, "run.protocol.checkpoint"),
        ({"protocol": {"kind": "finetune", "checkpoint": "{size:>80000000}"}}, "run.protocol.checkpoint"),
        ({"model": {"overrides": {"num_hidden_layers": 128, "hidden_size": 16384}}}, "run.model.overrides"),
        ({"model": {"overrides": {"hidden_dropout": 7.0}}}, "run.model.overrides.hidden_dropout"),
        ({"train": {"steps": 10**9}}, "run.train.steps"),
        ({"train": {"global_batch": 10**9}}, "run.train.global_batch"),
        ({"optimizer": {"lr": "inf"}}, "run.optimizer.lr"),
    ],
)
def test_requests_are_data_never_code_or_paths(server, run, field):
    r = httpx.post(f"{server.url}/v1/sweeps", json={**REQUEST, "run": run}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]], r.json()
    assert httpx.get(f"{server.url}/v1/sweeps", headers=AUTH).json()["items"] == []  # nothing stored


def test_a_path_under_the_data_dir_is_allowed(server):
    corpus = server.settings.data_dir / "my-corpus.txt"
    corpus.write_text("a small corpus\n\nof two paragraphs\n")
    r = httpx.post(
        f"{server.url}/v1/sweeps",
        json={**REQUEST, "run": {"data": {"kind": "text", "corpus": str(corpus)}}},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text


def test_bounds_on_the_axes(server):
    for body, field in (({"seeds": list(range(101))}, "seeds"), ({"seeds": [2**32]}, "seeds.0"),
                        ({"seeds": [-1]}, "seeds.0"), ({"preset": {"a": 1}}, "preset"),
                        ({"lr_scale": 0}, "lr_scale")):  # fmt: skip
        r = httpx.post(f"{server.url}/v1/sweeps", json={**REQUEST, **body}, headers=AUTH)
        assert r.status_code == 422 and field in [d["field"] for d in r.json()["detail"]], (body, r.text)


def test_auth_comes_before_the_body_and_bodies_are_capped(server):
    big = b'{"name": "' + b"x" * 2_000_000 + b'"}'
    r = httpx.post(f"{server.url}/v1/sweeps", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 401  # refused on the header alone
    r = httpx.post(f"{server.url}/v1/sweeps", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunks():  # no Content-Length: the cap holds while reading
        for _ in range(40):
            yield b"x" * 50_000

    r = httpx.post(f"{server.url}/v1/sweeps", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no token


def test_idempotency_means_it(server):
    def post(key: str, body: dict = REQUEST) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/sweeps", json=body, headers={**AUTH, "Idempotency-Key": key}, timeout=120)

    with ThreadPoolExecutor(32) as pool:
        same = list(pool.map(lambda _: post("one-key"), range(100)))
        different = list(pool.map(lambda i: post(f"key-{i}"), range(100)))
    assert Counter(r.status_code for r in same) == Counter({201: 1, 200: 99}), Counter(r.status_code for r in same)
    assert len({r.json()["id"] for r in same}) == 1
    assert all(r.status_code == 201 for r in different) and len({r.json()["id"] for r in different}) == 100
    conflict = post("one-key", {**REQUEST, "seeds": [7]})
    assert conflict.status_code == 409 and "another request" in conflict.json()["message"]
    assert post("", REQUEST).status_code == 201 and post("", REQUEST).status_code == 201  # an empty key is no key


def test_lists_come_a_page_at_a_time_with_utc_times(server):
    ids = [httpx.post(f"{server.url}/v1/sweeps", json=REQUEST, headers=AUTH).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = httpx.get(f"{server.url}/v1/sweeps", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                         headers=AUTH).json()  # fmt: skip
        seen += [s["id"] for s in page["items"]]
        assert all("runs" not in s and s["runs_by_status"] == {"queued": 8} for s in page["items"])
        assert all(s["created_at"].endswith("+00:00") or s["created_at"].endswith("Z") for s in page["items"])
        if not (cursor := page["next_cursor"]):
            break
    assert seen == ids[::-1]
    runs = httpx.get(f"{server.url}/v1/sweeps/{ids[0]}/runs", params={"limit": 3}, headers=AUTH).json()
    rest = httpx.get(f"{server.url}/v1/sweeps/{ids[0]}/runs", params={"cursor": runs["next_cursor"]}, headers=AUTH)
    assert len(runs["items"]) == 3 and len(rest.json()["items"]) == 5 and rest.json()["next_cursor"] is None
    well_formed = base64.urlsafe_b64encode(json.dumps(["x", "y"]).encode()).decode()  # the shape, not a time
    for cursor in ("garbage", well_formed):
        for path in ("/v1/sweeps", "/v1/schedules"):
            bad = httpx.get(f"{server.url}{path}", params={"cursor": cursor, "limit": 2}, headers=AUTH)
            assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "query.cursor", (path, bad.text)


def test_a_schedule_that_never_fires_is_refused(server):
    r = httpx.post(f"{server.url}/v1/schedules", json={"name": "n", "cron": "0 0 30 2 *", "template": REQUEST},
                   headers=AUTH)  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "cron" and "never fires" in r.text


def _not_ready(server) -> str:
    """The reason, as the token's holder reads it; anonymous callers get only the names of what is down."""
    anonymous = httpx.get(f"{server.url}/readyz")
    assert anonymous.status_code == 503 and anonymous.json()["message"] == "database down", anonymous.text
    r = httpx.get(f"{server.url}/readyz", headers=AUTH)
    assert r.status_code == 503, r.text
    return r.json()["message"]


@contextmanager
def read_only(db_file: Path):
    """The database file, its WAL files and its folder made unwritable: `chattr +i` where the process is root (root
    ignores file modes), else chmod."""
    paths = [p for p in (db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-shm"), db_file.parent) if p.exists()]
    root = os.geteuid() == 0 and shutil.which("chattr")
    for p in paths:
        subprocess.run(["chattr", "+i", str(p)], check=True) if root else p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p in paths:
            subprocess.run(["chattr", "-i", str(p)], check=True) if root else p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_broken_store_is_reported_and_never_written_to(server, tmp_path):
    db_file = Path(server.settings.database.removeprefix("sqlite:///"))
    assert httpx.get(f"{server.url}/readyz").json()["database"] == "ok"
    made = httpx.post(f"{server.url}/v1/sweeps", json=REQUEST, headers=AUTH).json()["id"]

    with read_only(db_file):
        assert "database" in _not_ready(server)
        r = httpx.post(f"{server.url}/v1/sweeps", json=REQUEST, headers=AUTH)
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
    assert httpx.get(f"{server.url}/readyz").status_code == 200

    moved = tmp_path / "moved.db"
    db_file.rename(moved)  # deleted (moved away) under the running control plane
    assert "deleted or replaced" in _not_ready(server)
    r = httpx.post(f"{server.url}/v1/sweeps", json=REQUEST, headers=AUTH)
    assert r.status_code == 503 and not db_file.exists()  # refused, and no ghost file made
    moved.rename(db_file)
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert httpx.get(f"{server.url}/v1/sweeps/{made}", headers=AUTH).status_code == 200
    assert len(httpx.get(f"{server.url}/v1/sweeps", headers=AUTH).json()["items"]) == 1  # nothing else stored

    with db_file.open("r+b") as f:  # corrupted in place (the same file): every query fails, and says why
        f.write(b"this is not a database" * 200)
    assert "database" in _not_ready(server)
    assert httpx.post(f"{server.url}/v1/sweeps", json=REQUEST, headers=AUTH).status_code == 503

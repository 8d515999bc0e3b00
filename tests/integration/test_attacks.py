"""The attack that found issue 22's defects, one repro per test, over real HTTP (uvicorn on loopback, a real SQLite
store, no Ray): amplifying bodies, crons that fire every tick, squatted scheduler keys, ambiguous credentials, NUL
bytes, log offsets past any file, pairless sweeps, unbounded schedules, concurrent plots."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from services.settings import Settings
from tests.integration.test_api import REQUEST, Server

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(tmp_path):
    settings = Settings(
        data_dir=tmp_path, api_token=TOKEN, mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", max_schedules=3
    )
    srv = Server(settings).start()
    yield srv
    srv.stop()


def post(server, path: str, body, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**AUTH, "Content-Type": "application/json", **headers}
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=60)


def test_amplifying_bodies_get_short_answers_and_never_stall_the_probes(server):
    many_sizes = {**REQUEST, "lr_by_size": {f"s{i}": -1 for i in range(60_000)}}  # 0.6 MB
    many_keys = {**REQUEST, **{f"k{i}": 0 for i in range(70_000)}}
    for body in (many_sizes, many_keys):  # refused by their shape, before validation
        r = post(server, "/v1/sweeps", body)
        assert r.status_code == 413 and "at most 10,000 JSON values" in r.text and len(r.content) < 500
    r = post(server, "/v1/sweeps", {**REQUEST, "lr_by_size": {f"s{i}": -1 for i in range(5_000)}})
    assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)
    assert [d["field"] for d in r.json()["detail"]] == ["lr_by_size"] and "at most" in r.text
    r = post(server, "/v1/sweeps", {**REQUEST, **{f"k{i}": 0 for i in range(5_000)}})
    assert r.status_code == 422 and r.json()["error_count"] == 5_000 and len(r.json()["detail"]) == 20
    assert len(r.content) < 10_000 and "4,980 more errors" in r.json()["message"]

    latencies, done = [], threading.Event()

    def probe() -> None:
        while not done.is_set():
            began = time.perf_counter()
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
            latencies.append(time.perf_counter() - began)
            time.sleep(0.01)

    # encoded first: the server shares this process (and its GIL) with the test; the last two pass the guard and
    # are validated (in a worker thread) into 422s
    invalid = {**REQUEST, "lr_by_size": {f"s{i}": -1 for i in range(4_000)}, **{f"k{i}": 0 for i in range(4_000)}}
    hostile = [json.dumps(body).encode() for body in (many_sizes, many_keys, invalid, invalid)] * 3
    prober = threading.Thread(target=probe)
    prober.start()
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda body: post(server, "/v1/sweeps", body), hostile))
    done.set()
    prober.join()
    assert [a.status_code for a in answers] == [413, 413, 422, 422] * 3
    assert len(latencies) >= 3 and max(latencies) < 0.25, sorted(latencies)[-3:]


def test_bodies_are_validated_off_the_event_loop(server, monkeypatch):
    """FastAPI validates a declared body on the loop; here a sync dependency does it in a worker thread."""
    import asyncio

    from api import body

    on_loop, validate = [], body.validate

    def watched(model, request):
        try:
            asyncio.get_running_loop()
            on_loop.append(model.__name__)
        except RuntimeError:  # no loop in this thread: a worker
            on_loop.append(None)
        return validate(model, request)

    monkeypatch.setattr(body, "validate", watched)
    assert post(server, "/v1/sweeps", REQUEST).status_code == 201
    made = post(server, "/v1/schedules", {"name": "n", "cron": "0 3 * * *", "template": REQUEST}).json()
    r = httpx.patch(f"{server.url}/v1/schedules/{made['id']}", json={"paused": True}, headers=AUTH)
    assert r.status_code == 200 and r.json()["paused"] is True
    assert on_loop == [None, None, None]


@pytest.mark.parametrize(
    "content, content_type, field, why",
    [
        (b"", "application/json", "body", "Field required"),
        (b'{"sizes": [', "application/json", "body", "JSON decode error"),
        (json.dumps(REQUEST).encode(), "text/plain", "body", "valid dictionary"),  # no CORS-simple posts
        (json.dumps(REQUEST).encode(), None, "body", "valid dictionary"),
        (b"[1, 2]", "application/json", "body", "valid dictionary"),
        (b"null", "application/json", "body", "Field required"),
        (b'{"name": "\xff"}', "application/json", "body", "JSON decode error"),  # not UTF-8
        (json.dumps({**REQUEST, "seeds": "x"}).encode(), "application/json; charset=utf-8", "seeds", "valid list"),
        (json.dumps({**REQUEST, "seeds": "x"}).encode(), "application/vnd.api+json", "seeds", "valid list"),
    ],
)
def test_bodies_that_are_not_a_request_are_named(server, content, content_type, field, why):
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    r = httpx.post(f"{server.url}/v1/sweeps", content=content, headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == field and why in r.text, r.text


@pytest.mark.parametrize(
    "cron, why",
    [("* * * * * *", "five fields"), ("* * * * * * 2027", "five fields"), ("0 " * 200_000, "at most 100")],
)
def test_crons_have_five_fields_and_a_length(server, cron, why):
    r = post(server, "/v1/schedules", {"name": "n", "cron": cron, "template": REQUEST})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "cron", r.text[:500]
    assert why in r.text or "100 characters" in r.text


def test_schedules_are_capped(server):
    made = [
        post(server, "/v1/schedules", {"name": f"n{i}", "cron": "* * * * *", "template": REQUEST}) for i in range(4)
    ]
    assert [r.status_code for r in made] == [201, 201, 201, 409] and "MYOPIA_MAX_SCHEDULES" in made[-1].text
    httpx.delete(f"{server.url}/v1/schedules/{made[0].json()['id']}", headers=AUTH)
    assert post(server, "/v1/schedules", {"name": "again", "cron": "* * * * *", "template": REQUEST}).status_code == 201


def test_a_client_cannot_squat_the_schedulers_keys(server):
    for key in ("schedule:sch-0123456789ab:1:2026-12-06T03:00:00+00:00", "Schedule:x"):
        r = post(server, "/v1/sweeps", REQUEST, **{"Idempotency-Key": key})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "header.Idempotency-Key", r.text
    assert post(server, "/v1/sweeps", REQUEST, **{"Idempotency-Key": "my-schedule:1"}).status_code == 201


def test_ambiguous_credentials_nul_bytes_and_offsets_are_refused(server):
    two = httpx.Headers([("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer wrong")])
    r = httpx.get(f"{server.url}/v1/sweeps", headers=two)
    assert r.status_code == 400 and "more than one Authorization" in r.text
    for path in ("/v1/sweeps/sw-1%00x", "/v1/sweeps?cursor=a%00b", "/v1/runs/r%00/logs"):
        r = httpx.get(f"{server.url}{path}", headers=AUTH)
        assert r.status_code == 400 and "NUL" in r.text, (path, r.text)
    for body in (
        {**REQUEST, "name": "a\x00b"},
        {**REQUEST, "run": {"data": {"kind": "text", "corpus": "/tmp/a\x00b"}}},
    ):
        r = post(server, "/v1/sweeps", body)
        assert r.status_code == 400 and "NUL" in r.text, r.text
    sweep = post(server, "/v1/sweeps", REQUEST).json()
    run = sweep["runs"][0]["id"]
    r = httpx.get(f"{server.url}/v1/runs/{run}/logs", params={"offset": 2**62}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query.offset"
    assert httpx.get(f"{server.url}/v1/runs/{run}/logs", params={"offset": 2**53}, headers=AUTH).status_code == 200


def test_a_sweep_makes_pairs_unless_asked_not_to(server):
    r = post(server, "/v1/sweeps", {**REQUEST, "arms": ["bigram"]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "arms" and "unpaired" in r.text
    assert post(server, "/v1/sweeps", {**REQUEST, "arms": ["bigram"], "unpaired": True}).status_code == 201


def test_concurrent_plots_all_render(server):
    sweep = post(server, "/v1/sweeps", REQUEST).json()["id"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: httpx.get(f"{server.url}/v1/sweeps/{sweep}/results.png", headers=AUTH, timeout=120),
                     range(24))
        )  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 24
    assert all(a.content.startswith(b"\x89PNG") for a in answers)


def test_a_deleted_write_ahead_log_loses_nothing_acknowledged(tmp_path):
    """`myopia serve` (a real process; no cluster: the API does not need one) has its SQLite log deleted under it:
    writes are refused from then on, and after a SIGKILL and a restart every acknowledged sweep is there."""
    from tests.integration.serving import ServeProcess

    serve = ServeProcess(tmp_path, RAY_ADDRESS="http://127.0.0.1:9")  # nothing listens: the runs just wait
    serve.start()
    try:
        acknowledged = [serve.post("/v1/sweeps", {**REQUEST, "name": f"s{i}"}) for i in range(5)]
        assert [r.status_code for r in acknowledged] == [201] * 5
        wal = tmp_path / "cp.db-wal"
        assert wal.exists()
        wal.unlink()
        refused = serve.post("/v1/sweeps", {**REQUEST, "name": "after"})
        assert refused.status_code == 503 and "write-ahead log" in refused.text, refused.text
        assert httpx.get(f"{serve.url}/readyz", timeout=30).status_code == 503
        serve.kill()  # no shutdown of any kind
        serve.start()
        for r in acknowledged:
            assert httpx.get(f"{serve.url}/v1/sweeps/{r.json()['id']}", timeout=30).status_code == 200
        assert [s["name"] for s in serve.get("/v1/sweeps")["items"]] == [f"s{i}" for i in range(5)][::-1]
    finally:
        serve.stop()


def test_links_out_of_a_corpus_and_the_stores_own_file_are_refused_at_submission(server, tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    (book / "a.txt").write_text("One fish. " * 50)
    (book / "passwd").symlink_to("/etc/passwd")
    for corpus, why in ((book, "outside the corpus folder"), (tmp_path / "myopia.db", "is not a text file")):
        body = {**REQUEST, "run": {**REQUEST["run"], "data": {"kind": "text", "corpus": str(corpus)}}}
        r = post(server, "/v1/sweeps", body)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "run.data.corpus" and why in r.text, r.text
    (book / "passwd").unlink()
    body = {**REQUEST, "run": {**REQUEST["run"], "data": {"kind": "text", "corpus": str(book)}}}
    assert post(server, "/v1/sweeps", body).status_code == 201


def test_the_probe_survives_the_store_made_immutable_and_writable_again(server, tmp_path):
    """The repro of the Bus error: the store's files made immutable and writable again, four times, with /readyz and
    writes hammered meanwhile. The probe runs in a child process, so whatever SQLite does under it, the server
    answers; acknowledged sweeps are all there at the end."""
    from tests.integration.test_hostile_clients import read_only

    db_file = Path(server.settings.database.removeprefix("sqlite:///"))
    made = []
    for _ in range(4):
        made.append(post(server, "/v1/sweeps", REQUEST).json()["id"])
        with read_only(db_file):
            for _ in range(5):
                assert httpx.get(f"{server.url}/readyz", timeout=60).status_code == 503
                assert post(server, "/v1/sweeps", REQUEST).status_code == 503
        assert httpx.get(f"{server.url}/readyz", timeout=60).status_code == 200
    assert all(httpx.get(f"{server.url}/v1/sweeps/{i}", headers=AUTH).status_code == 200 for i in made)


def test_every_schema_reference_resolves():
    """The bodies validated off the loop are named in the OpenAPI schema by reference (api/body.py): each `$ref`
    resolves, and each route that takes a body names its model."""
    from api.app import create_app

    schema = create_app().openapi()
    text = json.dumps(schema)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= schema["components"]["schemas"].keys(), refs - schema["components"]["schemas"].keys()
    ops = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
    bodies = {
        (path, method): op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for path, method, op in ops
        if "requestBody" in op
    }
    assert bodies == {("/v1/sweeps", "post"): "SweepRequest", ("/v1/schedules", "post"): "ScheduleRequest",
                      ("/v1/schedules/{schedule_id}", "patch"): "ScheduleEdit"}  # fmt: skip

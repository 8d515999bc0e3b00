"""The REST API over real HTTP: uvicorn on loopback, a real SQLite store migrated by Alembic."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.demo import free_port
from services.settings import Settings
from trainers.spec import RunSpec

REQUEST = {
    "name": "ladder",
    "sizes": ["14m", "70m"],
    "seeds": [0, 1],
    "run": {"data": {"kind": "text", "corpus": "wiki"}, "train": {"steps": 10}},
}


class Server:
    """uvicorn in a thread; stop() and start() again on the same database, as a restarted control plane."""

    def __init__(self, settings: Settings, jobs=None) -> None:
        self.settings, self.jobs = settings, jobs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        config = uvicorn.Config(
            create_app(self.settings, self.jobs), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def server(tmp_path):
    srv = Server(Settings(data_dir=tmp_path, mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")).start()
    yield srv
    srv.stop()


def test_submit_list_get_cancel(server):
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/v1/sweeps", json=REQUEST)
        assert r.status_code == 201, r.text
        sweep = r.json()
        assert sweep["status"] == "queued" and len(sweep["runs"]) == 8
        assert {(x["size"], x["seed"], x["arm"]) for x in sweep["runs"]} == {
            (s, seed, arm) for s in ("14m", "70m") for seed in (0, 1) for arm in ("vanilla", "myopic")
        }
        assert all(x["status"] == "queued" for x in sweep["runs"])
        assert [x["id"] for x in c.get("/v1/sweeps").json()["items"]] == [sweep["id"]]
        assert c.get(f"/v1/sweeps/{sweep['id']}").json()["runs"] == sweep["runs"]
        run = c.get(f"/v1/runs/{sweep['runs'][0]['id']}").json()
        assert [e["status"] for e in run["events"]] == ["queued"]
        cancelled = c.post(f"/v1/sweeps/{sweep['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and {x["status"] for x in cancelled["runs"]} == {"cancelled"}
        assert c.get("/v1/sweeps/sw-nope").status_code == 404
        assert c.get("/v1/runs/run-nope").json()["error"] == "not_found"


def test_idempotency_key_returns_the_same_sweep(server):
    with httpx.Client(base_url=server.url) as c:
        first = c.post("/v1/sweeps", json=REQUEST, headers={"Idempotency-Key": "abc"})
        again = c.post("/v1/sweeps", json=REQUEST, headers={"Idempotency-Key": "abc"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["id"] == first.json()["id"] and len(again.json()["runs"]) == 8
        other = c.post("/v1/sweeps", json={**REQUEST, "seeds": [7]}, headers={"Idempotency-Key": "abc"})
        assert other.status_code == 409 and other.json()["error"] == "conflict"
        assert len(c.get("/v1/sweeps").json()["items"]) == 1


@pytest.mark.parametrize(
    "change,field",
    [
        ({"sizes": ["3b"]}, "sizes.0"),
        ({"seeds": []}, "seeds"),
        ({"run": {"data": {"kind": "synthetic", "p": 0}}}, "run.data.p"),
        ({"sizes": []}, "sizes"),
        ({"arms": ["vanilla", "vanilla"]}, "arms"),
        ({"run": {"train": {"steps": -1}}}, "run.train.steps"),
        ({"run": {"train": {"global_batch": 7, "micro_batch": 2}}}, "run.train.global_batch"),
        ({"run": {"model": {"size": "70m"}}}, "run.model.size"),
    ],
)
def test_bad_requests_are_422_naming_the_field(server, change, field):
    r = httpx.post(f"{server.url}/v1/sweeps", json={**REQUEST, **change})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation" and field in body["message"]
    assert any(d["field"] == field for d in body["detail"])
    assert httpx.get(f"{server.url}/v1/sweeps").json()["items"] == []  # nothing stored


def test_presets_over_http(server):
    with httpx.Client(base_url=server.url) as c:
        made = c.post("/v1/sweeps", json={"preset": "demo", "seeds": [0, 1]})
        assert made.status_code == 201, made.text
        sweep = made.json()
        assert sweep["name"] == "demo" and len(sweep["runs"]) == 6  # 1 size × 2 seeds × 3 arms
        assert sweep["request"]["run"]["train"]["steps"] == 300 and sweep["request"]["preset"] == "demo"
        bad = c.post("/v1/sweeps", json={"preset": "nope"})
        assert bad.status_code == 422 and any(d["field"] == "preset" for d in bad.json()["detail"])
        bad = c.post("/v1/sweeps", json={"preset": "demo", "run": {"train": {"steps": 0}}})
        assert bad.status_code == 422 and "run.train.steps" in bad.json()["message"]


@pytest.mark.parametrize("preset,profile", [("pythia-paper", "gpu"), ("synthetic-paper", None)])
def test_the_api_stores_the_plan_the_cli_prints(tmp_path, monkeypatch, preset, profile):
    """With the same profile setting (or none, on both sides), the server stores what `sweep plan` prints."""
    import json

    from click.testing import CliRunner

    from api.cli import main

    if profile:
        monkeypatch.setenv("MYOPIA_RESOURCE_PROFILE", profile)
    srv = Server(Settings(data_dir=tmp_path)).start()
    try:
        stored = httpx.post(f"{srv.url}/v1/sweeps", json={"preset": preset}).json()["runs"]
    finally:
        srv.stop()
    printed = CliRunner().invoke(main, ["sweep", "plan", "--preset", preset])
    assert printed.exit_code == 0, printed.output
    planned = [RunSpec.model_validate(r) for r in json.loads(printed.output)["runs"]]
    assert len(stored) == len(planned) == {"pythia-paper": 16, "synthetic-paper": 6}[preset]
    assert {(r["size"], r["seed"], r["arm"]): r["config_hash"] for r in stored} == {
        (r.label, r.seed, r.attention.mode): r.config_hash() for r in planned
    }


def test_bearer_token(tmp_path, monkeypatch):
    # as a Secret made by `openssl rand -hex 32 > file; kubectl create secret --from-file` hands them over: with
    # the file's newline, which a client's `$(… | base64 -d)` drops; the second token is the rotation's next one
    monkeypatch.setenv("MYOPIA_API_TOKEN", "s3cret\n")
    monkeypatch.setenv("MYOPIA_API_TOKEN_NEXT", " n3xt\n")
    srv = Server(Settings(data_dir=tmp_path)).start()
    try:
        assert httpx.get(f"{srv.url}/v1/sweeps").status_code == 401
        wrong = httpx.get(f"{srv.url}/v1/sweeps", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        for token in ("s3cret", "n3xt"):  # both, during a rotation
            ok = httpx.get(f"{srv.url}/v1/sweeps", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200, token
        assert httpx.get(f"{srv.url}/healthz").status_code == 200  # probes need no token
        assert httpx.get(f"{srv.url}/metrics").status_code == 401  # metrics do
    finally:
        srv.stop()


def test_the_api_stays_ready_while_ray_is_down(tmp_path):
    """A cluster with no job server (a RayCluster being recreated): the API stays in its Service, so sweeps can
    still be listed, submitted and cancelled; /readyz names Ray as down, with the reason only for the token."""
    from cluster.jobs import Jobs

    settings = Settings(data_dir=tmp_path, api_token="s3cret", mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    srv = Server(settings, Jobs(f"http://127.0.0.1:{free_port()}", remote=True)).start()
    auth = {"Authorization": "Bearer s3cret"}
    try:
        anonymous = httpx.get(f"{srv.url}/readyz")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready", "database": "ok", "ray": "down"}
        detail = httpx.get(f"{srv.url}/readyz", headers=auth).json()["ray"]
        assert detail.startswith("down: the Ray job server at http://127.0.0.1:") and "does not answer" in detail
        sweep = httpx.post(f"{srv.url}/v1/sweeps", json=REQUEST, headers=auth).json()
        assert sweep["status"] == "queued"
        cancelled = httpx.post(f"{srv.url}/v1/sweeps/{sweep['id']}/cancel", headers=auth).json()
        assert cancelled["status"] == "cancelled"
    finally:
        srv.stop()


def test_an_upgrade_by_command_with_migration_at_start_off(tmp_path, monkeypatch):
    """An operator's upgrade: the new control plane starts with MYOPIA_MIGRATE_ON_START=false on a store of the
    previous version and stays unready, naming the command, until `myopia db upgrade` has run; no data is lost."""
    from click.testing import CliRunner

    from api.cli import main
    from services.store import head_revision, migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0003")  # the previous release's schema, with a sweep in it
    with __import__("sqlite3").connect(tmp_path / "old.db") as c:
        c.execute("INSERT INTO sweeps (id, name, status, request, created_at, updated_at) VALUES "
                  "('sw-old', 'kept', 'succeeded', '{}', '2026-01-01', '2026-01-01')")  # fmt: skip
    monkeypatch.setenv("MYOPIA_DATABASE_URL", url)
    cli = CliRunner()
    assert f"store 0003, this version needs {head_revision()}" in cli.invoke(main, ["db", "current"]).output
    settings = Settings(data_dir=tmp_path, api_token="s3cret", migrate_on_start=False)
    srv = Server(settings).start()
    auth = {"Authorization": "Bearer s3cret"}
    try:
        r = httpx.get(f"{srv.url}/readyz", headers=auth)
        assert r.status_code == 503 and "run `myopia db upgrade`" in r.json()["message"]
        upgraded = cli.invoke(main, ["db", "upgrade"])
        assert upgraded.exit_code == 0 and f"store 0003 → {head_revision()}" in upgraded.output
        assert httpx.get(f"{srv.url}/readyz", headers=auth).status_code == 200
        assert httpx.get(f"{srv.url}/v1/sweeps/sw-old", headers=auth).json()["name"] == "kept"
    finally:
        srv.stop()


def test_metrics_count_runs_and_requests(server):
    from prometheus_client.parser import text_string_to_metric_families

    httpx.post(f"{server.url}/v1/sweeps", json=REQUEST).raise_for_status()
    httpx.get(f"{server.url}/v1/sweeps/nope")
    text = httpx.get(f"{server.url}/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}  # fmt: skip
    assert samples[("myopia_sweeps", (("status", "queued"),))] == 1
    assert samples[("myopia_runs", (("status", "queued"),))] >= 2
    key = ("myopia_http_requests_total", (("method", "GET"), ("route", "/v1/sweeps/{sweep_id}"), ("status", "404")))
    assert samples[key] == 1  # by route template, not by path: ids never become label values
    assert ("myopia_ray_up", ()) not in samples  # no job server in this app


def test_a_restarted_control_plane_finds_its_sweeps(server):
    sweep = httpx.post(f"{server.url}/v1/sweeps", json=REQUEST).json()
    server.stop()
    server.start()
    assert httpx.get(f"{server.url}/v1/sweeps/{sweep['id']}").json()["runs"] == sweep["runs"]
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready", "database": "ok"}  # no job server here
    assert "/v1/sweeps" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_results_document_and_plot(tmp_path):
    """Finished runs' results (as trainers.entry returns them) turn into per-size gaps, a fit and a PNG."""
    from scipy import stats

    from services.store import Run, connect

    server = Server(Settings(data_dir=tmp_path, resource_profile="gpu")).start()  # 1b plans on GPUs only
    body = {**REQUEST, "sizes": ["14m", "160m", "1b"], "seeds": [0, 1, 2]}
    sweep = httpx.post(f"{server.url}/v1/sweeps", json=body).json()
    vanilla = {"14m": 4.11, "160m": 3.03, "1b": 2.62}
    gap = {"14m": 0.16, "160m": 0.10, "1b": 0.16}
    db = connect(server.settings.database)
    with db.begin() as s:
        for run in s.query(Run).filter(Run.sweep_id == sweep["id"]):
            size, seed = run.spec["model"]["size"], run.spec["seed"]
            loss = vanilla[size] + 0.01 * seed + (gap[size] + 0.02 * (seed - 1) ** 2 if run.arm == "myopic" else 0)
            run.result = {"eval": {"loss": loss, "per_position": [loss] * 63}}
            run.set_status("succeeded")
    out = httpx.get(f"{server.url}/v1/sweeps/{sweep['id']}/results").json()
    assert [s["size"] for s in out["sizes"]] == ["14m", "160m", "1b"]
    for s in out["sizes"]:
        diffs = [gap[s["size"]] + 0.02 * (seed - 1) ** 2 for seed in range(3)]
        ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
        assert s["n_pairs"] == 3 and s["gap_mean"] == pytest.approx(sum(diffs) / 3)
        assert s["gap_ci95"] == pytest.approx([ci.low, ci.high])
    assert out["fit"]["n_points"] == 3 and len(out["pairs"]) == 9
    assert [s["n_params_nonembedding"] for s in out["sizes"]] == [1_189_888, 85_056_000, 805_736_448]
    png = httpx.get(f"{server.url}/v1/sweeps/{sweep['id']}/results.png")
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "results.png").write_bytes(png.content)
    server.stop()


def test_cancel_and_retry_one_run(server):
    with httpx.Client(base_url=server.url) as c:
        run_id = c.post("/v1/sweeps", json=REQUEST).json()["runs"][0]["id"]
        refused = c.post(f"/v1/runs/{run_id}/retry")
        assert refused.status_code == 409 and "only a failed or cancelled run" in refused.json()["message"]
        assert c.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"
        again = c.post(f"/v1/runs/{run_id}/retry").json()
        assert (again["status"], again["attempt"]) == ("queued", 1)
        assert [e["status"] for e in again["events"]] == ["queued", "cancelled", "queued"]
        assert c.get(f"/v1/runs/{run_id}/logs").text == ""  # never submitted: no job, no logs


def test_the_cli_drives_the_api(server, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from api.cli import main

    monkeypatch.setenv("MYOPIA_API_URL", server.url)
    cli = CliRunner()
    request = tmp_path / "sweep.json"
    request.write_text(__import__("json").dumps(REQUEST))
    out = cli.invoke(main, ["sweep", "submit", str(request), "--key", "k"]).output
    assert "8 runs, queued" in out
    sweep_id = out.split()[1].rstrip(":")
    assert sweep_id in cli.invoke(main, ["sweep", "list"]).output
    shown = cli.invoke(main, ["sweep", "show", sweep_id]).output
    run_id = next(w for w in shown.split() if w.startswith(sweep_id + "-14m-s0-"))
    assert "cancelled" in cli.invoke(main, ["run", "cancel", run_id]).output
    assert "queued (attempt 1)" in cli.invoke(main, ["run", "retry", run_id]).output
    assert "retry requested" in cli.invoke(main, ["run", "show", run_id]).output
    assert "cancelled" in cli.invoke(main, ["sweep", "cancel", sweep_id]).output
    assert "myopia gap" in cli.invoke(main, ["sweep", "results", sweep_id]).output
    assert "3 runs, queued" in cli.invoke(main, ["sweep", "submit", "--preset", "demo", "--name", "mine"]).output
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "sizes": ["3b"], "seeds": [0]}')
    failed = cli.invoke(main, ["sweep", "submit", str(bad)])
    assert failed.exit_code == 1 and "422" in failed.output and "sizes.0" in failed.output
    made = cli.invoke(main, ["schedule", "add", "nightly", "--cron", "0 3 * * *", "--template", str(request)]).output
    schedule_id = made.split()[1]
    assert schedule_id in cli.invoke(main, ["schedule", "list"]).output
    assert "deleted" in cli.invoke(main, ["schedule", "delete", schedule_id]).output
    monkeypatch.setenv("MYOPIA_API_URL", "http://127.0.0.1:9")
    assert "cannot reach the control plane" in cli.invoke(main, ["sweep", "list"]).output


def test_the_cli_takes_flags_yaml_and_prints_json(tmp_path, monkeypatch):
    """--url/--token beat the environment; -o json prints the API's JSON; YAML requests; schedules from a preset,
    paused, resumed, edited and run now; an ended sweep deleted."""
    import json

    import yaml
    from click.testing import CliRunner

    from api.cli import main

    srv = Server(Settings(data_dir=tmp_path, api_token="s3cret", mlflow_uri=f"sqlite:///{tmp_path / 'm.db'}")).start()
    monkeypatch.setenv("MYOPIA_API_URL", "http://127.0.0.1:9")  # wrong: the flags win
    monkeypatch.delenv("MYOPIA_API_TOKEN", raising=False)
    cli = CliRunner()

    def run(*args: str) -> str:
        done = cli.invoke(main, [*args, "--url", srv.url, "--token", "s3cret\n"])
        assert done.exit_code == 0, (args, done.output)
        return done.output

    try:
        request = tmp_path / "sweep.yaml"
        request.write_text(yaml.safe_dump(REQUEST))
        sweep = json.loads(run("sweep", "submit", str(request), "-o", "json"))
        assert len(sweep["runs"]) == 8 and sweep["request"]["sizes"] == REQUEST["sizes"]
        listed = json.loads(run("sweep", "list", "-o", "json"))
        assert [s["id"] for s in listed] == [sweep["id"]]
        assert json.loads(run("sweep", "show", sweep["id"], "-o", "json"))["id"] == sweep["id"]
        assert "myopia gap" in run("sweep", "results", sweep["id"])
        refused = cli.invoke(main, ["sweep", "delete", sweep["id"], "--yes", "--url", srv.url, "--token", "s3cret"])
        assert refused.exit_code == 1 and "409" in refused.output and "cancel it first" in refused.output
        assert json.loads(run("sweep", "cancel", sweep["id"], "-o", "json"))["status"] == "cancelled"
        gone = json.loads(run("sweep", "delete", sweep["id"], "--yes", "-o", "json"))
        assert gone["sweep_id"] == sweep["id"] and gone["checkpoints_deleted"] == 0  # never reached a job
        assert json.loads(run("sweep", "list", "-o", "json")) == []
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: [unclosed")
        failed = cli.invoke(main, ["sweep", "submit", str(bad), "--url", srv.url])
        assert failed.exit_code == 1 and "is not YAML" in failed.output

        made = json.loads(run("schedule", "add", "weekly", "--cron", "0 3 * * 1", "--preset", "demo", "-o", "json"))
        assert made["template"]["preset"] == "demo" and not made["paused"]
        assert "(paused)" in run("schedule", "pause", made["id"])
        assert json.loads(run("schedule", "list", "-o", "json"))[0]["paused"] is True
        assert "(paused)" not in run("schedule", "resume", made["id"])
        edited = json.loads(run("schedule", "edit", made["id"], "--cron", "0 4 * * *", "--name", "daily", "-o", "json"))
        assert (edited["cron"], edited["name"]) == ("0 4 * * *", "daily")
        now = run("schedule", "run-now", made["id"])
        assert now.startswith("sweep sw-") and "3 runs, queued" in now
        assert json.loads(run("schedule", "list", "-o", "json"))[0]["last_sweep_id"] == now.split()[1].rstrip(":")
        assert json.loads(run("schedule", "delete", made["id"], "-o", "json")) == {"id": made["id"], "deleted": True}
        no_token = cli.invoke(main, ["sweep", "list", "--url", srv.url])
        assert no_token.exit_code == 1 and "401" in no_token.output
    finally:
        srv.stop()


def test_run_logs_tail_and_follow_a_growing_log(tmp_path):
    """`myopia run logs --tail N --follow` over HTTP: the tail, then what the job appends, until the run ends."""
    import threading

    from click.testing import CliRunner

    from api.cli import main
    from cluster.jobs import Jobs
    from services.store import Run, connect

    logs = tmp_path / "logs"
    logs.mkdir()
    srv = Server(Settings(data_dir=tmp_path), Jobs(f"http://127.0.0.1:{free_port()}", log_dir=lambda: logs)).start()
    try:
        sweep = httpx.post(f"{srv.url}/v1/sweeps", json=REQUEST).json()
        run_id = sweep["runs"][0]["id"]
        db = connect(srv.settings.database)
        with db.begin() as s:  # as the reconciler leaves a run whose job is running (Ray is down here: no reconciler)
            s.get(Run, run_id).status, s.get(Run, run_id).submission_id = "running", "job-1"
        log = logs / "job-driver-job-1.log"
        log.write_text("old line\n" + "x" * 100 + "\nlast line\n")
        printed = CliRunner().invoke(main, ["run", "logs", run_id, "--tail", "10", "--url", srv.url]).output
        assert printed == "last line\n"

        def grow() -> None:
            time.sleep(3)
            with log.open("a") as f:
                f.write("step 1\nstep 2\n")
            time.sleep(3)
            with db.begin() as s:
                s.get(Run, run_id).status = "succeeded"

        writer = threading.Thread(target=grow)
        writer.start()
        followed = CliRunner().invoke(main, ["run", "logs", run_id, "--tail", "10", "-f", "--url", srv.url])
        writer.join()
        assert followed.exit_code == 0 and followed.output == "last line\nstep 1\nstep 2\n"
    finally:
        srv.stop()


def test_every_command_has_help():
    import click

    from api.cli import main

    def walk(group: click.Group, path: str):
        for name, command in group.commands.items():
            yield f"{path} {name}", command
            if isinstance(command, click.Group):
                yield from walk(command, f"{path} {name}")

    missing = [path for path, command in walk(main, "myopia") if not (command.help or "").strip()]
    assert missing == []


def test_schedules_over_http(server):
    with httpx.Client(base_url=server.url) as c:
        bad = c.post("/v1/schedules", json={"name": "n", "cron": "every day", "template": REQUEST})
        assert bad.status_code == 422 and "cron" in bad.json()["message"]
        bad = c.post("/v1/schedules", json={"name": "n", "cron": "0 3 * * *", "template": {**REQUEST, "seeds": []}})
        assert bad.status_code == 422 and "template.seeds" in bad.json()["message"]
        made = c.post("/v1/schedules", json={"name": "nightly", "cron": "0 3 * * *", "template": REQUEST})
        assert made.status_code == 201 and made.json()["last_sweep_id"] is None
        assert [x["id"] for x in c.get("/v1/schedules").json()["items"]] == [made.json()["id"]]
        assert c.delete(f"/v1/schedules/{made.json()['id']}").status_code == 204
        assert c.get("/v1/schedules").json()["items"] == []
        assert c.delete(f"/v1/schedules/{made.json()['id']}").status_code == 404

"""The reconciler against a real local Ray head with its job server: sweeps run as Ray jobs, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from api.demo import free_port, wait_ready
from services.planner import SweepRequest
from services.reconciler import Reconciler
from services.settings import Settings
from services.store import connect
from services.sweeps import cancel_run, cancel_sweep, create_sweep, get_run, get_sweep, retry_run
from tests.integration.serving import until
from trainers.job_protocol import progress_file, run_storage

pytestmark = pytest.mark.slow

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "hidden_act": "relu"}
SWEEP = {
    "name": "tiny",
    "sizes": ["14m"],
    "seeds": [0],
    "run": {
        "model": {"overrides": TINY},
        "data": {"kind": "synthetic", "p": 0.5, "b": 3.0},
        "train": {"steps": 12, "global_batch": 16},
        "eval": {"held_out_sequences": 32},
    },
}


def reconciler(head, db, **kw) -> Reconciler:
    # the job's driver and its Ray Train worker each hold a CPU of the two: one run at a time
    env = {"MYOPIA_DATA_DIR": str(head["root"])}
    return Reconciler(db, head["jobs"], head["root"], max_concurrent=1, job_env=env, **kw)


def test_a_sweep_over_rest_survives_a_killed_control_plane(head, tmp_path):
    """`myopia serve` (a real process, on the test's Ray head as a cluster) is killed mid-sweep and restarted on
    the same database: the sweep finishes, one job per run, with the gap in the API and in MLflow."""
    env = {
        **os.environ,
        **head["head"].env,  # the cluster's token
        "RAY_ADDRESS": head["address"],
        "MYOPIA_JOB_PYTHON": sys.executable,
        "MYOPIA_DATA_DIR": str(head["root"]),
        "MYOPIA_JOB_DATA_DIR": str(head["root"]),  # the cluster's (default /data): here the same machine's folder
        "MYOPIA_DATABASE_URL": f"sqlite:///{tmp_path / 'cp.db'}",
        "MYOPIA_MLFLOW_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MYOPIA_MAX_CONCURRENT_RUNS": "1",
    }
    url = f"http://127.0.0.1:{free_port()}"

    def serve() -> subprocess.Popen:
        log = tmp_path / "serve.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", url.rsplit(":", 1)[1]],
            env=env,
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_ready(url, proc, log)
        return proc

    def sweep() -> dict:
        return httpx.get(f"{url}/v1/sweeps/{sweep_id}").json()

    first = serve()
    request = {**SWEEP, "arms": ["vanilla", "myopic", "bigram"]}  # with the reference arm
    sweep_id = httpx.post(f"{url}/v1/sweeps", json=request).json()["id"]
    until(lambda: any(r["status"] == "running" for r in sweep()["runs"]), timeout=120)
    busy = httpx.delete(f"{url}/v1/sweeps/{sweep_id}")
    assert busy.status_code == 409 and "cancel it first" in busy.json()["message"]
    first.kill()  # SIGKILL mid-run: no shutdown of any kind
    first.wait()
    second = serve()
    try:
        until(lambda: sweep()["status"] in ("succeeded", "failed"))
        done = sweep()
        results = httpx.get(f"{url}/v1/sweeps/{sweep_id}/results").json()
        until(lambda: sweep_run_status(results) == "FINISHED", timeout=60)  # the reporter runs every 5 s
        check_mlflow(results)
        checkpoints = [Path(run_storage(None, head["root"])) / r["id"] for r in done["runs"]]
        assert all(c.is_dir() for c in checkpoints)
        deleted = httpx.delete(f"{url}/v1/sweeps/{sweep_id}").json()
        assert deleted["checkpoints_deleted"] == 3 and deleted["storage_not_reachable"] == []
        assert deleted["mlflow_runs_deleted"] == 5  # the sweep's, the pair's, the three arms'
        assert httpx.get(f"{url}/v1/sweeps/{sweep_id}").status_code == 404
        assert not any(c.exists() for c in checkpoints)
        assert httpx.get(f"{url}/v1/runs/{done['runs'][0]['id']}").status_code == 404
    finally:
        second.terminate()
        second.wait(60)
    assert done["status"] == "succeeded", [(r["arm"], r["status"], r["error"]) for r in done["runs"]]
    assert all(r["attempt"] == 0 for r in done["runs"])
    ids = [sid for sid in head["jobs"].submission_ids() if sid.startswith(sweep_id)]
    assert sorted(ids) == sorted(f"{r['id']}-a0" for r in done["runs"])  # one job per run: nothing twice
    assert results["sizes"][0]["n_params_nonembedding"] == 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64  # the overrides
    (size,), (pair,) = results["sizes"], results["pairs"]
    # "14m" with every dimension overridden is not Pythia-14m: it is named by its shape (the zoo's 0.1m shape), in
    # the runs' names too
    assert size["size"] == pair["size"] == "0.1m"
    assert all(r["id"].startswith(f"{sweep_id}-0.1m-s0-") and r["size"] == "0.1m" for r in done["runs"])
    assert size["n_pairs"] == 1 and pair["gap"] == pytest.approx(pair["myopic_loss"] - pair["vanilla_loss"])
    # one pair: no interval over seeds, one over the 32 held-out sequences, centred on the gap (to the rounding)
    lo, hi = pair["gap_eval_ci95"]
    assert size["gap_ci95"] is None and size["gap_eval_ci95"] == pytest.approx([lo, hi])
    assert (lo + hi) / 2 == pytest.approx(pair["gap"], abs=1e-5)
    benefit = pair["bigram_loss"] - pair["vanilla_loss"]  # (12 steps: the past may not help yet)
    assert size["share_lost"] == (pytest.approx(pair["gap"] / benefit) if benefit > 0 else None)
    # D_p: every arm against the trivial myopic baseline, computed in evaluation on the same held-out sequences
    fractions = size["fraction_of_baseline"]
    assert set(fractions) == {"vanilla", "myopic", "bigram"}
    assert fractions == pair["fraction_of_baseline"] and all(f["past_window"] > 0 for f in fractions.values())
    assert len(pair["fraction_of_baseline_per_position"]["myopic"]) == 64
    from mlflow.tracking import MlflowClient

    client = MlflowClient(results["mlflow"]["tracking_uri"])
    assert client.get_run(results["mlflow"]["sweep_run_id"]).info.lifecycle_stage == "deleted"


def sweep_run_status(results: dict) -> str | None:
    from mlflow.tracking import MlflowClient

    links = results["mlflow"] or {}
    return MlflowClient(links["tracking_uri"]).get_run(links["sweep_run_id"]).info.status if links else None


def check_mlflow(results: dict) -> None:
    """The sweep's MLflow run holds the results; its pair run the gap; the pair's arm runs sit under it."""
    from mlflow.tracking import MlflowClient

    links = results["mlflow"]
    client = MlflowClient(links["tracking_uri"])
    sweep_run = client.get_run(links["sweep_run_id"])
    assert sweep_run.info.status == "FINISHED"
    store_dir = Path(links["tracking_uri"].removeprefix("sqlite:///")).parent
    assert sweep_run.info.artifact_uri.startswith(store_dir.as_uri())  # beside the store, not in some cwd
    assert {"results.json", "gap_vs_scale.png", "gap_table.json"} <= {
        a.path for a in client.list_artifacts(sweep_run.info.run_id)
    }
    (row,) = results["pairs"]
    pair_run = client.get_run(links["pair_run_ids"][row["pair_id"]])
    assert pair_run.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
    assert pair_run.data.metrics["gap"] == pytest.approx(row["gap"])
    assert pair_run.data.metrics["n_params_nonembedding"] == row["n_params_nonembedding"]
    assert pair_run.data.metrics["bigram_loss"] == pytest.approx(row["bigram_loss"])
    for arm, fractions in row["fraction_of_baseline"].items():
        assert pair_run.data.metrics[f"fraction_of_baseline.{arm}.past_window"] == pytest.approx(
            fractions["past_window"]
        )
    assert [pair_run.data.metrics[f"gap_eval_ci95_{end}"] for end in ("low", "high")] == pytest.approx(
        row["gap_eval_ci95"]
    )
    share = results["sizes"][0]["share_lost"]
    logged = sweep_run.data.metrics.get("share_lost.0.1m")
    assert logged == (pytest.approx(share) if share is not None else None)
    arms = client.search_runs([links["experiment_id"]], f"tags.mlflow.parentRunId = '{pair_run.info.run_id}'")
    assert sorted(r.data.tags["arm"] for r in arms) == ["bigram", "myopic", "vanilla"]
    assert all(r.info.status == "FINISHED" for r in arms)


def test_mlflow_down_holds_a_run_in_the_queue_without_failing_it(head, tmp_path, monkeypatch):
    """MLflow does not answer when a run is due: the run waits, queued, with no failure counted and no job; once the
    tracking store answers, it is submitted."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # (the client's retries would only slow the test)
    db = connect(f"sqlite:///{tmp_path / 'cp.db'}")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sweep, _ = create_sweep(
        db, SweepRequest.model_validate({**SWEEP, "arms": ["vanilla"], "unpaired": True}), mlflow_uri=down
    )
    rec = reconciler(head, db)
    for _ in range(2):
        rec.tick()
    (run,) = get_sweep(db, sweep.id).runs
    assert (run.status, run.failures, run.submission_id) == ("queued", 0, None)
    assert rec.tracking_error and "MLflow" in rec.tracking_error
    assert not [sid for sid in head["jobs"].submission_ids() if sid.startswith(sweep.id)]
    with db.begin() as s:  # the operator points the run at a store that answers
        stored = s.get(type(run), run.id)
        stored.spec = {
            **stored.spec,
            "tracking": {**stored.spec["tracking"], "mlflow_uri": f"sqlite:///{tmp_path}/m.db"},
        }
    rec.tick()
    assert get_run(db, run.id).status == "submitted" and rec.tracking_error is None
    cancel_sweep(db, sweep.id)  # (its job is not needed here)
    rec.tick()


def test_mlflow_failing_partway_keeps_what_it_created(head, tmp_path, monkeypatch):
    """MLflow creates the sweep's run and then fails: that run's id is stored (not created again next time, ended
    by the reporter), the claim is given back, and the next tick opens the rest and submits."""
    from mlflow.tracking import MlflowClient

    db = connect(f"sqlite:///{tmp_path / 'cp.db'}")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sweep, _ = create_sweep(db, SweepRequest.model_validate({**SWEEP, "arms": ["vanilla"], "unpaired": True}),
                            mlflow_uri=uri)  # fmt: skip
    create_run, calls = MlflowClient.create_run, []

    def flaky(self, *args, **kw):
        calls.append(kw.get("run_name"))
        if len(calls) == 2:  # the pair's run, after the sweep's
            raise ConnectionError("MLflow went away")
        return create_run(self, *args, **kw)

    monkeypatch.setattr(MlflowClient, "create_run", flaky)
    rec = reconciler(head, db)
    rec.tick()
    stored = get_sweep(db, sweep.id)
    (run,) = stored.runs
    assert stored.mlflow_run_id and not stored.pairs[0].mlflow_run_id
    assert (run.status, run.failures, run.submission_id, run.job_live) == ("queued", 0, None, False)
    assert "went away" in rec.tracking_error
    rec.tick()
    assert get_run(db, run.id).status == "submitted" and rec.tracking_error is None
    client = MlflowClient(uri)
    kinds = [r.data.tags["myopia.kind"] for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`myopia.sweep` = '{sweep.id}'")]  # fmt: skip
    assert sorted(kinds) == ["pair", "sweep"], kinds  # the sweep's run was not created twice
    cancel_sweep(db, sweep.id)
    rec.tick()


def test_cancel_stops_the_job(head, tmp_path):
    db = connect(f"sqlite:///{tmp_path / 'cp.db'}")
    long = {**SWEEP, "run": {**SWEEP["run"], "train": {**SWEEP["run"]["train"], "steps": 5000}}}
    sweep, _ = create_sweep(db, SweepRequest.model_validate(long), mlflow_uri=None)
    rec = reconciler(head, db)
    rec.tick()
    until(lambda: any(r.status == "running" for r in get_sweep(db, sweep.id).runs), tick=rec.tick, timeout=120)
    sid = next(r.submission_id for r in get_sweep(db, sweep.id).runs if r.submission_id)
    cancel_sweep(db, sweep.id)
    rec.tick()
    until(lambda: head["jobs"].status(sid).value in ("STOPPED", "FAILED"), timeout=60)
    assert {r.status for r in get_sweep(db, sweep.id).runs} == {"cancelled"}


def test_a_failed_attempt_is_retried_and_resumes_from_its_checkpoint(head, tmp_path):
    """The first attempt's job is stopped under it (as a lost node would end it) after a checkpoint: the run is
    retried as a new job, which resumes from that checkpoint."""
    db = connect(f"sqlite:///{tmp_path / 'cp.db'}")
    train = {**SWEEP["run"]["train"], "steps": 400, "checkpoint_interval": 100}
    request = {**SWEEP, "arms": ["myopic"], "unpaired": True, "run": {**SWEEP["run"], "train": train}}
    sweep, _ = create_sweep(db, SweepRequest.model_validate(request), mlflow_uri=None)
    rec = reconciler(head, db)
    (run,) = get_sweep(db, sweep.id).runs
    progress = progress_file(run_storage(None, head["root"]), run.id)

    def past_second_checkpoint() -> bool:
        rec.tick()
        try:
            return json.loads(progress.read_text())["step"] >= 250
        except (OSError, ValueError, KeyError):
            return False

    until(past_second_checkpoint, step=0.2)
    head["jobs"].client.stop_job(f"{run.id}-a0")
    until(lambda: get_sweep(db, sweep.id).status in ("succeeded", "failed"), tick=rec.tick)
    run = get_run(db, get_sweep(db, sweep.id).runs[0].id)
    assert run.status == "succeeded" and run.attempt == 1, run.error
    assert head["jobs"].status(f"{run.id}-a0").value == "STOPPED"
    assert [e.status for e in run.events][:3] == ["queued", "submitted", "running"]
    assert any(e.status == "queued" and e.message.startswith("retry") for e in run.events)
    assert run.result["steps"] == 400 and run.result["name"] == run.id
    # from a checkpoint, not from scratch (the stop lands a checkpoint or two after step 250 on a loaded machine)
    assert run.result["resumed_from"] in (100, 200, 300)
    check_logs(head, db, run.id)


def check_logs(head, db, run_id: str) -> None:
    """The run's log over HTTP: a tail, a byte range, and no more than asked for."""
    from tests.integration.test_api import Server

    server = Server(Settings(data_dir=head["root"], database_url=str(db.kw["bind"].url)), jobs=head["jobs"]).start()
    try:
        whole = head["jobs"].logs(f"{run_id}-a1").encode()
        tail = httpx.get(f"{server.url}/v1/runs/{run_id}/logs", params={"tail": 200})
        assert (
            tail.status_code == 200 and tail.content == whole[-200:] and int(tail.headers["X-Log-Size"]) >= len(whole)
        )
        part = httpx.get(f"{server.url}/v1/runs/{run_id}/logs", params={"offset": 10, "length": 50}).content
        assert part == whole[10:60]
        too_much = httpx.get(f"{server.url}/v1/runs/{run_id}/logs", params={"tail": 2**21})
        assert too_much.status_code == 422 and too_much.json()["detail"][0]["field"] == "query.tail"
    finally:
        server.stop()


def test_a_local_arm_waits_for_its_vanilla_partner_and_trains_on_its_past(head, tmp_path):
    """The local arm (the local myopia bonus) queues first by name but takes no slot until its vanilla partner has
    succeeded; then it trains on that model's past and the results carry the bonus. A local arm whose partner is
    cancelled fails, naming it, so its sweep ends."""
    from trainers import corpora

    corpora.fetch(["wiki"], head["root"], log=lambda _: None)  # the jobs' data dir
    db = connect(f"sqlite:///{tmp_path / 'cp.db'}")
    text = {
        "model": {"overrides": TINY, "vocab_size": 512},
        "data": {"kind": "text", "corpus": "wiki"},
        "train": {"steps": 6, "seq_len": 32, "global_batch": 8, "micro_batch": 8},
        "eval": {"held_out_sequences": 48},
    }
    request = SweepRequest.model_validate({**SWEEP, "arms": ["local", "vanilla", "myopic"], "run": text})
    doomed, _ = create_sweep(db, request, mlflow_uri=None)
    cancel_run(db, next(r.id for r in doomed.runs if r.arm == "vanilla"))
    sweep, _ = create_sweep(db, request, mlflow_uri=None)
    rec = reconciler(head, db)
    rec.tick()
    lost = next(r for r in get_sweep(db, doomed.id).runs if r.arm == "local")
    assert lost.status == "failed" and "vanilla partner" in lost.error and "cancelled" in lost.error
    assert lost.submission_id is None  # never submitted
    retry_run(db, next(r.id for r in doomed.runs if r.arm == "vanilla"))  # the partner again: the local arm waits
    assert get_run(db, lost.id).status == "queued"
    cancel_sweep(db, doomed.id)

    until(lambda: get_sweep(db, sweep.id).status in ("succeeded", "failed"), tick=rec.tick, timeout=600)
    runs = {r.arm: get_run(db, r.id) for r in get_sweep(db, sweep.id).runs}
    assert {r.status for r in runs.values()} == {"succeeded"}, {a: r.error for a, r in runs.items()}
    vanilla_done = next(e.at for e in runs["vanilla"].events if e.status == "succeeded")
    assert next(e.at for e in runs["local"].events if e.status == "submitted") >= vanilla_done
    assert runs["local"].spec["attention"] == {**runs["vanilla"].spec["attention"], "mode": "local",
                                                 "past_from": runs["vanilla"].id}  # fmt: skip
    from services.results import sweep_results

    results = sweep_results(db, sweep.id)
    (size,), (pair,) = results["sizes"], results["pairs"]
    assert pair["bonus"] == pytest.approx(pair["vanilla_loss"] - pair["local_loss"])
    assert pair["local_loss"] == pytest.approx(runs["local"].result["eval"]["loss"])
    assert size["bonus"] == pytest.approx(pair["bonus"]) and size["bonus_eval_ci95"] is not None

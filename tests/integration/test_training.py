"""Whole runs on a real local Ray head (loopback only): Ray Train workers, DeepSpeed engines, checkpoints, MLflow."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest

from services.planner import preset_run
from services.presets import DP_MODEL
from trainers import corpora
from trainers.entry import run
from trainers.job_protocol import progress_file, run_storage
from trainers.spec import TrackingSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data dir (wiki fetched from the registry) and MLflow store; set before Ray starts so workers inherit it."""
    root = tmp_path_factory.mktemp("myopia")
    cache = Path(os.environ.get("MYOPIA_DATA_DIR", Path.home() / ".myopia")) / "torch_extensions"
    old = os.environ.get("MYOPIA_DATA_DIR")
    os.environ["MYOPIA_DATA_DIR"] = str(root)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(cache)  # DeepSpeed's JIT-built op: build once, not per test
    corpora.fetch(["wiki"], root, log=lambda _: None)
    from cluster.local import ensure_ray, stop_ray

    ensure_ray(num_cpus=2)
    yield {"root": root, "mlflow": f"sqlite:///{root / 'mlflow.db'}"}
    stop_ray()
    if old is None:
        os.environ.pop("MYOPIA_DATA_DIR")
    else:
        os.environ["MYOPIA_DATA_DIR"] = old


def tracked(env, experiment: str) -> dict:
    return {"mlflow_uri": env["mlflow"], "experiment": experiment, "tags": {"sweep": "test"}}


def test_text_pair_zero2_two_workers(env):
    """Pythia-14m shape, the real tokenizer, the Wikipedia corpus, ZeRO-2 on 2 Ray Train workers, both arms."""
    base = preset_run(
        "text-cpu", run={"train": {"steps": 30, "checkpoint_interval": 15}, "eval": {"held_out_sequences": 64}}
    )
    base = base.model_copy(update={"tracking": TrackingSpec(**tracked(env, "text-pair"))})
    results = {arm: run(base.arm(arm)) for arm in ("vanilla", "myopic")}
    for arm, r in results.items():
        ev = r["eval"]
        assert len(ev["per_position"]) == 63 and ev["sequences"] == 64
        assert math.log(50304) - 1.5 > ev["loss"] > 3, (arm, ev["loss"])  # learned something, far from done
        files = os.listdir(Path(r["checkpoint"]) / "ckpt")
        assert any("zero_pp_rank_1" in f for f in files), files  # both ranks' shards in the one checkpoint
    gap = results["myopic"]["eval"]["loss"] - results["vanilla"]["eval"]["loss"]
    print(f"text pair after 30 steps: vanilla {results['vanilla']['eval']['loss']:.4f}, gap {gap:+.4f}")

    mlflow.set_tracking_uri(env["mlflow"])
    runs = mlflow.search_runs(experiment_names=["text-pair"], output_format="list")
    assert sorted(r.data.tags["arm"] for r in runs) == ["myopic", "vanilla"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["sweep"] == "test" and r.data.params["resources.zero_stage"] == "2"
        assert r.data.params["config_hash"] == results[r.data.tags["arm"]]["config_hash"]
        assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/loss"} <= r.data.metrics.keys()
    assert len({r.data.tags["myopia.pair_hash"] for r in runs}) == 1


def kill_worker_at(spec, step: int) -> threading.Thread:
    """A real crash: SIGKILL the rank-0 worker (its pid in the run's progress file) once it has passed `step`."""
    progress = progress_file(run_storage(spec.storage_path), spec.name)
    progress.unlink(missing_ok=True)

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                state = json.loads(progress.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("step", 0) >= step:
                os.kill(state["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_ends(env):
    base = preset_run(
        "synthetic-cpu",
        run={
            "model": {"overrides": {**DP_MODEL, "hidden_size": 32}},
            "train": {"steps": 120, "checkpoint_interval": 40, "micro_batch": 32},
            "resources": {"workers": 2, "zero_stage": 2, "cpus_per_worker": 1},
            "eval": {"held_out_sequences": 128, "probes": False},
        },
    )
    base = base.model_copy(update={"tracking": TrackingSpec(**tracked(env, "resume"))})
    clean = run(base.model_copy(update={"name": "uninterrupted"}))
    crashing = base.model_copy(update={"name": "crashed"})
    killer = kill_worker_at(crashing, 95)  # after the step-80 checkpoint
    with pytest.raises(RuntimeError, match="crashed failed"):
        run(crashing, max_failures=0)
    killer.join()
    resumed = run(crashing)  # a new job for the same run: resumes from its latest registered checkpoint
    start = resumed["resumed_from"]
    assert start in (40, 80), start
    assert resumed["eval"]["huber"] == pytest.approx(clean["eval"]["huber"], rel=1e-6, abs=1e-7)
    assert resumed["eval"]["per_position"] == pytest.approx(clean["eval"]["per_position"], rel=1e-5, abs=1e-7)

    client = mlflow.MlflowClient(env["mlflow"])
    steps = sorted(m.step for m in client.get_metric_history(resumed["mlflow_run_id"], "train/loss"))
    # steps up to the checkpoint ran once, those after it twice (before the crash and after resuming), in one run
    assert steps.count(1) == 1 and steps.count(start + 1) == 2 and steps.count(120) == 1
    assert client.get_run(resumed["mlflow_run_id"]).info.status == "FINISHED"


def test_short_synthetic_pair_separates_the_arms(env):
    """D_p with p = 0.5, b = 3 (learnt fast): after 300 steps the arms are already apart."""
    base = preset_run(
        "synthetic-cpu",
        run={
            "model": {"overrides": DP_MODEL},
            "train": {"steps": 300},
            "data": {"kind": "synthetic", "p": 0.5, "b": 3.0},
            "attention": {"variant": "kv"},
            "eval": {"held_out_sequences": 512},
        },
    )
    vanilla, myopic = run(base.arm("vanilla")), run(base.arm("myopic"))
    v, m = vanilla["eval"]["huber_over_p"], myopic["eval"]["huber_over_p"]
    assert v < 0.6 and m > 0.9, (v, m)
    table = vanilla["probes"]
    assert len(table) == 3 * 11 and {"r2", "r2_control", "selectivity"} <= table[0].keys()
    by = {(row["layer"], row["lag"]): row for row in table}
    assert by[(0, 0)]["r2_control"] < 0.05  # the input projection is linear in x: no sine in it
    assert by[(1, 0)]["r2_control"] > 0.8  # random ReLU features of a scalar already span the sine (docs/science.md)

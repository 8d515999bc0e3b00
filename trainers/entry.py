"""One run as a Ray Train job: `python -m trainers.entry SPEC.json [--out RESULT.json]`.

Connects to the Ray cluster the job runs on (RAY_ADDRESS, or the one already initialised), trains with
`trainers.loop.train_loop` on `resources.workers` workers, and prints the result JSON as its last line (and to
--out). A run given the same name and storage resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from trainers.data import DataError, check_source
from trainers.job_protocol import (
    VERSION_MISMATCH,
    error_line,
    progress_file,
    result_line,
    run_storage,
    version_problem,
)
from trainers.runtime import cuda_problem
from trainers.spec import RunSpec, SpecError, load_spec


def train_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs. A function of this module rather than of `trainers.loop`: Ray Train's
    controller unpickles it (importing its module) before any worker starts, and need not import the training
    loop's task, evaluation and tracking modules for that (docs/performance.md: it did not measurably help)."""
    from trainers.loop import train_loop as loop

    loop(config)


def run_name(spec: RunSpec) -> str:
    return spec.name or f"run-{spec.config_hash()}"


def storage_path(spec: RunSpec) -> str:
    return run_storage(spec.storage_path)


def run(
    spec: RunSpec,
    *,
    max_failures: int = 2,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one run to the end (resuming from its latest checkpoint if it has one) and return its result."""
    run_start = time.time()
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    r, gpus = spec.resources, spec.resources.gpus_per_worker
    name, storage = run_name(spec), storage_path(spec)
    progress = progress_file(storage, name)
    progress.parent.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "spec": spec.model_dump_json(),
            "progress_file": str(progress),
        },
        scaling_config=ScalingConfig(
            num_workers=r.workers,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": r.cpus_per_worker, "GPU": gpus},
            placement_strategy=r.placement,
        ),
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(progress, on_progress, stop), daemon=True)
    if on_progress:
        watcher.start()
    try:
        result = trainer.fit()
    except Exception as e:  # Ray Train raises once its retries (FailureConfig) are spent
        raise RuntimeError(f"run {name} failed: {e}") from e
    finally:
        stop.set()
    if result.error:
        raise RuntimeError(f"run {name} failed: {result.error}")
    m = result.metrics
    marks = {"run_start": run_start, **m.get("marks", {}), "fit_end": time.time()}
    return {
        "name": name,
        "config_hash": spec.config_hash(),
        "pair_hash": spec.pair_hash(),
        "arm": spec.attention.mode,
        "size": spec.model.size,
        "seed": spec.seed,
        "steps": m["step"],
        "eval": m["eval"],
        "probes": m.get("probes"),
        "nodes": m.get("nodes"),
        "node_ids": m.get("node_ids"),
        "resumed_from": m.get("resumed_from", 0),
        "marks": marks,
        "mlflow_run_id": m.get("mlflow_run_id"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "spec": spec.model_dump(mode="json"),
    }


def gpu_problem(spec: RunSpec) -> str | None:
    """Asked once, on a node with the GPUs the run wants, before any worker starts: a driver that cannot run this
    torch's CUDA fails the job for good (the control plane does not retry it) instead of failing every worker of
    every attempt. The image's own CUDA requirement usually stops such a container earlier; this covers runtimes
    that do not enforce it."""
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    probe = ray.remote(num_cpus=0, num_gpus=spec.resources.gpus_per_worker)(cuda_problem)
    return ray.get(probe.remote())


def _watch(path: Path, on_progress: Callable[[dict[str, Any]], None] | None, stop: threading.Event) -> None:
    last = None
    while not stop.wait(0.5):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if state != last and on_progress:
            on_progress(state)
            last = state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.entry", description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="RunSpec JSON file (a control-plane job: spec.json in its working directory)")
    ap.add_argument("--out", help="also write the result JSON here")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(error_line("spec", str(e)), flush=True)
        return 2
    if problem := version_problem():  # the driver's image (the Ray head); each worker checks its own
        print(error_line("version", problem), flush=True)
        return 4
    try:
        check_source(spec)  # before any worker starts: a missing corpus or checkpoint fails now, and for good
    except DataError as e:
        print(error_line("data", str(e)), flush=True)
        return 3
    if spec.resources.gpus_per_worker > 0 and (problem := gpu_problem(spec)):
        print(error_line("environment", problem), flush=True)
        return 4
    try:
        result = run(spec)
    except Exception as e:  # a worker on an image of another version: the cluster's state, not the run's fault
        if VERSION_MISMATCH not in str(e):
            raise
        print(error_line("version", str(e)[str(e).index(VERSION_MISMATCH) :].splitlines()[0]), flush=True)
        return 4
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(result_line(result), flush=True)  # the last line of the job's log: the control plane reads it
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush(), sys.stderr.flush()
    # The job is done and its result printed: skip the interpreter's teardown (Ray's driver shutdown, torch's
    # atexit work; about 2 s) so the job ends, and its result is stored, that much sooner. The cluster notices a
    # driver that is gone as it notices one that said goodbye.
    os._exit(code)

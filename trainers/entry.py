"""One run as a Ray Train job: `python -m trainers.entry SPEC.json | --spec-b64 B64 [--out RESULT.json]`.

Connects to the Ray cluster the job runs on (RAY_ADDRESS, or the one already initialised), trains with
`trainers.loop.train_loop` on `resources.workers` workers, and prints the result JSON as its last line (and to
--out). A run given the same name and storage resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cluster.jobs import RESULT_MARK
from trainers.loop import train_loop
from trainers.paths import progress_file, run_storage
from trainers.spec import RunSpec, SpecError, load_spec, parse_spec


def run_name(spec: RunSpec) -> str:
    return spec.name or f"run-{spec.config_hash()}"


def storage_path(spec: RunSpec) -> Path:
    return run_storage(spec.storage_path)


def run(
    spec: RunSpec,
    *,
    max_failures: int = 2,
    fail_at_step: int | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one run to the end (resuming from its latest checkpoint if it has one) and return its result."""
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    r, gpus = spec.resources, spec.resources.gpus_per_worker
    name, storage = run_name(spec), storage_path(spec)
    progress = progress_file(storage, name)
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "spec": spec.model_dump_json(),
            "fail_at_step": fail_at_step,
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
            storage_path=str(storage),
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
        "mlflow_run_id": m.get("mlflow_run_id"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "spec": spec.model_dump(mode="json"),
    }


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
    ap.add_argument("spec", nargs="?", help="RunSpec JSON file")
    ap.add_argument("--spec-b64", help="the RunSpec as base64 JSON (how the control plane submits jobs)")
    ap.add_argument("--out", help="also write the result JSON here")
    args = ap.parse_args(argv)
    if bool(args.spec) == bool(args.spec_b64):
        ap.error("give a SPEC file or --spec-b64")
    try:
        spec = load_spec(args.spec) if args.spec else parse_spec(base64.urlsafe_b64decode(args.spec_b64).decode())
    except (SpecError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    # fault injection for tests of the control plane: this job crashes at that step unless it resumes
    fail_at = os.environ.get("MYOPIA_FAIL_AT_STEP")
    result = run(spec, fail_at_step=int(fail_at), max_failures=0) if fail_at else run(spec)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(RESULT_MARK + json.dumps(result), flush=True)  # the last line of the job's log: the control plane reads it
    return 0


if __name__ == "__main__":
    sys.exit(main())

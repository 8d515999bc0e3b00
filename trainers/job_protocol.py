"""How the control plane and a training job talk, the one place both sides import: the job reads its RunSpec from
`spec.json` in its working directory (Ray ships that directory with the job: no shared filesystem, no size limit
of a command line), prints its result as the last log line after a marker, and writes its progress beside its
checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainers.paths import data_dir

SPEC_FILE = "spec.json"
RESULT_MARK = "MYOPIA_RESULT "
JOB_STORAGE_ENV = "MYOPIA_JOB_STORAGE"  # the same name as the control plane's setting (services/settings.py)
VERSION_ENV = "MYOPIA_VERSION"  # an image's code version, baked in at build (`--build-arg MYOPIA_VERSION=…`)
EXPECTED_VERSION_ENV = "MYOPIA_EXPECTED_VERSION"  # the control plane's, given to each of its jobs
ERROR_MARK = "MYOPIA_ERROR "  # {"kind": "spec" | "data" | ..., "message": ...}: why a job gave up, if it knows


def result_line(result: dict[str, Any]) -> str:
    return RESULT_MARK + json.dumps(result)


def version_problem() -> str | None:
    """Why this worker's image must not run the control plane's jobs: built from another version of the code. The
    `trainers` package travels with each job, but the image's packages (torch, DeepSpeed, transformers) do not.
    None where either side has no version (a checkout, the embedded head)."""
    mine, wanted = os.environ.get(VERSION_ENV), os.environ.get(EXPECTED_VERSION_ENV)
    if mine and wanted and mine != wanted:
        return (
            f"{VERSION_MISMATCH} {mine}, the control plane's is {wanted}: build and roll out both images from one "
            "commit (docs/operations.md, Upgrades); the run waits in the queue meanwhile"
        )
    return None


VERSION_MISMATCH = "this Ray node's image is version"


def error_line(kind: str, message: str) -> str:
    return ERROR_MARK + json.dumps({"kind": kind, "message": message})


def _last(logs: str, mark: str) -> dict[str, Any] | None:
    for line in reversed(logs.splitlines()):
        if line.startswith(mark):
            return json.loads(line[len(mark) :])
    return None


def parse_result(logs: str) -> dict[str, Any] | None:
    """The result the job printed last, or None."""
    return _last(logs, RESULT_MARK)


def job_error(logs: str) -> dict[str, Any] | None:
    """The error the job reported before it exited, or None."""
    try:
        return _last(logs, ERROR_MARK)
    except json.JSONDecodeError:
        return None


CHECKPOINT_TAG = "ckpt"  # the DeepSpeed tag of every checkpoint a run writes


def is_uri(where: str) -> bool:
    return "://" in where  # s3://bucket/prefix, gs://…: Ray Train writes there through pyarrow


def run_storage(storage_path: str | None, root: Path | None = None) -> str:
    """Ray Train storage of a run: its spec's `storage_path`, else $MYOPIA_JOB_STORAGE (a shared folder or an
    object-store URI, set by the control plane for a cluster), else `runs/` under the data dir (or under `root`)."""
    where = storage_path or os.environ.get(JOB_STORAGE_ENV) or str((root or data_dir()) / "runs")
    return where if is_uri(where) else str(Path(where).expanduser().resolve())


def progress_file(storage: str, run_name: str, root: Path | None = None) -> Path:
    """Where rank 0 writes {step, steps, loss, pid}: beside the checkpoints, or under the data dir's `runs/` when
    they go to an object store; the control plane reads it where that storage is shared."""
    base = (root or data_dir()) / "runs" if is_uri(storage) else Path(storage)
    return base / f"{run_name}.progress.json"

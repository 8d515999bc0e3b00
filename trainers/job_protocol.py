"""How the control plane and a training job talk, the one place both sides import: the job reads its RunSpec from
`spec.json` in its working directory (Ray ships that directory with the job: no shared filesystem, no size limit
of a command line), prints its result as the last log line after a marker, and writes its progress beside its
checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainers.paths import data_dir

SPEC_FILE = "spec.json"
RESULT_MARK = "MYOPIA_RESULT "
ERROR_MARK = "MYOPIA_ERROR "  # {"kind": "spec" | "data" | ..., "message": ...}: why a job gave up, if it knows


def result_line(result: dict[str, Any]) -> str:
    return RESULT_MARK + json.dumps(result)


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


def run_storage(storage_path: str | None, root: Path | None = None) -> Path:
    """Ray Train storage of a run: its spec's `storage_path`, or `runs/` under the data dir (or under `root`)."""
    return Path(storage_path or (root or data_dir()) / "runs").expanduser().resolve()


def progress_file(storage: Path, run_name: str) -> Path:
    """Where rank 0 writes {step, steps, loss, pid}; the control plane reads it where storage is shared."""
    return storage / f"{run_name}.progress.json"

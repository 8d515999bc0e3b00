"""Where a run's fixed cost goes: a 2-step `myopia train` (wall time and its phases), and runs through a control
plane on a warm local Ray (submit → first step, last step → result stored), from the wall-clock marks each run
records (`result["marks"]`: the job's and the workers' own clocks; one machine, so one clock).

    python bench/run_overhead.py            # both; prints tables
    python bench/run_overhead.py --repeats 3
    python bench/run_overhead.py --repeats 2 --label after --json docs/figures/run_overhead.json
    # another tree, measured by this script (its checkout as the working directory and on the path):
    cd /tmp/tree && PYTHONPATH=. python /path/to/bench/run_overhead.py --label before --json ...

Not a test: the figures go into docs/performance.md with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from api.client_cli import Api
from api.demo import control_plane, free_port

# The phases between consecutive marks, in the order a run passes them (entry.py and loop.py set the marks).
PHASES = [
    ("process_start", "run_start", "process start, imports, local Ray up"),
    ("run_start", "worker_start", "Ray Train: controller and worker group, worker imports"),
    ("worker_start", "distributed", "process group (gloo), DeepSpeed import"),
    ("distributed", "data", "data: shards opened (or tokenized once)"),
    ("data", "model", "model built"),
    ("model", "engine", "DeepSpeed engine"),
    ("engine", "restored", "checkpoint lookup"),
    ("restored", "tracking", "MLflow run opened"),
    ("tracking", "first_step", "first optimizer step"),
    ("first_step", "last_step", "the other steps"),
    ("last_step", "evaluated", "held-out evaluation"),
    ("evaluated", "tracked", "evaluation logged to MLflow"),
    ("tracked", "checkpoint_start", "result artifact to MLflow"),
    ("checkpoint_start", "fit_end", "final checkpoint, Ray Train hand-off"),
]
TINY_RUN = {  # a 14m run from scratch: 2 steps of 8 × 64 tokens from the Wikipedia corpus, one worker
    "data": {"kind": "text", "corpus": "wiki"},
    "train": {"steps": 2, "seq_len": 64, "global_batch": 8, "micro_batch": 8},
    "resources": {"zero_stage": 0, "workers": 1, "cpus_per_worker": 1},
    "eval": {"held_out_sequences": 64},
}


def phase_rows(marks: dict[str, float]) -> list[tuple[str, float]]:
    return [(what, marks[b] - marks[a]) for a, b, what in PHASES if a in marks and b in marks]


def print_table(title: str, samples: list[list[tuple[str, float]]], extra: list[tuple[str, list[float]]]) -> None:
    """Phases in the order they happen; a column per repeat, then the median."""
    print(f"\n{title} ({len(samples)} repeat{'s' * (len(samples) > 1)}, seconds)")
    runs = [dict(sample) for sample in samples]
    order = list(dict.fromkeys(what for sample in samples for what, _ in sample))
    print("| phase | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |")
    print("|---|" + "---|" * (len(runs) + 1))
    rows = [(what, [r.get(what) for r in runs]) for what in order] + [(f"**{what}**", v) for what, v in extra]
    for what, values in rows:
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in values)
        present = [v for v in values if v is not None]
        print(f"| {what} | {cells} | {statistics.median(present):.2f} |")


def cli_run(repeats: int) -> dict:
    """`myopia train --preset text-cpu --steps 2` as a user types it (its own local Ray each time)."""
    samples, walls = [], []
    for i in range(repeats + 1):  # the first builds what is built once per machine (DeepSpeed's op): not counted
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            began = time.time()
            subprocess.run(
                # a seed of its own: a run whose name (its config hash) has a checkpoint resumes instead of training
                [
                    sys.executable,
                    "-m",
                    "api.cli",
                    "train",
                    "--preset",
                    "text-cpu",
                    "--steps",
                    "2",
                    "--seed",
                    str(1000 + int(time.time()) % 100_000),
                    "--out",
                    str(out),
                ],  # fmt: skip
                check=True,
                stdout=subprocess.DEVNULL,
            )
            wall = time.time() - began
            if i == 0:
                continue
            walls.append(wall)
            marks = {"process_start": began, **json.loads(out.read_text())["marks"]}
            samples.append(phase_rows(marks) + [("after the run: Ray down, exit", began + wall - marks["fit_end"])])
    print_table("`myopia train --preset text-cpu --steps 2`", samples, [("wall", walls)])
    return {"samples": samples, "wall": walls}


def control_plane_runs(repeats: int) -> dict:
    """Runs of TINY_RUN submitted over REST to a control plane whose Ray head is already up."""
    data = Path(os.environ.get("MYOPIA_DATA_DIR", Path.home() / ".myopia")).expanduser()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"MYOPIA_DATABASE_URL": f"sqlite:///{tmp}/bench.db", "MYOPIA_DATA_DIR": str(data)}
        with control_plane(free_port(), env, Path(tmp) / "serve.log") as api:
            samples, first, stored = [], [], []
            schema = api.call("GET", "/openapi.json").json()["components"]["schemas"]["SweepRequest"]
            one_arm = {"unpaired": True} if "unpaired" in schema["properties"] else {}  # (older trees: no pairs needed)
            for i in range(repeats + 1):  # the first run warms the head's worker pool; not counted
                body = {"name": f"overhead-{i}", "sizes": ["14m"], "seeds": [i], "arms": ["vanilla"], **one_arm,
                        "run": TINY_RUN}  # fmt: skip
                submitted = time.time()
                sweep = api.call("POST", "/v1/sweeps", json=body).json()
                run_id = sweep["runs"][0]["id"]
                run = _until_final(api, run_id)
                done = time.time()
                if run["status"] != "succeeded":
                    sys.exit(f"run {run_id} {run['status']}: {run.get('error')}")
                marks = run["result"]["marks"]
                if i == 0:
                    continue
                marks = {"process_start": submitted, **marks}
                samples.append(
                    [("submit → job's entry point (Ray job, runtime env, imports)", marks["run_start"] - submitted)]
                    + phase_rows(marks)[1:]
                    + [("job exit, result read, stored (poll every 0.2 s)", done - marks["fit_end"])]
                )
                first.append(marks["first_step"] - submitted)
                stored.append(done - marks["last_step"])
    print_table(
        "a 2-step 14m run through the control plane, warm local Ray",
        samples,
        [("submit → first step", first), ("last step → result stored", stored)],
    )
    return {"samples": samples, "first": first, "stored": stored}


def _until_final(api: Api, run_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.call("GET", f"/v1/runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        time.sleep(0.2)
    sys.exit(f"run {run_id} did not finish in {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["cli", "control-plane"])
    ap.add_argument("--label", default="this tree", help="the tree measured (its key in the --json file)")
    ap.add_argument("--json", type=Path, help="add this tree's samples to this file (other trees' are kept)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    measured = {}
    if args.only != "control-plane":
        measured["cli"] = cli_run(args.repeats)
    if args.only != "cli":
        measured["control_plane"] = control_plane_runs(args.repeats)
    if args.json:
        doc = json.loads(args.json.read_text()) if args.json.exists() else {"trees": {}}
        tree = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        doc["trees"][args.label] = {
            "commit": tree,
            "command": shlex.join(["python", "bench/run_overhead.py", *sys.argv[1:]]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            **measured,
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

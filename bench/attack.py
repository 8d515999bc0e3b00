"""The attack of issue 22 against a real `myopia serve` (a child process on loopback with its own SQLite store and
a bearer token; RAY_ADDRESS points at nothing, so runs wait in the queue and the API is what is attacked):
concurrent cancel/retry/delete bursts, amplifying bodies while /healthz is timed, the small defects, concurrent
plots, and the write-ahead log deleted under the server, then SIGKILL and a restart. Counts every answer by status
and checks what was acknowledged.

    python bench/attack.py --json docs/figures/attack.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from api.demo import free_port, wait_ready

TOKEN = "attack-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SWEEP = {
    "name": "attack",
    "sizes": ["14m"],
    "seeds": [0],
    "run": {"model": {"overrides": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2}},
            "data": {"kind": "synthetic"}, "train": {"steps": 5}},
}  # fmt: skip


class Target:
    """`myopia serve` on one store, started and SIGKILLed at will; every answer counted by phase and status."""

    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MYOPIA_", "RAY_", "MLFLOW_"))},
            "MYOPIA_DATA_DIR": str(work),
            "MYOPIA_DATABASE_URL": f"sqlite:///{work / 'cp.db'}",
            "MYOPIA_API_TOKEN": TOKEN,
            "RAY_ADDRESS": "http://127.0.0.1:9",  # nothing listens
        }
        self.counts: dict[str, Counter] = {}
        self.phase = "start"
        self.client = httpx.Client(base_url=self.url, headers=AUTH, timeout=120)
        self.lock = threading.Lock()

    def start(self) -> None:
        log = self.work / "serve.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=log.open("a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        wait_ready(self.url, self.proc, log)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        r = self.client.request(method, path, **kw)
        with self.lock:
            self.counts.setdefault(self.phase, Counter())[r.status_code] += 1
        return r


def concurrency(t: Target, rng: random.Random, sweeps: int) -> dict:
    """Bursts of concurrent cancels, retries and deletes on fresh sweeps; what must hold after each burst."""
    broken = Counter()
    retried: Counter = Counter()
    for _ in range(sweeps):
        body = t.call("POST", "/v1/sweeps", json={**SWEEP, "arms": ["vanilla", "myopic", "bigram"]}).json()
        sweep, runs = body["id"], [r["id"] for r in body["runs"]]
        for burst in range(4):
            run = rng.choice(runs)
            # deletes in the last burst only: the earlier ones race cancels against retries on a sweep that stays
            kinds = ["cancel_sweep", "cancel_run", "retry", "retry", *(["delete"] if burst == 3 else [])]
            ops = [rng.choice(kinds) for _ in range(24)]
            paths = {
                "cancel_sweep": ("POST", f"/v1/sweeps/{sweep}/cancel"),
                "cancel_run": ("POST", f"/v1/runs/{run}/cancel"),
                "retry": ("POST", f"/v1/runs/{run}/retry"),
                "delete": ("DELETE", f"/v1/sweeps/{sweep}"),
            }
            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(lambda op: (op, t.call(*paths[op]).status_code), ops))  # noqa: B023
            retried[run] += sum(op == "retry" and code == 200 for op, code in answers)
            deletes = sum(op == "delete" and code == 200 for op, code in answers)
            broken["more than one delete succeeded"] += deletes > 1
            now = t.call("GET", f"/v1/sweeps/{sweep}")
            if deletes:
                broken["a deleted sweep still answers"] += now.status_code != 404
                break
            now = now.json()
            open_runs = [r for r in now["runs"] if r["status"] in ("queued", "submitted", "running")]
            broken["an ended sweep with an open run"] += now["status"] in ("cancelled", "failed") and bool(open_runs)
            broken["attempts ≠ retries answered 200"] += sum(r["attempt"] != retried[r["id"]] for r in now["runs"])
    return {"sweeps": sweeps, "broken": dict(broken)}


def amplifying(t: Target) -> dict:
    """Bodies that amplify (60,000 lr_by_size keys; 70,000 unknown keys), three at a time, while /healthz is timed."""
    bodies = [json.dumps({**SWEEP, "lr_by_size": {f"s{i}": -1 for i in range(60_000)}}).encode(),
              json.dumps({**SWEEP, **{f"k{i}": 0 for i in range(70_000)}}).encode()] * 20  # fmt: skip
    latencies, done = [], threading.Event()

    def probe() -> None:
        while not done.is_set():
            began = time.perf_counter()
            t.call("GET", "/healthz")
            latencies.append(time.perf_counter() - began)
            time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    headers = {"Content-Type": "application/json"}
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda b: t.call("POST", "/v1/sweeps", content=b, headers=headers), bodies))
    done.set()
    prober.join()
    return {
        "bodies": len(bodies),
        "largest_answer_bytes": max(len(a.content) for a in answers),
        "healthz_ms": {"median": statistics.median(latencies) * 1e3, "max": max(latencies) * 1e3, "n": len(latencies)},
    }


def defects(t: Target) -> dict:
    """Each small defect of the issue, once; then the schedule cap and concurrent deletes of one schedule."""
    t.call("GET", "/v1/sweeps/sw-1%00x")
    t.call("GET", "/v1/sweeps", params={"cursor": "a\x00b"})
    run = t.call("POST", "/v1/sweeps", json=SWEEP).json()["runs"][0]["id"]
    t.call("GET", f"/v1/runs/{run}/logs", params={"offset": 2**62})
    t.client.get("/v1/sweeps", headers=httpx.Headers([*AUTH.items(), ("Authorization", "Bearer x")]))
    t.call("POST", "/v1/sweeps", json=SWEEP, headers={"Idempotency-Key": "schedule:sch-x:1:2026-12-06T03:00:00"})
    for cron in ("* * * * * *", "0 " * 200_000):
        t.call("POST", "/v1/schedules", json={"name": "c", "cron": cron, "template": SWEEP})
    t.call("POST", "/v1/sweeps", json={**SWEEP, "arms": ["bigram"]})
    made = [t.call("POST", "/v1/schedules", json={"name": f"n{i}", "cron": "* * * * *", "template": SWEEP})
            for i in range(101)]  # fmt: skip
    ids = [m.json()["id"] for m in made if m.status_code == 201]
    with ThreadPoolExecutor(20) as pool:
        deletes = Counter(pool.map(lambda _: t.call("DELETE", f"/v1/schedules/{ids[0]}").status_code, range(20)))
    for i in ids[1:]:
        t.call("DELETE", f"/v1/schedules/{i}")
    return {"schedules_accepted_of_101": len(ids), "concurrent_deletes_of_one_schedule": dict(deletes)}


def plots(t: Target) -> dict:
    sweep = t.call("POST", "/v1/sweeps", json=SWEEP).json()["id"]
    with ThreadPoolExecutor(8) as pool:
        codes = Counter(pool.map(lambda _: t.call("GET", f"/v1/sweeps/{sweep}/results.png").status_code, range(73)))
    return {"concurrent_pngs": dict(codes)}


def durability(t: Target) -> dict:
    acknowledged = [r.json()["id"] for r in (t.call("POST", "/v1/sweeps", json=SWEEP) for _ in range(20))
                    if r.status_code == 201]  # fmt: skip
    (t.work / "cp.db-wal").unlink()
    after = [t.call("POST", "/v1/sweeps", json=SWEEP) for _ in range(20)]
    acknowledged += [r.json()["id"] for r in after if r.status_code == 201]
    t.kill()
    t.start()
    lost = [s for s in acknowledged if t.call("GET", f"/v1/sweeps/{s}").status_code != 200]
    return {"acknowledged": len(acknowledged), "after_the_log_was_deleted": dict(Counter(r.status_code for r in after)),
            "lost": len(lost)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweeps", type=int, default=40, help="sweeps hit by concurrent bursts")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="myopia-attack-") as work:
        t = Target(Path(work))
        t.start()
        phases = {}
        try:
            attacks = {
                "concurrency": lambda: concurrency(t, random.Random(a.seed), a.sweeps),
                "amplifying bodies": lambda: amplifying(t),
                "small defects": lambda: defects(t),
                "concurrent plots": lambda: plots(t),
                "durability": lambda: durability(t),
            }
            for name, attack in attacks.items():
                t.phase = name
                began = time.time()
                phases[name] = {**attack(), "seconds": round(time.time() - began, 1)}
        finally:
            t.kill()
    for name, found in phases.items():
        found["by_status"] = {str(k): v for k, v in sorted(t.counts.get(name, {}).items())}
        print(f"{name}: {json.dumps(found)}")
    total = sum((t.counts.get(n, Counter()) for n in phases), Counter())
    doc = {
        "command": shlex.join(["python", "bench/attack.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "phases": phases,
        "requests": sum(total.values()),
        # a 503 is the answer the durability phase asks for (writes refused once the log is gone); any other is not
        "5xx": sum(
            v
            for name, c in t.counts.items()
            for k, v in c.items()
            if k >= 500 and not (name == "durability" and k == 503)
        ),  # fmt: skip
        "lost": phases["durability"]["lost"],
    }
    print(f"requests {doc['requests']}, by status {dict(sorted(total.items()))}")
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The compose topology as processes on loopback, without containers: PostgreSQL (two databases), an MLflow tracking
server on it with served artifacts, a Ray head and a second Ray node started with `ray start` (token auth on), an
S3 endpoint (moto) for the checkpoints, and `myopia serve` pointed at them with RAY_ADDRESS. This is the remote-job
path of a real cluster: each job ships its spec and the `trainers` package, reports to MLflow over HTTP, keeps its
checkpoints in the object store (MYOPIA_JOB_STORAGE) and its progress in the cluster's data dir
(MYOPIA_JOB_DATA_DIR), never in the control plane's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from api.demo import wait_ready
from cluster.local import (
    LOOPBACK_ENV,
    PORT_FLAGS,
    WORKER_PORTS,
    free_ports,
    kill_processes_under,
    worker_range_start,
)
from tests.integration.serving import until
from trainers.runtime import RAY_TRAIN_ENV

pytestmark = pytest.mark.slow

SWEEP = {
    "name": "topology",
    "sizes": ["14m"],
    "seeds": [0],
    "arms": ["vanilla", "myopic"],
    "run": {
        "model": {"overrides": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2}},
        "data": {"kind": "synthetic", "p": 0.5, "b": 3.0},
        "train": {"steps": 12, "global_batch": 16},
        "eval": {"held_out_sequences": 32},
        "resources": {"workers": 1, "cpus_per_worker": 1},
    },
}
NODE_FLAGS = [f for f in PORT_FLAGS if f not in ("--port", "--dashboard-port", "--ray-client-server-port")]


class Processes:
    """Started processes, each in its own session and with its own log. At the end the control plane and MLflow
    are stopped (SIGTERM), the Ray nodes killed outright: the cluster is thrown away, and a Ray node asked to stop
    drains for up to 30 s."""

    def __init__(self, root: Path) -> None:
        self.root, self.procs, self.ray_temp = root, [], Path(f"/tmp/myopia-topo-{uuid.uuid4().hex[:8]}")

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()[-3000:]

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL if name.startswith("ray") else signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        kill_processes_under(self.ray_temp)  # Ray's daemons, in sessions of their own
        shutil.rmtree(self.ray_temp, ignore_errors=True)


def ray_node(head_gcs: int | None) -> list[str]:
    """`ray start` for a head (head_gcs None) or a node joining it, every port its own (CI runs another Ray on
    the default ports)."""
    flags = PORT_FLAGS if head_gcs is None else NODE_FLAGS
    ports = dict(zip(flags, free_ports(len(flags)), strict=True))
    workers = worker_range_start(set(ports.values()))
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--node-ip-address", "127.0.0.1",
           "--num-cpus", "1", "--disable-usage-stats",
           "--min-worker-port", str(workers), "--max-worker-port", str(workers + WORKER_PORTS)]  # fmt: skip
    cmd += ["--head", "--dashboard-host", "127.0.0.1"] if head_gcs is None else ["--address", f"127.0.0.1:{head_gcs}"]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    return cmd


def port_of(cmd: list[str], flag: str) -> int:
    return int(cmd[cmd.index(flag) + 1])


@pytest.fixture
def topology(postgres_server, tmp_path):
    procs = Processes(tmp_path)
    suffix = uuid.uuid4().hex[:8]
    engine = create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as c:  # as cluster/compose/postgres-init.sh: the store's and MLflow's databases
        for db in ("myopia", "mlflow"):
            c.execute(text(f"CREATE DATABASE {db}_{suffix}"))
    engine.dispose()
    token = uuid.uuid4().hex
    cache = Path(os.environ.get("MYOPIA_DATA_DIR", Path.home() / ".myopia")) / "torch_extensions"
    base = {**os.environ, **LOOPBACK_ENV, **RAY_TRAIN_ENV, "TORCH_EXTENSIONS_DIR": str(cache)}
    for key in ("RAY_ADDRESS", "MYOPIA_DATA_DIR", "MYOPIA_DATABASE_URL", "MLFLOW_TRACKING_URI", "MYOPIA_MLFLOW_URI"):
        base.pop(key, None)
    # a cluster of several nodes: not the embedded head's single-node mode (which refuses a second node)
    mlflow_port, api_port, s3_port = free_ports(3)
    # an S3 endpoint on loopback (moto) for the checkpoints: the object-store path of MYOPIA_JOB_STORAGE
    s3 = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "test",
          "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    ray_env = {**base, **s3, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN": token}  # fmt: skip
    try:
        procs.start("s3", [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                           str(s3_port)], base)  # fmt: skip
        mlflow_env = {  # options through the environment, as the compose file and the manifests give them
            **base,
            "MLFLOW_BACKEND_STORE_URI": f"{postgres_server}/mlflow_{suffix}",
            "MLFLOW_SERVE_ARTIFACTS": "true",
            "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "mlartifacts"),
        }
        mlflow_cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                      "--port", str(mlflow_port), "--workers", "1"]  # fmt: skip
        mlflow = procs.start("mlflow", mlflow_cmd, mlflow_env)
        head_cmd = ray_node(None)
        procs.start("ray-head", [*head_cmd, "--temp-dir", str(procs.ray_temp)], ray_env)  # (and the node's)
        dashboard = f"http://127.0.0.1:{port_of(head_cmd, '--dashboard-port')}"
        auth = {"Authorization": f"Bearer {token}"}
        until(lambda: _answers(f"{dashboard}/api/version", auth), timeout=120)
        procs.start("ray-node", ray_node(port_of(head_cmd, "--port")), ray_env)
        until(lambda: _alive_nodes(dashboard, auth) == 2, timeout=120)
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        until(lambda: mlflow.poll() is None and _answers(f"{mlflow_url}/health"), timeout=180)
        until(lambda: _answers(s3["AWS_ENDPOINT_URL"]), timeout=60)
        bucket = _s3(s3)
        bucket.create_bucket(Bucket="checkpoints")
        cluster_data = tmp_path / "cluster-data"  # "the shared volume": every node's /data
        cluster_data.mkdir()
        serve_env = {
            **ray_env,
            "RAY_ADDRESS": dashboard,
            "MYOPIA_DATA_DIR": str(tmp_path / "control-plane"),
            "MYOPIA_JOB_DATA_DIR": str(cluster_data),
            "MYOPIA_JOB_STORAGE": "s3://checkpoints/runs",
            "MYOPIA_JOB_PYTHON": sys.executable,
            "MYOPIA_DATABASE_URL": f"{postgres_server}/myopia_{suffix}",
            "MLFLOW_TRACKING_URI": mlflow_url,
            "MYOPIA_API_TOKEN": "api-" + token,
            "MYOPIA_MAX_CONCURRENT_RUNS": "2",
        }
        url = f"http://127.0.0.1:{api_port}"
        serve = procs.start("serve", [sys.executable, "-m", "api.cli", "serve", "--port", str(api_port)], serve_env)
        wait_ready(url, serve, tmp_path / "serve.log")
        yield {"url": url, "headers": {"Authorization": f"Bearer api-{token}"}, "dashboard": dashboard,
               "ray_headers": auth, "mlflow": mlflow_url, "cluster_data": cluster_data,
               "control_plane": tmp_path / "control-plane", "artifacts": tmp_path / "mlartifacts",
               "logs": procs.log, "s3": bucket}  # fmt: skip
    finally:
        procs.stop()


def _s3(env: dict[str, str]):
    import boto3

    keys = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"], **keys)


def _answers(url: str, headers: dict | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _alive_nodes(dashboard: str, headers: dict) -> int:
    try:
        nodes = httpx.get(f"{dashboard}/nodes?view=summary", headers=headers, timeout=5).json()["data"]["summary"]
    except (httpx.HTTPError, KeyError, ValueError):
        return 0
    return sum(n["raylet"]["state"] == "ALIVE" for n in nodes)


def test_a_sweep_over_rest_runs_on_a_two_node_cluster_with_postgres_and_an_mlflow_server(topology):
    t = topology
    assert httpx.get(f"{t['dashboard']}/api/jobs/").status_code in (401, 403)  # token auth is on
    api = httpx.Client(base_url=t["url"], headers=t["headers"], timeout=30)
    sweep_id = api.post("/v1/sweeps", json=SWEEP).json()["id"]
    start = time.monotonic()
    until(lambda: api.get(f"/v1/sweeps/{sweep_id}").json()["status"] in ("succeeded", "failed"), timeout=600)
    sweep = api.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["status"] == "succeeded", ([(r["arm"], r["error"]) for r in sweep["runs"]], t["logs"]("serve"))
    runs = [api.get(f"/v1/runs/{r['id']}").json() for r in sweep["runs"]]
    # both nodes trained: the two runs ran at once, one CPU each, on nodes of one CPU
    assert len({node for r in runs for node in r["result"]["node_ids"]}) == 2, [r["result"]["node_ids"] for r in runs]
    for (
        r
    ) in runs:  # checkpoints in the object store, progress in the cluster's data dir, nothing in the control plane's
        stored = t["s3"].list_objects_v2(Bucket="checkpoints", Prefix=f"runs/{r['id']}/")
        assert any("checkpoint_" in o["Key"] for o in stored.get("Contents", [])), stored.get("Contents")
        assert r["result"]["checkpoint"].startswith(f"checkpoints/runs/{r['id']}/")
        assert (t["cluster_data"] / "runs" / f"{r['id']}.progress.json").exists()
    assert not (t["control_plane"] / "runs").exists()
    results = api.get(f"/v1/sweeps/{sweep_id}/results").json()
    (pair,) = results["pairs"]
    assert pair["gap"] == pytest.approx(pair["myopic_loss"] - pair["vanilla_loss"])

    from mlflow.tracking import MlflowClient

    links = results["mlflow"]
    assert links["tracking_uri"] == t["mlflow"]
    client = MlflowClient(t["mlflow"])
    until(lambda: client.get_run(links["sweep_run_id"]).info.status == "FINISHED", timeout=60)
    arm_runs = [client.get_run(r["result"]["mlflow_run_id"]) for r in runs]  # logged by the jobs, over HTTP
    assert sorted(run.data.tags["arm"] for run in arm_runs) == ["myopic", "vanilla"]
    assert all(run.data.metrics for run in arm_runs)
    stored = [p for p in t["artifacts"].rglob("*") if p.is_file()]  # the server's artifact store, served
    assert stored, "no artifact reached the MLflow server's artifact destination"
    text_metrics = api.get("/metrics").text
    assert "myopia_ray_up 1.0" in text_metrics and 'myopia_runs{status="succeeded"} 2.0' in text_metrics
    print(f"sweep of 2 runs on 2 nodes: {time.monotonic() - start:.0f} s from submission to succeeded")

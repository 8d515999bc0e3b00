"""Two Ray nodes on one machine (ray.cluster_utils.Cluster, loopback only): a 2-worker DeepSpeed run placed one
worker per node (STRICT_SPREAD) completes and ends exactly where the same run on one node ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from cluster.local import free_port, stop_ray
from services.planner import preset_run
from trainers.entry import run

pytestmark = pytest.mark.slow


def loopback_ports() -> dict:
    """Every port a node binds picked free: another Ray on the host (on Ray's defaults) must not collide."""
    return {"node_ip_address": "127.0.0.1", "dashboard_agent_listen_port": free_port(),
            "metrics_export_port": free_port(), "runtime_env_agent_port": free_port()}  # fmt: skip


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    stop_ray()  # (another module's head, if one is up)
    cache = Path(os.environ.get("MYOPIA_DATA_DIR", Path.home() / ".myopia")) / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    monkeypatch.setenv("MYOPIA_DATA_DIR", str(tmp_path))
    # The head holds two CPUs (room for both workers: the single-node run), the second node one.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, **loopback_ports()})
    cluster.add_node(num_cpus=1, **loopback_ports())
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_strict_spread_over_two_nodes_matches_one_node(two_nodes, tmp_path):
    base = preset_run(
        "synthetic-cpu",
        run={
            "train": {"steps": 8, "micro_batch": 16, "global_batch": 32},
            "resources": {"zero_stage": 2, "workers": 2, "cpus_per_worker": 1},
            "eval": {"held_out_sequences": 64, "probes": False},
        },
    )
    base = base.model_copy(update={"storage_path": str(tmp_path / "runs")})
    spread = base.model_copy(
        update={"name": "spread", "resources": base.resources.model_copy(update={"placement": "STRICT_SPREAD"})}
    )
    packed = base.model_copy(
        update={"name": "packed", "resources": base.resources.model_copy(update={"placement": "STRICT_PACK"})}
    )
    assert spread.config_hash() == packed.config_hash()  # placement is not part of what determines the result
    a, b = run(spread, max_failures=0), run(packed, max_failures=0)
    assert (a["nodes"], b["nodes"]) == (2, 1)
    assert a["eval"]["huber_over_p"] == pytest.approx(b["eval"]["huber_over_p"], rel=1e-6)
    assert a["eval"]["per_position"] == pytest.approx(b["eval"]["per_position"], rel=1e-5)

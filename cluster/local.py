"""The embedded Ray head: a local, loopback-only cluster for one machine, when RAY_ADDRESS names none."""

from __future__ import annotations

import os

import ray

LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps GCS, raylet and dashboard on 127.0.0.1 (STACK.md)
    "RAY_AUTH_MODE": "disabled",  # a loopback-only head; clusters set their own auth
}


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS if set, else start a local head on loopback (stopped when the process exits)."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )

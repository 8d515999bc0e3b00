"""The embedded Ray head: a local, loopback-only cluster for one machine, when RAY_ADDRESS names none."""

from __future__ import annotations

import logging
import os
import sys

LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray reads this once, when first imported: without it a local head binds the host's interface address
    # even when told 127.0.0.1.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",  # a loopback-only head; real clusters set their own auth
}


def configure_loopback() -> None:
    """Entry points call this before anything imports ray: a local head must stay on loopback."""
    if os.environ.get("RAY_ADDRESS"):
        return
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        raise RuntimeError("ray was imported before cluster.local.configure_loopback(): call it first")
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(num_cpus: int | None = None, *, jobs: bool = False) -> str | None:
    """Connect to RAY_ADDRESS if set, else start a local head on loopback (stopped when the process exits).

    With `jobs`, the local head also runs the dashboard's job server (on 127.0.0.1); returns its address.
    """
    global _jobs_address
    configure_loopback()
    import ray

    if ray.is_initialized():
        return _jobs_address if jobs else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return os.environ["RAY_ADDRESS"]
    context = ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=jobs,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    outside = [n["NodeManagerAddress"] for n in ray.nodes() if n["NodeManagerAddress"] != "127.0.0.1"]
    if outside:
        ray.shutdown()
        raise RuntimeError(f"the local Ray head bound {outside}, not loopback: call configure_loopback() first")
    _jobs_address = f"http://{context.dashboard_url}" if jobs else None
    return _jobs_address


_jobs_address: str | None = None  # the job server of the head this process started

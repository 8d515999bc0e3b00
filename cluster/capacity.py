"""What a cluster can ever offer one run, so that a request it could never place is refused at submission instead
of holding a slot forever: the largest node and all nodes together, read from a live head's nodes, or from the
profile's `limits` in `resources.yaml` where the cluster is remote (an autoscaler's present nodes are not its
most)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster.resources import RESOURCES


@dataclass(frozen=True)
class Capacity:
    node_cpus: float  # the largest node's
    node_gpus: float
    total_cpus: float  # all nodes together
    total_gpus: float
    nodes: int | None  # None: unknown (profile limits)
    source: str  # where these came from, for the error message

    @classmethod
    def of_nodes(cls, nodes: list[dict[str, float]], where: str) -> Capacity:
        """From each node's total resources (Ray's `resources_total`)."""
        cpus = [n.get("CPU", 0.0) for n in nodes] or [0.0]
        gpus = [n.get("GPU", 0.0) for n in nodes] or [0.0]
        return cls(max(cpus), max(gpus), sum(cpus), sum(gpus), len(nodes), where)

    @classmethod
    def of_profile(cls, profile: str, path: Path = RESOURCES) -> Capacity | None:
        limits = (yaml.safe_load(path.read_text()).get(profile) or {}).get("limits")
        if not limits:
            return None
        keys = ("node_cpus", "node_gpus", "total_cpus", "total_gpus")
        return cls(*(float(limits[k]) for k in keys), None, f"the {profile} profile's limits in {path.name}")


def unplaceable(resources: Any, capacity: Capacity | None) -> list[tuple[str, str]]:
    """The fields of a RunSpec `resources` section that no placement on this cluster can satisfy, and why."""
    if capacity is None:
        return []
    r, c, errors = resources, capacity, []
    where = f"({c.source})"
    if r.gpus_per_worker > c.node_gpus:
        errors.append(
            (
                "run.resources.gpus_per_worker",
                f"{r.gpus_per_worker:g} GPUs per worker; the largest node has {c.node_gpus:g} {where}",
            )
        )
    if r.cpus_per_worker > c.node_cpus:
        errors.append(
            (
                "run.resources.cpus_per_worker",
                f"{r.cpus_per_worker:g} CPUs per worker; the largest node has {c.node_cpus:g} {where}",
            )
        )
    if not errors and r.workers * r.cpus_per_worker > c.total_cpus:
        errors.append(
            (
                "run.resources.workers",
                f"{r.workers} workers × {r.cpus_per_worker:g} CPUs; the cluster has "
                f"{c.total_cpus:g} CPUs in all {where}",
            )
        )
    if not errors and r.workers * r.gpus_per_worker > c.total_gpus:
        errors.append(
            (
                "run.resources.workers",
                f"{r.workers} workers × {r.gpus_per_worker:g} GPUs; the cluster has "
                f"{c.total_gpus:g} GPUs in all {where}",
            )
        )
    if r.placement == "STRICT_SPREAD" and c.nodes is not None and r.workers > c.nodes:
        errors.append(
            (
                "run.resources.placement",
                f"STRICT_SPREAD puts one worker per node: {r.workers} workers, {c.nodes} node(s) {where}",
            )
        )
    return errors

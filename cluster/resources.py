"""The resources each size gets per cluster profile, read from `resources.yaml` beside this module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RESOURCES = Path(__file__).with_name("resources.yaml")


@dataclass(frozen=True)
class Placement:
    resources: dict[str, Any]  # a RunSpec `resources` section
    max_micro_batch: int  # sequences per worker per forward that fit
    max_params: int | None = None  # the largest model (all parameters) a run of this profile may plan

    def micro_batch(self, global_batch: int, workers: int, fits: int | None = None) -> int:
        """The largest divisor of the per-worker batch within the cap (and within `fits`, what the memory model
        says fits one GPU): the rest is gradient accumulation."""
        per_worker = max(1, global_batch // workers)
        cap = min(per_worker, self.max_micro_batch, per_worker if fits is None else fits)
        return max(d for d in range(1, max(1, cap) + 1) if per_worker % d == 0)


def profiles(path: Path = RESOURCES) -> list[str]:
    return list(yaml.safe_load(path.read_text()))


def placement(size: str, profile: str = "cpu", path: Path = RESOURCES) -> Placement:
    table = yaml.safe_load(path.read_text())
    if profile not in table:
        raise ValueError(f"no resource profile {profile!r} in {path}; profiles: {', '.join(table)}")
    entry = dict(table[profile].get(size, table[profile].get("default")) or {})
    if not entry:
        raise ValueError(f"{path}: profile {profile!r} has no entry for {size} and no default")
    most = entry.pop("max_params", None)
    return Placement(entry, int(entry.pop("max_micro_batch", 2**31 - 1)), None if most is None else int(most))

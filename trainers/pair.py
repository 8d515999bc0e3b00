"""A matched pair run locally, one arm after the other, through the same path as every run (`trainers.entry`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainers.entry import run
from trainers.evaluate import headline
from trainers.spec import RunSpec, check_matched


def run_pair(
    spec: RunSpec,
    variants: tuple[str, ...] = ("hidden",),
    on_progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Vanilla, then one myopic arm per variant (each checked to differ from vanilla only in attention.mode);
    returns each arm's result and the gaps (myopic − vanilla held-out loss)."""
    vanilla = spec.arm("vanilla")
    arms = {"vanilla": vanilla}
    named = (lambda arm, label: arm.model_copy(update={"name": f"{spec.name}-{label}"})) if spec.name else None
    for variant in variants:
        myopic = spec.model_copy(update={"attention": spec.attention.model_copy(
            update={"mode": "myopic", "variant": variant})})  # fmt: skip
        # the vanilla arm is the same run whatever the variant: compare it to the variant's own vanilla arm
        check_matched(myopic.arm("vanilla"), myopic)
        arms[f"myopic-{variant}"] = myopic
    results: dict[str, Any] = {}
    for name, arm_spec in arms.items():
        arm_spec = named(arm_spec, name) if named else arm_spec  # one run name per arm
        results[name] = run(arm_spec, on_progress=(lambda s, n=name: on_progress(n, s)) if on_progress else None)
    key, base = headline(results["vanilla"]["eval"])
    results["gap"] = {name: headline(r["eval"])[1] - base for name, r in results.items() if name != "vanilla"}
    results["metric"] = key
    return results

"""A matched vanilla/myopic pair on D_p in one process: same init, same batches, same optimizer; held-out Huber/p.

The single-machine precursor of the Ray/DeepSpeed runs: it is what `myopia demo` runs while the control plane is
being built, and what the tests use to check that the two arms separate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from trainers.myopic import AttentionMode, Variant, set_attention
from trainers.synthetic import RegressionGPTNeoX, SyntheticTask, huber, regression_config


@dataclass(frozen=True)
class ArmConfig:
    task: SyntheticTask = SyntheticTask(p=0.5, b=3.0)
    attention: AttentionMode = "vanilla"
    variant: Variant = "hidden"
    steps: int = 600
    batch: int = 64
    lr: float = 3e-3
    warmup_frac: float = 0.01
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0
    eval_sequences: int = 1024


def check_matched(vanilla: ArmConfig, myopic: ArmConfig) -> None:
    """Refuse two arms that differ in anything but the attention mode."""
    a, b = asdict(vanilla), asdict(myopic)
    differing = sorted(k for k in a if a[k] != b[k] and k != "attention")
    if differing or (vanilla.attention, myopic.attention) != ("vanilla", "myopic"):
        raise ValueError(f"a pair is one vanilla and one myopic arm, alike in all else; these differ in {differing}")


def pair(config: ArmConfig) -> tuple[ArmConfig, ArmConfig]:
    vanilla, myopic = replace(config, attention="vanilla"), replace(config, attention="myopic")
    check_matched(vanilla, myopic)
    return vanilla, myopic


def cosine_with_warmup(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_arm(config: ArmConfig, progress: Callable[[int, float], None] | None = None) -> dict:
    task = config.task
    torch.manual_seed(config.seed)  # same init in both arms: building the model draws nothing else
    model = set_attention(RegressionGPTNeoX(regression_config(seq_len=task.seq_len)), config.attention,
                          variant=config.variant)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_frac * config.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, config.steps, warmup))
    data = torch.Generator().manual_seed(10_000 + config.seed)  # fresh samples every step, same in both arms
    started = time.perf_counter()
    for step in range(config.steps):
        inputs, target, _ = task.sample(config.batch, data)
        loss = huber(model(inputs), target).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        sched.step()
        if progress:
            progress(step + 1, loss.item())
    return {"seconds": time.perf_counter() - started, **evaluate(model, config)}


@torch.no_grad()
def evaluate(model: RegressionGPTNeoX, config: ArmConfig) -> dict:
    """Held-out Huber/p, mean and per position, on one fixed set (its own seed, never used for training)."""
    task = config.task
    inputs, target, _ = task.sample(config.eval_sequences, torch.Generator().manual_seed(999_999))
    per_position = huber(model(inputs), target).mean(0) / task.p
    return {"huber_over_p": per_position.mean().item(), "per_position": per_position.tolist()}


def run_pair(
    config: ArmConfig,
    progress: Callable[[str, int, float], None] | None = None,
    variants: tuple[Variant, ...] | None = None,
) -> dict:
    """Train the pair; with several `variants`, one myopic arm each against the one (shared) vanilla arm."""
    arms = {"vanilla": pair(config)[0]}
    for variant in variants or (config.variant,):
        arms[f"myopic-{variant}" if variants else "myopic"] = pair(replace(config, variant=variant))[1]
    results: dict = {}
    for name, arm in arms.items():
        cb = (lambda s, loss, n=name: progress(n, s, loss)) if progress else None
        results[name] = train_arm(arm, cb)
    base = results["vanilla"]["huber_over_p"]
    results["gap"] = {name: r["huber_over_p"] - base for name, r in results.items() if name != "vanilla"}
    return results

"""DeepSpeed engines for Pythia models in either attention mode: CPU (gloo) and CUDA (nccl) on one code path.
Import it after `trainers.runtime.configure_deepspeed_env()` (DeepSpeed picks its accelerator on import)."""

from __future__ import annotations

from typing import Any

import deepspeed
import torch
from deepspeed.utils import set_z3_leaf_modules

from trainers.myopic import MyopicGPTNeoXAttention
from trainers.speedups import FusedLossHead


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def ds_config(
    *,
    stage: int,
    micro_batch: int,
    grad_accum: int = 1,
    world_size: int = 1,
    precision: str = "fp32",
    clip: float = 1.0,
) -> dict[str, Any]:
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, not {stage!r}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": clip,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # a torch AdamW client optimizer: no JIT-built CPU Adam op
        "steps_per_print": 2**31 - 1,
    }


def initialize(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> deepspeed.DeepSpeedEngine:
    """`deepspeed.initialize` for a model built by `trainers.models` (dist must be up, under a launcher).

    The scheduler steps with the optimizer and is saved in the engine's checkpoints.
    """
    if config["zero_optimization"]["stage"] == 3:
        # the myopic attention and the fused loss head read their weights themselves: ZeRO-3 must gather per module
        set_z3_leaf_modules(model, [MyopicGPTNeoXAttention, FusedLossHead])
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def init_distributed() -> None:
    deepspeed.init_distributed(dist_backend=backend())

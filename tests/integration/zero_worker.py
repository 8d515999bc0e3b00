"""Run under torchrun: a few optimizer steps of DeepSpeed ZeRO 0-3 for each attention mode; rank 0 saves the
first step's full gradients and the final full parameters for the test to compare (test_zero.py)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from tests.oracle import lm_loss, tiny_config
from trainers.models import build_model
from trainers.myopic import set_attention
from trainers.runtime import configure_deepspeed_env
from trainers.speedups import fuse_loss

MODES = [("vanilla", "hidden"), ("myopic", "hidden"), ("myopic", "kv")]
# The GPU speedups (trainers.speedups) forced on, on CPU: the fused-loss head (its CPU form) and engine.compile
# (inductor), at the stages where DeepSpeed partitions what they touch
FAST_STAGES, FAST_MODE = (2, 3), ("myopic", "hidden")
STEPS, GLOBAL_BATCH, T = 3, 4, 16
# eps well above float32 gradient noise: Adam's first steps are sign-like, and entries whose gradient is zero in
# exact arithmetic (the key bias, by softmax shift invariance) would turn rounding noise into full-size updates
ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randint(0, 48, (GLOBAL_BATCH, T), generator=g) for _ in range(STEPS)]


def fresh_model(mode: str, variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return set_attention(build_model("14m", **tiny_config()), mode, variant=variant)


def full(tensor_of: object, params: list[tuple[str, torch.nn.Parameter]], stage: int) -> dict[str, torch.Tensor]:
    """Whole (gathered) tensors; every rank must call this under ZeRO-3, where gathering is collective."""
    if stage == 0:  # no partitioning: the parameter and its .grad are whole already
        return {n: (p if tensor_of.__name__.endswith("param") else p.grad).detach().clone() for n, p in params}
    return {n: tensor_of(p).detach().clone().cpu() for n, p in params}  # type: ignore[operator]


def main(out: str) -> None:
    configure_deepspeed_env()  # this script is an entry point: before deepspeed is imported
    from trainers import engine as eng

    eng.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    results = {}
    runs = [(stage, mode, variant, False) for stage in (0, 1, 2, 3) for mode, variant in MODES]
    runs += [(stage, *FAST_MODE, True) for stage in FAST_STAGES]
    for stage, mode, variant, fast in runs:
        model = fresh_model(mode, variant)
        if fast:
            fuse_loss(model)
        config = eng.ds_config(stage=stage, micro_batch=GLOBAL_BATCH // world, world_size=world)
        engine = eng.initialize(model, torch.optim.AdamW(model.parameters(), **ADAMW), config)
        if fast:
            engine.compile()
        params = list(engine.module.named_parameters())
        per_rank = GLOBAL_BATCH // world
        grads = None
        for step, ids in enumerate(batches()):
            mine = ids[rank * per_rank : (rank + 1) * per_rank]
            loss = engine(mine, labels=mine, use_cache=False).loss if fast else lm_loss(engine, mine)
            engine.backward(loss)
            if step == 0:
                grads = full(safe_get_full_grad, params, stage)
            engine.step()
        final = full(safe_get_full_fp32_param, params, stage)
        if rank == 0:
            results[(stage, mode, variant, fast)] = {"grads": grads, "params": final}
        engine.destroy()
    if rank == 0:
        torch.save(results, out)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])

"""Per-GPU memory of each Pythia size as the gpu profile of `cluster/resources.yaml` places it, for the paper's
fine-tune (`pythia-paper`: global batch 6,144 × 64 tokens, fp16): model states from DeepSpeed's own ZeRO
estimators (no offload) and activations by Korthikanti et al.'s count, s·b·h·(34 + 5·a·s/h) bytes per layer,
plus the logits. `python -m cluster.memory` prints the table (docs/operations.md)."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.resources import placement
from trainers.models import PYTHIA_SIZES, PYTHIA_VOCAB
from trainers.runtime import configure_deepspeed_env
from trainers.spec import ResourceSpec

GPU_GB = 80
GIB = 1024**3


@dataclass(frozen=True)
class Estimate:
    size: str
    zero_stage: int
    gpus: int
    micro_batch: int
    model_states_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.model_states_gib + self.activations_gib


def model_states_bytes(n_params: int, largest_layer: int, stage: int, gpus: int) -> int:
    """Per GPU, mixed precision with Adam: DeepSpeed's estimators for stages 2 and 3; stages 0 and 1 by the same
    accounting (2 bytes fp16 params + 2 fp16 grads + 16 of fp32 grads, params and Adam moments; stage 1 partitions
    those 16, stage 0 nothing)."""
    configure_deepspeed_env()  # before deepspeed is first imported
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        return estimate_zero3_model_states_mem_needs(n_params, largest_layer, gpus, 1, cpu_offload=False)[1]
    if stage == 2:
        return estimate_zero2_model_states_mem_needs(n_params, gpus, 1, cpu_offload=False)[1]
    return 4 * n_params + (16 * n_params // gpus if stage == 1 else 16 * n_params)


def estimate(size: str, global_batch: int = 6144, seq_len: int = 64, profile: str = "gpu") -> Estimate:
    s = PYTHIA_SIZES[size]
    where = placement(size, profile)
    res = ResourceSpec.model_validate(where.resources)
    gpus = int(res.workers * res.gpus_per_worker)
    micro = where.micro_batch(global_batch, res.workers)  # as the planner picks it
    h, a, L = s.hidden, s.heads, s.layers
    largest = max(PYTHIA_VOCAB * h, 12 * h * h)  # the embedding outweighs a block below 1b
    states = model_states_bytes(s.n_params(), largest, res.zero_stage, gpus)
    acts = L * seq_len * micro * h * (34 + 5 * a * seq_len / h) + micro * seq_len * PYTHIA_VOCAB * (2 + 4)
    return Estimate(size, res.zero_stage, gpus, micro, states / GIB, acts / GIB)


def table() -> list[Estimate]:
    return [estimate(size) for size in PYTHIA_SIZES]


if __name__ == "__main__":
    print("| size | ZeRO | GPUs | micro batch | model states GiB/GPU | activations GiB/GPU | total GiB/GPU |")
    print("|---|---|---|---|---|---|---|")
    for e in table():
        print(
            f"| {e.size} | {e.zero_stage} | {e.gpus} | {e.micro_batch} | {e.model_states_gib:.1f} | "
            f"{e.activations_gib:.1f} | {e.total_gib:.1f} |"
        )

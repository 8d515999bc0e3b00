"""Peak memory per GPU of each Pythia size as the gpu profile of `cluster/resources.yaml` places it, for the paper's
fine-tune (`pythia-paper`: global batch 6,144 × 64 tokens, fp16), and the largest micro-batch that fits a GPU.

Per GPU, the peak (during backward) is

    (model states + activations + DeepSpeed buffers) × (1 + fragmentation) + CUDA context and NCCL

- model states: DeepSpeed's own ZeRO estimators (no offload);
- activations: fitted to measured peaks of live tensors in one forward and backward of the project's model
  (`bench/memory_calibration.py`, below), per precision: per layer, per logit, per token;
- DeepSpeed buffers: ZeRO's gradient bucket, sized by the DeepSpeed config `trainers.engine.ds_config` writes;
- fragmentation and the CUDA context: assumptions (no GPU measured them), stated at their constants.

`python -m cluster.memory` prints the table of docs/operations.md ("Placement and memory per size")."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from cluster.resources import placement
from trainers.models import PYTHIA_SIZES, PYTHIA_VOCAB
from trainers.runtime import configure_deepspeed_env
from trainers.spec import ResourceSpec

GPU_GB = 80
GIB = 1024**3
GPU_BYTES = GPU_GB * 10**9  # 80 GB taken as 80e9 bytes (74.5 GiB), below what an 80 GB A100/H100 holds (~79 GiB)
HEADROOM = 0.10
BUDGET_BYTES = (1 - HEADROOM) * GPU_BYTES  # 72e9 bytes = 67.1 GiB: every planned run must stay below


@dataclass(frozen=True)
class ActivationBytes:
    """Peak bytes above the model states in one forward and backward, N = micro-batch × sequence length tokens:
    layer·L·N·h + logit·N·V + token·N·h."""

    layer: float  # per layer, token and hidden unit: what each block saves for backward
    logit: float  # per token and vocabulary entry: the logits, their fp32 upcast for the loss and its gradients
    token: float  # per token and hidden unit outside the blocks (embedding, final LayerNorm, backward transients)


# Fitted by `python bench/memory_calibration.py` (torch 2.13, transformers 5.23, CPU; about a minute): peaks of
# live tensors under `cluster.memory_probe.StorageTracker`, the same aten ops a GPU runs; every fit point and the
# held-out full-vocabulary Pythia-14m/31m points within 0.5% of the fit. The a·s² (attention scores) term of
# Korthikanti et al. fits to 0 (|c| < 0.05 bytes): the fused attention kernels keep no s×s tensor; it is left out.
# Myopic attention's peaks equal vanilla's to the byte. 12 bytes per logit: as backward starts, three fp32 (N, V)
# tensors live at once, the log-softmax output kept for backward, the loss's gradient to it and the gradient to
# the logits (the loss upcasts 16-bit logits to fp32; the forward peaks at 2 + 4 + 4). The former count had 6.
ACTIVATIONS: dict[str, ActivationBytes] = {
    "fp32": ActivationBytes(layer=72.6, logit=12.0, token=7.7),
    "bf16": ActivationBytes(layer=36.2, logit=12.0, token=4.1),
    "fp16": ActivationBytes(layer=36.2, logit=12.0, token=4.1),
}
# Assumption, not measured here (no GPU): the CUDA context with PyTorch's kernels (~0.5-1 GiB on A100/H100 by
# public nvidia-smi readings), cuBLAS workspaces and NCCL's communicator buffers (a few hundred MiB on one node):
# outside PyTorch's allocator, so not subject to fragmentation.
CONTEXT_BYTES = 2 * GIB
# Assumption: what PyTorch's caching allocator reserves beyond the live tensors (block rounding, segments split
# between sizes), plus kernel workspaces the CPU measurement cannot see (flash attention's backward accumulators).
FRAGMENTATION = 0.10


@dataclass(frozen=True)
class Estimate:
    size: str
    zero_stage: int
    gpus: int
    micro_batch: int
    model_states_gib: float
    activations_gib: float
    buffers_gib: float  # DeepSpeed's gradient bucket(s)
    context_gib: float  # CUDA context, cuBLAS and NCCL
    fragmentation_gib: float
    largest_micro_batch: int  # the most sequences per forward that stay within the budget

    @property
    def total_gib(self) -> float:
        return (
            self.model_states_gib + self.activations_gib + self.buffers_gib + self.context_gib + self.fragmentation_gib
        )


def model_states_bytes(n_params: int, largest_layer: int, stage: int, gpus: int, precision: str = "fp16") -> int:
    """Per GPU, with Adam: DeepSpeed's estimators for stages 2 and 3 (16-bit params and grads, 16 bytes of fp32
    grads, params and moments per parameter); stages 0 and 1 by the same accounting (stage 1 partitions those 16,
    stage 0 nothing). fp32 runs keep params and grads in 4 bytes: 2 more per parameter each, partitioned alike."""
    configure_deepspeed_env()  # before deepspeed is first imported
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        states = estimate_zero3_model_states_mem_needs(n_params, largest_layer, gpus, 1, cpu_offload=False)[1]
    elif stage == 2:
        states = estimate_zero2_model_states_mem_needs(n_params, gpus, 1, cpu_offload=False)[1]
    else:
        states = 4 * n_params + (16 * n_params // gpus if stage == 1 else 16 * n_params)
    if precision == "fp32":
        states += 2 * n_params // (gpus if stage == 3 else 1) + 2 * n_params // (gpus if stage >= 2 else 1)
    return states


def shape_activation_bytes(
    layers: int, hidden: int, vocab: int, tokens: int, precision: str = "fp16", fused_loss: bool = False
) -> float:
    """Activations of any GPT-NeoX shape for `tokens` = micro-batch × sequence length."""
    c = ACTIVATIONS[precision]
    return tokens * (c.layer * layers * hidden + c.token * hidden) + loss_bytes(
        hidden, vocab, tokens, precision, fused_loss
    )


def loss_bytes(hidden: int, vocab: int, tokens: int, precision: str, fused_loss: bool) -> float:
    """The output projection and loss: the logits and their gradients (measured, 12 bytes per logit), or with
    `train.fused_loss` what liger-kernel 0.8.5 allocates, read from its source (not measured: no GPU here). It runs
    the N = micro-batch × (T − 1) predictions in chunks of min(next_pow2(⌈N / ⌈V/h⌉⌉), N) rows: one chunk of logits
    in the input dtype (their gradient is written in place), the head's input gradient (N × h, input dtype) and its
    weight gradient (V × h, fp32 accumulation, `trainers.speedups`); in fp32 runs one more V × h fp32 temporary per
    chunk's weight-gradient product."""
    if not fused_loss:
        return ACTIVATIONS[precision].logit * tokens * vocab
    width = 4 if precision == "fp32" else 2
    rows = tokens  # N(T − 1)/T of them in truth: counting T per sequence errs on the safe side
    chunk = min(2 ** math.ceil(math.log2(max(1, -(-rows // -(-vocab // hidden))))), rows)
    weight_grad = vocab * hidden * 4 * (2 if precision == "fp32" else 1)
    return chunk * vocab * width + rows * hidden * width + weight_grad


def activation_bytes(
    size: str, micro_batch: int, seq_len: int = 64, precision: str = "fp16", fused_loss: bool = False
) -> float:
    s = PYTHIA_SIZES[size]
    return shape_activation_bytes(s.layers, s.hidden, PYTHIA_VOCAB, micro_batch * seq_len, precision, fused_loss)


def deepspeed_buffers_bytes(stage: int, precision: str = "fp16") -> int:
    """ZeRO's gradient bucket, live through backward: stages 1-2 allocate `reduce_bucket_size` elements of the
    gradient dtype at the first gradient (two with overlap_comm), stage 0 flattens buckets of the same default
    size for its all-reduce, stage 3 also prefetches `stage3_prefetch_bucket_size` 16-bit parameters. The
    all-gather of updated parameters runs in place (all_gather_into_tensor): `allgather_bucket_size` adds nothing.
    Sizes are DeepSpeed's defaults unless `trainers.engine.ds_config` sets them."""
    configure_deepspeed_env()
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from trainers.engine import ds_config

    zero = DeepSpeedZeroConfig(**ds_config(stage=stage, micro_batch=1, precision=precision)["zero_optimization"])
    width = 4 if precision == "fp32" else 2
    buckets = zero.reduce_bucket_size * (2 if zero.overlap_comm else 1) * width
    return int(buckets + (zero.prefetch_bucket_size * width if stage == 3 else 0))


def placed(size: str, profile: str = "gpu") -> tuple[int, int, int]:
    """(ZeRO stage, workers, GPUs) of a size as the profile places it."""
    res = ResourceSpec.model_validate(placement(size, profile).resources)
    return res.zero_stage, res.workers, int(res.workers * res.gpus_per_worker)


def fixed_bytes(size: str, zero_stage: int, gpus: int, precision: str = "fp16") -> tuple[int, int]:
    """(model states, DeepSpeed buffers) per GPU: what does not grow with the micro-batch."""
    s = PYTHIA_SIZES[size]
    largest = max(PYTHIA_VOCAB * s.hidden, 12 * s.hidden * s.hidden)  # the embedding outweighs a block below 1b
    states = model_states_bytes(s.n_params(), largest, zero_stage, gpus, precision)
    return states, deepspeed_buffers_bytes(zero_stage, precision)


def peak_bytes(
    size: str,
    micro_batch: int,
    *,
    seq_len: int = 64,
    precision: str = "fp16",
    zero_stage: int = 1,
    gpus: int = 1,
    fused_loss: bool = False,
) -> float:
    """Per GPU, everything included: compare with BUDGET_BYTES."""
    states, buffers = fixed_bytes(size, zero_stage, gpus, precision)
    acts = activation_bytes(size, micro_batch, seq_len, precision, fused_loss)
    return (states + acts + buffers) * (1 + FRAGMENTATION) + CONTEXT_BYTES


def largest_micro_batch(
    size: str,
    *,
    seq_len: int = 64,
    precision: str = "fp16",
    zero_stage: int = 1,
    gpus: int = 1,
    fused_loss: bool = False,
) -> int:
    """The most sequences per worker per forward whose peak stays below BUDGET_BYTES (0: not even one)."""
    kw = dict(seq_len=seq_len, precision=precision, zero_stage=zero_stage, gpus=gpus, fused_loss=fused_loss)

    def fits(micro: int) -> bool:
        return peak_bytes(size, micro, **kw) < BUDGET_BYTES  # type: ignore[arg-type]

    low, high = 0, 1  # fits(low); the peak grows with the micro-batch: double, then bisect
    while fits(high):
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def estimate(
    size: str, global_batch: int = 6144, seq_len: int = 64, profile: str = "gpu", precision: str = "fp16"
) -> Estimate:
    """Per GPU, at the micro-batch the planner picks for this global batch (`Placement.micro_batch`)."""
    stage, workers, gpus = placed(size, profile)
    micro = placement(size, profile).micro_batch(global_batch, workers)
    states, buffers = fixed_bytes(size, stage, gpus, precision)
    acts = activation_bytes(size, micro, seq_len, precision)
    return Estimate(
        size,
        stage,
        gpus,
        micro,
        states / GIB,
        acts / GIB,
        buffers / GIB,
        CONTEXT_BYTES / GIB,
        (states + acts + buffers) * FRAGMENTATION / GIB,
        largest_micro_batch(size, seq_len=seq_len, precision=precision, zero_stage=stage, gpus=gpus),
    )


def table(precision: str = "fp16") -> list[Estimate]:
    return [estimate(size, precision=precision) for size in PYTHIA_SIZES]


def markdown(precision: str = "fp16") -> str:
    """The table as docs/operations.md has it, GiB per GPU."""
    lines = [
        "| size | ZeRO | GPUs | micro batch | model states | activations | DeepSpeed buffers | CUDA + NCCL | "
        "fragmentation | total GiB/GPU | largest micro batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table(precision):
        lines.append(
            f"| {e.size} | {e.zero_stage} | {e.gpus} | {e.micro_batch} | {e.model_states_gib:.1f} | "
            f"{e.activations_gib:.1f} | {e.buffers_gib:.1f} | {e.context_gib:.1f} | {e.fragmentation_gib:.1f} | "
            f"{e.total_gib:.1f} | {e.largest_micro_batch} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(*sys.argv[1:2]))  # optional precision: fp16 (the paper's, default), bf16 or fp32

"""What a modern GPU trainer uses, each behind a RunSpec switch: torch.compile (`train.compile`), torch's fused AdamW
(`optimizer.fused`) and liger-kernel's fused linear + cross-entropy (`train.fused_loss`), which computes the loss
chunk by chunk and never holds the micro-batch × T × 50k logits.

They apply on GPU workers only: liger's kernels are Triton (GPU), and CPU runs are small and short, where compiling
costs more than it gains. The fused loss is for text runs, and not in fp16: liger computes the logits' gradient
during the forward, before DeepSpeed's loss scale is applied, and in fp16 the small entries of (p − y)/N underflow.
Both arms of a pair get the same switches (they are part of the run's identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GPTNeoXForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from trainers.spec import RunSpec


@dataclass(frozen=True)
class Speedups:
    compile: bool
    fused_adamw: bool
    fused_loss: bool


def speedups(spec: RunSpec, cuda: bool | None = None) -> Speedups:
    """The switches this worker turns on: the spec's, on a GPU worker."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return Speedups(
        compile=cuda and spec.train.compile and spec.attention.mode != "local",  # (its wrapper: not compiled, not run)
        fused_adamw=cuda and spec.optimizer.fused,
        # the local arm's wrapper computes its loss through the inner model's own head
        fused_loss=cuda
        and spec.attention.mode != "local"
        and fuses_loss(spec.data.kind, spec.train.precision, spec.train.fused_loss),
    )


def fuses_loss(data_kind: str, precision: str, switch: bool) -> bool:
    """Whether a GPU run with these settings uses the fused loss (the planner's memory model asks too)."""
    return switch and data_kind in ("text", "hf") and precision != "fp16"


class FusedLossHead(torch.nn.Linear):
    """GPT-NeoX's output projection (`lm_head`) that, given labels, returns the mean cross-entropy instead of the
    logits: liger-kernel's fused linear + cross-entropy on CUDA, the plain linear and cross-entropy elsewhere.

    A module of its own, so that ZeRO-3 gathers its weight when it is called (it is a leaf: `trainers.engine`)."""

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if labels is None:
            return super().forward(hidden)
        h, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        if h.is_cuda:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            # fp32 accumulation of the head's weight gradient across chunks (liger's default rounds per chunk)
            return LigerFusedLinearCrossEntropyLoss(accum_dtype=torch.float32)(self.weight, h, y, self.bias)
        return F.cross_entropy(F.linear(h, self.weight, self.bias).float(), y)


class FusedLossGPTNeoX(GPTNeoXForCausalLM):
    """With `labels`, the next-token loss through `FusedLossHead` (no logits returned); without, the model as is."""

    def forward(self, input_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs: Any):  # type: ignore[override]
        if labels is None:
            return super().forward(input_ids, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.gpt_neox(input_ids, **kwargs).last_hidden_state
        loss = self.lm_head(hidden[:, :-1], labels=labels[:, 1:])
        return CausalLMOutputWithPast(loss=loss)


def fuse_loss(model: GPTNeoXForCausalLM) -> GPTNeoXForCausalLM:
    """In place, as `set_attention` does: same parameters and state_dict, another forward."""
    model.__class__ = FusedLossGPTNeoX
    model.get_output_embeddings().__class__ = FusedLossHead
    return model


def adamw(groups: list[dict[str, Any]], spec: RunSpec, fused: bool) -> torch.optim.AdamW:
    o = spec.optimizer
    return torch.optim.AdamW(groups, lr=spec.lr, betas=o.betas, eps=o.eps, fused=fused or None)

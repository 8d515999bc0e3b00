"""The local myopia bonus (docs/science.md; the paper's section 1.4, the tied variant as its code computes it).

A fresh model trains with the past computed by a frozen, trained vanilla model: in every layer ℓ, the keys and values
of earlier positions are the fresh model's own projections (its LayerNorm and QKV) of the vanilla model's residual
stream entering layer ℓ; the diagonal, the queries and everything after attention are the fresh model's own. Its
loss below the vanilla model's is the bonus: how much better the present could do with the vanilla past held fixed,
i.e. how much present accuracy the vanilla model gives up to pre-cache.

The paper's code fed the vanilla residual stream to the projection without the layer's LayerNorm (PAPER.md's
surprise 3); here it passes the fresh layer's own LayerNorm, so the past keys and values are exactly what the fresh
layer would compute from that stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GPTNeoXForCausalLM

from trainers.job_protocol import CHECKPOINT_TAG, is_uri
from trainers.myopic import MyopicGPTNeoXAttention


class LocalMyopic(nn.Module):
    """`trained` (attention mode `local`) run on the past of `frozen` (a trained vanilla model, no gradients)."""

    def __init__(self, trained: GPTNeoXForCausalLM, frozen: GPTNeoXForCausalLM) -> None:
        super().__init__()
        if trained.config.num_hidden_layers != frozen.config.num_hidden_layers:
            raise ValueError("the frozen vanilla model must have the trained model's shape")
        self.trained = trained
        self.frozen = frozen.eval().requires_grad_(False)
        self.config = trained.config

    def train(self, mode: bool = True) -> LocalMyopic:
        self.trained.train(mode)
        self.frozen.eval()  # always: it is a fixed function
        return self

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        with torch.no_grad():
            streams = self.frozen(input_ids, output_hidden_states=True, use_cache=False).hidden_states
        layers = self.trained.gpt_neox.layers
        try:
            for layer, stream in zip(layers, streams, strict=False):  # streams[ℓ] enters layer ℓ
                attention: MyopicGPTNeoXAttention = layer.attention
                attention.past = layer.input_layernorm(stream)
            return self.trained(input_ids, **kwargs)
        finally:
            for layer in layers:
                layer.attention.past = None


def latest_checkpoint(storage: str, run_name: str) -> Path:
    """The newest Ray Train checkpoint of a run in local storage (its final one, once the run succeeded)."""
    if is_uri(storage):
        raise FileNotFoundError(
            f"local attention reads its vanilla partner's checkpoint from a local or shared folder, not from {storage}"
        )
    root = Path(storage).expanduser() / run_name
    found = sorted(p for p in root.glob("checkpoint_*") if p.is_dir())  # named by time: the last sorts last
    if not found:
        raise FileNotFoundError(f"no checkpoint of run {run_name} under {root}: has it finished?")
    return found[-1]


def partner_weights(checkpoint: Path, steps: int) -> dict[str, torch.Tensor]:
    """A vanilla run's final weights from its DeepSpeed checkpoint (refused unless written after `steps`, the run's
    last step): the module's state (ZeRO 0–2), or the partitions consolidated by DeepSpeed's own zero_to_fp32
    (ZeRO-3, whose module state holds no weights)."""
    states = torch.load(
        checkpoint / CHECKPOINT_TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )
    if states.get("step") != steps:
        raise ValueError(
            f"{checkpoint} is from step {states.get('step')}, not the run's last ({steps}): has it finished?"
        )
    module = states["module"]
    if any(t.numel() == 0 for t in module.values() if torch.is_tensor(t)):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        module = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=CHECKPOINT_TAG)
    return {k: v.float() for k, v in module.items()}

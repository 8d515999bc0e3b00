"""Test oracles: the brute-force myopic gradient of docs/science.md and the plain loss both sides of a test share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GPTNeoXForCausalLM

from trainers.myopic import Variant, set_attention, set_cut


def tiny_config(**overrides: object) -> dict[str, object]:
    """A Pythia-shaped model small enough for O(T) backward passes in float64 (head dim 16, rotary 4 dims)."""
    cfg: dict[str, object] = dict(vocab_size=48, num_hidden_layers=3, hidden_size=64, num_attention_heads=4)
    cfg.update(overrides)
    return cfg


def lm_loss(model: GPTNeoXForCausalLM, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over all B·(T−1) predictions (what `labels=` computes without padding)."""
    logits = model(ids, attention_mask=attention_mask, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def grads(model: GPTNeoXForCausalLM, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True)
    return dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True), strict=True))


def brute_force_grads(model: GPTNeoXForCausalLM, ids: torch.Tensor, variant: Variant) -> dict[str, torch.Tensor]:
    """Σ_i ∇ L_i with every attention layer's past inputs (hidden) or past keys/values (kv) detached for j < i.

    One forward and backward per position, through the reference implementation's `cut`.
    """
    B, T = ids.shape
    set_attention(model, "myopic", variant=variant, impl="reference")
    total: dict[str, torch.Tensor] = {}
    try:
        for i in range(T - 1):  # the loss at position i predicts token i + 1
            set_cut(model, i)
            logits = model(ids, use_cache=False).logits
            loss_i = F.cross_entropy(logits[:, i], ids[:, i + 1], reduction="sum") / (B * (T - 1))
            for name, g in grads(model, loss_i).items():
                g = torch.zeros_like(dict(model.named_parameters())[name]) if g is None else g
                total[name] = total[name] + g if name in total else g
    finally:
        set_cut(model, None)
    return total


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    assert a.keys() == b.keys()
    worst = max(a, key=lambda n: (a[n] - b[n]).abs().max().item())
    return (a[worst] - b[worst]).abs().max().item(), worst

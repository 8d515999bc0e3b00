"""Test oracles: the brute-force myopic gradient of docs/science.md and the plain loss both sides of a test share."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from transformers import GPTNeoXForCausalLM

from trainers.myopic import Variant, set_attention, set_cut


def tiny_config(**overrides: object) -> dict[str, object]:
    """A Pythia-shaped model small enough for O(T) backward passes in float64 (head dim 16, rotary 4 dims)."""
    cfg: dict[str, object] = dict(vocab_size=48, num_hidden_layers=3, hidden_size=64, num_attention_heads=4)
    cfg.update(overrides)
    return cfg


def perturbed_model(**overrides: object) -> GPTNeoXForCausalLM:
    """A float64 tiny model (seed 0) whose weights are moved off the init: a trained model has larger, less symmetric
    weights, and the tests' gradients should be non-trivial."""
    from trainers.models import build_model

    torch.manual_seed(0)
    m = build_model("14m", dtype=torch.float64, **tiny_config(**overrides))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


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


# ---- half precision: each dtype judged against its own floor (what vanilla SDPA and the paper-style reference err by)
PRECISIONS = {  # label: (weight dtype, autocast dtype or None)
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "bf16-autocast": (torch.float32, torch.bfloat16),
    "fp16-autocast": (torch.float32, torch.float16),
}


def rel_err(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """max over parameters of max|g − w| / max|w| (each parameter against its own gradient's scale)."""
    worst = 0.0
    for name, w in want.items():
        g = got[name].double().cpu()
        if not torch.isfinite(g).all():  # max() would skip a NaN: a non-finite gradient is an infinite error
            return math.inf
        scale = w.abs().max().item()
        if scale > 0:
            worst = max(worst, (g - w).abs().max().item() / scale)
    return worst


def precision_grads(
    model: GPTNeoXForCausalLM,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    precision: str,
    mode: str,
    variant: Variant = "hidden",
    beta: float = 0.0,
    impl: str = "fused",
) -> dict[str, torch.Tensor]:
    """The gradient of `lm_loss` with `model` (already in the precision's weight dtype) run in that precision."""
    _, autocast = PRECISIONS[precision]
    set_attention(model, mode, variant=variant, beta=beta, impl=impl)  # type: ignore[arg-type]
    device = ids.device.type
    with torch.autocast(device, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = lm_loss(model, ids, mask)
    return grads(model, loss.float())


def floor_errors(
    m64: GPTNeoXForCausalLM,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    precision: str,
    variant: Variant,
    beta: float,
    device: str = "cpu",
) -> tuple[float, float, float]:
    """(e_myopic, e_vanilla, e_reference): relative errors against float64 targets of the fused myopic gradient,
    vanilla SDPA's gradient and the paper-style reference's, all computed in `precision` on `device`. The float64
    myopic target is the fused CPU gradient, itself checked against the brute force in float64."""
    set_attention(m64, "myopic", variant=variant, beta=beta)
    want = grads(m64, lm_loss(m64, ids, mask))
    set_attention(m64, "vanilla")
    want_vanilla = grads(m64, lm_loss(m64, ids, mask))
    weights, _ = PRECISIONS[precision]
    model = copy.deepcopy(m64).to(device, weights)
    ids, mask = ids.to(device), None if mask is None else mask.to(device)
    e_myopic = rel_err(precision_grads(model, ids, mask, precision, "myopic", variant, beta), want)
    e_vanilla = rel_err(precision_grads(model, ids, mask, precision, "vanilla"), want_vanilla)
    e_ref = rel_err(precision_grads(model, ids, mask, precision, "myopic", variant, beta, "reference"), want)
    return e_myopic, e_vanilla, e_ref


def last_position_input_grad(
    model: GPTNeoXForCausalLM, ids: torch.Tensor, precision: str, mode: str, variant: Variant
) -> torch.Tensor:
    """The gradient of the loss at the last position alone into the input embeddings (B, T, d)."""
    _, autocast = PRECISIONS[precision]
    set_attention(model, mode, variant=variant)  # type: ignore[arg-type]
    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with torch.autocast(ids.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        logits = model(inputs_embeds=embeds, use_cache=False).logits
    F.cross_entropy(logits[:, -2].float(), ids[:, -1]).backward()
    return embeds.grad

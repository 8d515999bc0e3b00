"""Myopic attention for GPT-NeoX: the forward of vanilla attention, the backward without past-position gradients.

See docs/science.md. For the loss at query i, every attention layer sees the positions j < i only through tensors that
carry no gradient back into them: the attention input x_j (variant `hidden`, the paper's) or the keys and values
k_j, v_j (variant `kv`). `beta` scales the gradient through every edge from a query to an earlier position.

The fused implementation is one registered op, `myopia::attention` (torch.compile sees one node with its own backward).
It runs one fused attention forward and backward (flash or memory-efficient on CUDA, the CPU flash kernel on CPU)
and adds the O(T·d) diagonal terms, with p_ii = exp(s_ii - lse_i) from the kernel's log-sum-exp:

    dK_diag_i = scale · p_ii · (dO_i·v_i − D_i) · q_i,   dV_diag_i = p_ii · dO_i,   D_i = dO_i·O_i

It owns the QKV projection so that, in the `hidden` variant, the weight receives the vanilla dK, dV while the
input receives only [dQ, dK_diag, dV_diag]: no second projection and no T×T tensor.

The reference implementation (`impl="reference"`) is the paper-style one: explicit T×T scores and a second QKV
projection on detached inputs, with edge scaling by beta, and an optional `cut` position for the brute-force
oracle. It serves the tests and the benchmark.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedConfig
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention, rotate_half

AttentionMode = Literal["vanilla", "myopic", "bigram", "local"]
Variant = Literal["hidden", "kv"]
Impl = Literal["fused", "reference"]
M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class AttentionSettings:
    mode: AttentionMode = "vanilla"
    variant: Variant = "hidden"
    beta: float = 0.0
    impl: Impl = "fused"

    def __post_init__(self) -> None:
        if self.mode not in ("vanilla", "myopic", "bigram", "local"):
            raise ValueError(f"attention must be 'vanilla', 'myopic', 'bigram' or 'local', not {self.mode!r}")
        if self.variant not in ("hidden", "kv"):
            raise ValueError(f"variant must be 'hidden' or 'kv', not {self.variant!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], not {self.beta!r}")
        if self.mode == "local" and self.beta != 0.0:
            raise ValueError("local attention takes the whole past from the frozen model: beta must be 0")
        if self.impl not in ("fused", "reference"):
            raise ValueError(f"impl must be 'fused' or 'reference', not {self.impl!r}")


def attention_settings(config: PreTrainedConfig) -> AttentionSettings:
    """The settings a model's config records (vanilla when it records none, as in an original Pythia)."""
    saved = getattr(config, "myopia", None) or {}
    return AttentionSettings(**{k: v for k, v in saved.items() if k in ("mode", "variant", "beta")})


def set_attention(
    model: M,
    mode: AttentionMode,
    *,
    variant: Variant = "hidden",
    beta: float = 0.0,
    impl: Impl = "fused",
) -> M:
    """Switch every attention layer of `model` to a mode, in place. Parameters and state_dict are untouched.

    `model` is a GPT-NeoX model or any module holding one and exposing its `config`.
    """
    settings = AttentionSettings(mode, variant, float(beta), impl)
    for module in model.modules():
        if isinstance(module, GPTNeoXAttention):
            module.__class__ = MyopicGPTNeoXAttention  # same parameters and buffers, another forward
            module.myopia = settings
            module.cut = None
            module.past = None
    model.config.myopia = {k: v for k, v in asdict(settings).items() if k != "impl"}
    return model


def set_cut(model: torch.nn.Module, position: int | None) -> None:
    """Brute-force oracle support (reference impl): positions before `position` enter every layer detached."""
    for module in model.modules():
        if isinstance(module, MyopicGPTNeoXAttention):
            module.cut = position


# ----------------------------------------------------------------------------------------------- fused kernels
def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """transformers' SDPA masks are boolean (True = attend); the fused ops take an additive float mask too."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)


# The efficient CUDA kernel reads the bias in rows aligned to 16 elements (as vanilla SDPA pads it).
BIAS_ALIGNMENT = 16
KernelKind = Literal["flash", "efficient", "cpu"]


@dataclass(frozen=True)
class KernelCall:
    """Which fused kernel runs and the mask arguments it gets: flash attention where it can run, the memory-efficient
    kernel otherwise (vanilla SDPA's order among these two; where it prefers cuDNN attention, on sm90 with a recent
    cuDNN, this op still runs flash: `make gpu-check` records vanilla's choice).

    `bias` is None for causal attention in every kernel (no T×T tensor); for a padding mask on CUDA it is a
    (B, H, T, T) view of one (B_mask, 1, T, ⌈T/16⌉·16) buffer, broadcast over heads (and batch) with stride 0.
    """

    kind: KernelKind
    bias: torch.Tensor | None
    causal: bool


def kernel_call(q: torch.Tensor, mask: torch.Tensor | None, device_type: str | None = None) -> KernelCall:
    """The kernel and its arguments for queries `q` (B, H, T, D) and an additive mask (B or 1, 1, T, T) or None
    (causal). `device_type` overrides q's device, so that CPU tests can check what CUDA would be given."""
    device_type = device_type or q.device.type
    if device_type != "cuda":
        return KernelCall("cpu", mask, mask is None)
    if mask is None:
        return KernelCall("flash" if _flash_usable(q) else "efficient", None, True)
    B, H, T, _ = q.shape
    width = -(-T // BIAS_ALIGNMENT) * BIAS_ALIGNMENT
    aligned = mask.new_zeros(mask.shape[0], 1, T, width, dtype=q.dtype)[..., :T]
    aligned.copy_(mask)
    return KernelCall("efficient", aligned.expand(B, H, T, T), False)


def _flash_usable(q: torch.Tensor) -> bool:
    """Flash attention's own limits: half precision, head dims up to 256 in steps of 8, an sm80+ GPU."""
    D = q.shape[-1]
    if q.dtype not in (torch.float16, torch.bfloat16) or D % 8 or D > 256:
        return False
    if not torch.backends.cuda.flash_sdp_enabled():
        return False
    return q.device.type != "cuda" or torch.cuda.get_device_capability(q.device) >= (8, 0)


def _kernel_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: KernelCall, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, lse as the kernel returns it, philox seed, offset); lse[..., :T] is ln Σ_j exp(scaled s_ij)."""
    if call.kind == "flash":
        out, lse, _, _, _, _, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, True, False, scale=scale
        )
        return out, lse, seed, offset
    if call.kind == "efficient":
        out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, call.bias, True, 0.0, call.causal, scale=scale
        )
        return out, lse, seed, offset
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, call.causal, attn_mask=call.bias, scale=scale
    )
    empty = q.new_empty(0, dtype=torch.int64)
    return out, lse, empty, empty.clone()


def _kernel_backward(
    d_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    call: KernelCall,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if call.kind == "flash":
        T = q.shape[-2]
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            d_out, q, k, v, out, lse, None, None, T, T, 0.0, True, seed, offset, scale=scale
        )
    if call.kind == "efficient":
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            d_out, q, k, v, call.bias, out, lse, seed, offset, 0.0, [True, True, True, False], call.causal, scale=scale
        )
        return dq, dk, dv
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        d_out, q, k, v, out, lse, 0.0, call.causal, attn_mask=call.bias, scale=scale
    )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Partial rotary embedding on the first cos.shape[-1] dims (as transformers' apply_rotary_pos_emb), in the
    precision of cos/sin as transformers computes it (fp32 under autocast), returned in x's dtype."""
    r = cos.shape[-1]
    rot = x[..., :r] * cos + rotate_half(x[..., :r]) * sin
    return torch.cat([rot.to(x.dtype), x[..., r:]], dim=-1)


def _unrotate_grad_(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Backward of `_rotate` in place: rotate_half is antisymmetric, so its transpose is -rotate_half."""
    r = cos.shape[-1]
    g_rot = g[..., :r]
    g_rot.copy_(g_rot * cos - rotate_half(g_rot * sin))
    return g


def _diagonal_terms(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    d_out: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dK_diag, dV_diag: the gradient of each position's own query's loss through its own key and value."""
    acc = torch.promote_types(q.dtype, torch.float32)
    s_ii = _row_dot(q, k, acc) * scale
    if mask is not None:
        s_ii = s_ii + mask.diagonal(dim1=-2, dim2=-1).to(acc)
    lse = lse[..., : q.shape[-2]].to(acc)
    # a query that sees no key (fully masked padding row) has lse = -inf and no gradient at all
    p_ii = torch.where(torch.isfinite(lse), torch.exp(s_ii - lse), torch.zeros_like(lse))
    coef_k = scale * p_ii * (_row_dot(d_out, v, acc) - _row_dot(d_out, out, acc))
    # fp32 coefficients times half operands promote per element: one rounding, no fp32 copy of an operand
    dv_diag = (p_ii.unsqueeze(-1) * d_out).to(v.dtype)
    dk_diag = (coef_k.unsqueeze(-1) * q).to(k.dtype)
    return dk_diag, dv_diag


def _row_dot(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Row dot products with `acc` products and sums (a half-precision bmm would round its output, and p_ii with it)."""
    if a.dtype == acc:
        return torch.linalg.vecdot(a, b)
    return (a.to(acc) * b.to(acc)).sum(-1)


def _projected_attention(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, ...]:
    B, T, _ = x.shape
    qkv = F.linear(x, weight, bias).view(B, T, num_heads, -1).transpose(1, 2)
    q, k, v = qkv.chunk(3, dim=-1)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    call = kernel_call(q, mask)
    out, lse, seed, offset = _kernel_forward(q, k, v, call, scale)
    return out, q, k, v, lse, seed, offset


@torch.library.custom_op("myopia::attention", mutates_args=())
def myopic_attention_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    num_heads: int,
    scale: float,
    variant: str,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """QKV projection, rotary embedding and fused causal attention as one op: (out (B, H, T, D), q, k, v, lse, seed,
    offset). Only `out` carries a gradient; k and v serve a KV cache; the rest is kept for the backward.

    `variant` and `beta` shape only the backward; they are arguments so that the op's identity carries them.
    """
    return _projected_attention(x, weight, bias, cos, sin, mask, num_heads, scale)


@myopic_attention_op.register_fake
def _(x, weight, bias, cos, sin, mask, num_heads, scale, variant, beta):  # type: ignore[no-untyped-def]
    return _projected_attention(x, weight, bias, cos, sin, mask, num_heads, scale)  # aten ops have meta kernels


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x, weight, bias, cos, sin, mask, _, scale, variant, beta = inputs
    out, q, k, v, lse, seed, offset = output
    ctx.save_for_backward(x, weight, cos, sin, mask, q, k, v, out, lse, seed, offset)
    # only `out` carries a gradient: no zero tensors materialised for the others in every layer's backward
    ctx.mark_non_differentiable(q, k, v, lse, seed, offset)
    ctx.set_materialize_grads(False)
    ctx.scale, ctx.variant, ctx.beta, ctx.has_bias = scale, variant, beta, bias is not None


def _backward(ctx: Any, d_out: torch.Tensor, *_: Any) -> tuple[Any, ...]:
    """The vanilla fused backward plus the O(T·d) diagonal terms; the QKV projection's backward by hand, so that
    in the `hidden` variant the weight gets the vanilla dK, dV and the input only the myopic ones."""
    if d_out is None:  # the loss does not depend on this layer's output
        return (None,) * 10
    x, weight, cos, sin, mask, q, k, v, out, lse, seed, offset = ctx.saved_tensors
    B, H, T, D = q.shape
    d_out = d_out.to(out.dtype)
    call = kernel_call(q, mask)
    dq, dk, dv = _kernel_backward(d_out, q, k, v, out, lse, seed, offset, call, ctx.scale)
    dk_diag, dv_diag = _diagonal_terms(q, k, v, out, d_out, lse, mask, ctx.scale)
    if ctx.beta > 0.0:  # edges to earlier positions pass beta of their gradient
        dk_diag = torch.lerp(dk_diag, dk, ctx.beta)
        dv_diag = torch.lerp(dv_diag, dv, ctx.beta)

    # one (B, T, H, 3D) buffer in the QKV projection's layout, filled per head as [q | k | v]
    grad = q.new_empty(B, T, H, 3 * D)
    grad[..., :D] = _unrotate_grad_(dq, cos, sin).transpose(1, 2)
    if ctx.variant == "kv":
        grad[..., D : 2 * D] = _unrotate_grad_(dk_diag, cos, sin).transpose(1, 2)
        grad[..., 2 * D :] = dv_diag.transpose(1, 2)
    else:  # hidden: the weight sees the vanilla dK, dV (live weights on detached past inputs)
        grad[..., D : 2 * D] = _unrotate_grad_(dk, cos, sin).transpose(1, 2)
        grad[..., 2 * D :] = dv.transpose(1, 2)
    flat = grad.view(B * T, 3 * H * D)
    d_weight = flat.t() @ x.reshape(B * T, -1)
    d_bias = flat.sum(0) if ctx.has_bias else None
    if ctx.variant == "hidden":  # the input sees only the myopic dK, dV
        grad[..., D : 2 * D] = _unrotate_grad_(dk_diag, cos, sin).transpose(1, 2)
        grad[..., 2 * D :] = dv_diag.transpose(1, 2)
    d_x = (flat @ weight).view_as(x)
    return d_x, d_weight, d_bias, None, None, None, None, None, None, None


myopic_attention_op.register_autograd(_backward, setup_context=_setup_context)


def myopic_attention(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    num_heads: int,
    scale: float,
    variant: Variant,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention output (B, T, H, D) and the rotated keys and values (B, H, T, D) for a KV cache.

    Under autocast the op sees what vanilla attention computes in: x, W and b in the autocast dtype (as F.linear
    casts them), cos/sin as given (transformers keeps them fp32 and rounds the rotated q, k to the half dtype).
    """
    if torch.is_autocast_enabled(x.device.type):
        half = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(half), weight.to(half)
        bias = None if bias is None else bias.to(half)
    mask = _additive_mask(mask, x.dtype)
    out, _, k, v, *_ = myopic_attention_op(x, weight, bias, cos, sin, mask, num_heads, scale, variant, beta)
    return out.transpose(1, 2), k, v


# -------------------------------------------------------------------------------------- reference (paper-style)
def _reference_attention(
    module: MyopicGPTNeoXAttention,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    past: torch.Tensor | None = None,
) -> torch.Tensor:
    """Explicit T×T attention with past keys/values built from (1 − beta)·detached + beta·live inputs.

    With `module.cut = c`, positions j < c use fully detached inputs and nothing else is special: running this
    once per c and backpropagating the loss at c alone is the brute-force definition of docs/science.md.
    With `past` (mode `local`, beta 0), the keys and values of earlier positions are this layer's projections of
    `past` instead of `x`: attention inputs computed by another (frozen) model; the diagonal stays live.
    """
    s = module.myopia
    B, T, _ = x.shape
    H, D = module.config.num_attention_heads, module.head_size

    def project(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = module.query_key_value(inp).view(B, T, H, 3 * D).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    q, k, v = project(x)
    if past is not None:
        _, k_det, v_det = project(past)
    elif s.variant == "hidden":
        _, k_det, v_det = project(x.detach())  # the paper's second projection
    else:
        k_det, v_det = k.detach(), v.detach()

    acc = torch.promote_types(q.dtype, torch.float32)
    idx = torch.arange(T, device=x.device)
    if module.cut is not None:  # brute force: one cut position, no edge scaling
        past = (idx < module.cut).view(1, 1, T, 1)
        k_used, v_used = torch.where(past, k_det, k), torch.where(past, v_det, v)
        scores = (q @ k_used.transpose(-1, -2)).to(acc)
        diag_v = None
    else:
        k_mix = torch.lerp(k_det, k, s.beta)  # values equal k; gradient to earlier positions scaled by beta
        v_used = torch.lerp(v_det, v, s.beta)
        eye = idx[:, None] == idx[None, :]
        s_diag = (q * k).sum(-1, keepdim=True).to(acc)
        scores = torch.where(eye, s_diag, (q @ k_mix.transpose(-1, -2)).to(acc))
        diag_v = v
    scores = scores * module.scaling
    if mask is None:
        scores = scores.masked_fill(idx[None, :] > idx[:, None], -math.inf)
    else:
        scores = scores + _additive_mask(mask, acc)
    # a query that sees no key (a padding row) outputs zeros, as the fused kernels do, with no NaN in backward
    blind = torch.isneginf(scores).all(-1, keepdim=True)
    probs = (torch.softmax(scores.masked_fill(blind, 0.0), dim=-1) * ~blind).to(q.dtype)
    if diag_v is None:
        out = probs @ v_used
    else:
        p_diag = probs.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
        out = (probs - torch.diag_embed(p_diag.squeeze(-1))) @ v_used + p_diag * diag_v
    return out.transpose(1, 2)


# ------------------------------------------------------------------------------------------------------ module
class MyopicGPTNeoXAttention(GPTNeoXAttention):
    """GPT-NeoX attention with a switchable backward; `set_attention` turns existing modules into this class.

    Vanilla mode, and any forward without gradients (inference, `generate()` with its KV cache), run transformers'
    own forward unchanged. With gradients enabled, myopic mode runs the `myopia::attention` op (or the reference).
    Bigram mode (the reference arm: what losing the whole past costs) lets each position attend only to itself, in
    the forward too, so the model sees one token at a time. Local mode (the local myopia bonus: `trainers.local`)
    takes the keys and values of earlier positions from `past`, another model's attention inputs that its wrapper
    sets before each forward, in the forward too (explicit T×T attention: a CPU-scale measurement).
    Under ZeRO-3 the module must be a leaf (`deepspeed.utils.set_z3_leaf_modules`) since it reads its
    projection's weight directly: `trainers.engine` does that.
    """

    myopia: AttentionSettings
    cut: int | None
    past: torch.Tensor | None

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        layer_past: Any = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        s = self.myopia
        if s.mode == "bigram":  # attending to itself alone, softmax over one key is 1: the output is v_i
            B, T, _ = hidden_states.shape
            heads = self.config.num_attention_heads
            v = self.query_key_value(hidden_states).view(B, T, heads, -1).chunk(3, dim=-1)[2]
            return self.dense(v.reshape(B, T, -1)), None
        if s.mode == "local":
            if self.past is None:
                raise RuntimeError("local attention needs its past: run the model through trainers.local.LocalMyopic")
            cos, sin = (t.unsqueeze(1) for t in position_embeddings)
            out = _reference_attention(self, hidden_states, cos, sin, attention_mask, self.past)
            return self.dense(out.reshape(*hidden_states.shape[:-1], -1)), None
        if s.mode == "vanilla" or not torch.is_grad_enabled():  # the forward is vanilla's in every mode
            return super().forward(hidden_states, attention_mask, layer_past, position_embeddings, **kwargs)
        if self.training and self.attention_dropout > 0:
            raise ValueError("myopic attention needs attention_dropout = 0 (as in every Pythia config)")
        if layer_past is not None and layer_past.get_seq_length(self.layer_idx) > 0:
            raise ValueError(
                "myopic gradients through a pre-filled KV cache are not defined: train with use_cache=False"
            )
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # (B, 1, T, rotary dims)
        if s.impl == "reference":
            out = _reference_attention(self, hidden_states, cos, sin, attention_mask)
            k = v = None
        else:
            out, k, v = myopic_attention(
                hidden_states,
                self.query_key_value.weight,
                self.query_key_value.bias,
                cos,
                sin,
                attention_mask,
                self.config.num_attention_heads,
                self.scaling,
                s.variant,
                s.beta,
            )
        if layer_past is not None and k is not None:
            layer_past.update(k, v, self.layer_idx)
        out = self.dense(out.reshape(*hidden_states.shape[:-1], -1))
        return out, None

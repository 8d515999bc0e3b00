"""The myopic attention in every precision, on the kernels' own terms, and as one op to torch.compile.

Each half precision is judged against its own floor: the error that vanilla SDPA and the paper-style reference make
in that precision against their float64 targets. The CUDA kernels' argument contract is checked on CPU against the
arguments the code builds for CUDA (`kernel_call(..., device_type="cuda")`), so that a refused bias shows here.
"""

from __future__ import annotations

import pytest
import torch

from tests.oracle import (
    PRECISIONS,
    floor_errors,
    grads,
    last_position_input_grad,
    lm_loss,
    perturbed_model,
    tiny_config,
)
from trainers.models import build_model
from trainers.myopic import BIAS_ALIGNMENT, _additive_mask, kernel_call, set_attention

B, T = 2, 9
HALF = [p for p in PRECISIONS if p != "fp32"]
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def m64():
    return perturbed_model()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 48, (B, T), generator=torch.Generator().manual_seed(1))


def _padding():
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0
    return mask


def _check_floor(m64, ids, mask, precision, device):
    for variant in ("hidden", "kv"):
        for beta in (0.0, 0.5, 1.0):
            e_my, e_van, e_ref = floor_errors(m64, ids, mask, precision, variant, beta, device)
            floor = max(e_van, e_ref)
            assert 0 < e_my <= 2 * floor, (
                f"{precision} {variant} beta={beta}: myopic {e_my:.3g}, vanilla {e_van:.3g}, reference {e_ref:.3g}"
            )


@pytest.mark.parametrize("masked", [False, True], ids=["causal", "padded"])
@pytest.mark.parametrize("precision", HALF)
def test_half_precision_on_cpu_within_the_dtypes_floor(m64, ids, precision, masked):
    """bf16/fp16 weights and bf16/fp16 autocast (what HF Trainer, Accelerate and AMP use): the myopic gradient is
    as close to its float64 target as vanilla's and the paper-style reference's are to theirs."""
    _check_floor(m64, ids, _padding() if masked else None, precision, "cpu")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_no_gradient_leaks_into_earlier_positions_in_any_precision(m64, ids, precision):
    weights, _ = PRECISIONS[precision]
    model = build_model("14m", **tiny_config()).to(weights)
    model.load_state_dict(m64.state_dict())
    for variant in ("hidden", "kv"):
        g = last_position_input_grad(model, ids, precision, "myopic", variant)
        assert torch.count_nonzero(g[:, :-2]) == 0 and torch.count_nonzero(g[:, -2]) > 0, (precision, variant)


@pytest.mark.parametrize("precision", ["bf16-autocast", "fp16-autocast"])
def test_autocast_forward_equals_vanillas(m64, ids, precision):
    """Under autocast the op computes in what vanilla attention computes in: the logits agree bit for bit."""
    _, dtype = PRECISIONS[precision]
    model = build_model("14m", **tiny_config())
    model.load_state_dict(m64.state_dict())
    logits = {}
    for mode in ("vanilla", "myopic"):
        set_attention(model, mode)
        with torch.autocast("cpu", dtype=dtype):
            logits[mode] = model(ids, use_cache=False).logits
    assert logits["myopic"].grad_fn is not None
    assert torch.equal(logits["myopic"], logits["vanilla"])


# ---- the CUDA kernels' contract, checked against what the code builds for them
def _check_cuda_contract(call, q):
    """What `_scaled_dot_product_flash_attention` and `_scaled_dot_product_efficient_attention` accept (ATen's
    checks in attention.cu and sdp_utils): flash takes fp16/bf16 and no bias; the efficient kernel's bias has the
    query's dtype and exact (B, H, T, T) sizes (stride 0 allowed), a contiguous last dimension and rows aligned to
    16 elements. Causal attention is the kernels' own flag: no T×T tensor."""
    Bq, Hq, Tq, _ = q.shape
    assert call.kind in ("flash", "efficient")
    if call.causal:
        assert call.bias is None, "causal attention must use is_causal, not a T×T bias"
    if call.kind == "flash":
        assert q.dtype in (torch.float16, torch.bfloat16) and call.bias is None and call.causal
        return
    if call.bias is None:
        return
    bias = call.bias
    assert bias.dtype == q.dtype, f"bias dtype {bias.dtype} != query dtype {q.dtype}"
    assert bias.dim() == 4 and tuple(bias.shape) == (Bq, Hq, Tq, Tq), f"bias shape {tuple(bias.shape)}"
    assert bias.stride(-1) == 1
    assert all(s % BIAS_ALIGNMENT == 0 for s in bias.stride()[:-1]), f"bias strides {bias.stride()}"
    assert bias.stride(1) == 0, "the bias is broadcast over heads, not copied per head"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mask_batch", [None, 1, 3], ids=["causal", "mask-batch-1", "mask-batch-B"])
@pytest.mark.parametrize("seq", [9, 64, 200])
def test_cuda_kernel_arguments_meet_the_kernels_contract(dtype, mask_batch, seq):
    Bq, Hq, D = 3, 4, 16
    q = torch.zeros(Bq, Hq, seq, D, dtype=dtype)
    mask = None
    if mask_batch is not None:
        keep = torch.ones(mask_batch, 1, seq, seq, dtype=torch.bool).tril()
        keep[0, 0, :, :2] = False  # left padding in one row
        mask = _additive_mask(keep, dtype)
    call = kernel_call(q, mask, device_type="cuda")
    _check_cuda_contract(call, q)
    if mask is not None:
        bias = call.bias
        assert bias.untyped_storage().nbytes() <= mask_batch * seq * -(-seq // 16) * 16 * bias.element_size()
        finite = torch.isfinite(bias)
        assert torch.equal(finite, torch.isfinite(mask).expand_as(bias))


# ---- one op to torch.compile
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_model_matches_eager_gradients(m64, ids, backend):
    """`myopia::attention` is a registered op with its own backward: dynamo captures a whole model with
    fullgraph=True (no graph break) and the compiled gradient equals the eager one."""
    torch._dynamo.reset()
    model = build_model("14m", **tiny_config())
    model.load_state_dict(m64.state_dict())
    for variant in ("hidden", "kv"):
        set_attention(model, "myopic", variant=variant, beta=0.5 if variant == "kv" else 0.0)
        eager = grads(model, lm_loss(model, ids))
        compiled = grads(model, lm_loss(torch.compile(model, fullgraph=True, backend=backend), ids))
        for name, g in eager.items():
            torch.testing.assert_close(compiled[name], g, rtol=1e-5, atol=1e-6, msg=f"{variant} {name}")
    set_attention(model, "vanilla")
    vanilla = grads(model, lm_loss(model, ids))
    assert any(not torch.allclose(vanilla[n], eager[n]) for n in eager)  # the compiled myopic path is not vanilla's


# ---- CUDA, skipped without a GPU
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "padded"])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_cuda_within_the_dtypes_floor(m64, ids, precision, masked):
    """flash (half, causal) and memory-efficient (fp32, or a padding bias) kernels, B and H > 1, both variants,
    beta 0, 0.5 and 1, against the float64 CPU target; judged against the dtype's floor on the same GPU."""
    _check_floor(m64, ids, _padding() if masked else None, precision, "cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_cuda_no_gradient_leaks(m64, ids, precision):
    weights, _ = PRECISIONS[precision]
    model = build_model("14m", **tiny_config()).to("cuda", weights)
    model.load_state_dict(m64.state_dict())
    for variant in ("hidden", "kv"):
        g = last_position_input_grad(model, ids.cuda(), precision, "myopic", variant)
        assert torch.count_nonzero(g[:, :-2]) == 0 and torch.count_nonzero(g[:, -2]) > 0, (precision, variant)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "padded"])
def test_cuda_compiled_matches_eager(m64, ids, masked):
    """Inductor on CUDA (Triton kernels around the op, its backward traced into the graph), bf16 autocast: the
    compiled gradient equals the eager one to bf16's rounding."""
    torch._dynamo.reset()
    model = build_model("14m", **tiny_config()).cuda()
    model.load_state_dict(m64.state_dict())
    ids, mask = ids.cuda(), _padding().cuda() if masked else None
    compiled_model = torch.compile(model, fullgraph=True)
    for variant in ("hidden", "kv"):
        set_attention(model, "myopic", variant=variant, beta=0.5 if variant == "kv" else 0.0)
        got = {}
        for label, m in (("eager", model), ("compiled", compiled_model)):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = lm_loss(m, ids, mask)
            got[label] = grads(model, loss.float())
        for name, g in got["eager"].items():
            scale = g.abs().max().item() + 1e-12
            assert (got["compiled"][name] - g).abs().max().item() / scale < 3e-2, f"{variant} {name}"

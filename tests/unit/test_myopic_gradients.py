"""The fused myopic backward against its brute-force definition (docs/science.md), in float64, on every parameter."""

from __future__ import annotations

import pytest
import torch

from tests.oracle import brute_force_grads, grads, lm_loss, max_abs_diff, perturbed_model, tiny_config
from trainers.models import build_model
from trainers.myopic import set_attention

B, T = 2, 9
TOL = 1e-9
BETAS = [0.25, 0.5, 0.9]


@pytest.fixture(scope="module")
def model():
    return perturbed_model()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 48, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def padding_mask():
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0  # left padding in the first row
    return mask


def fast(model, ids, mode, variant="hidden", beta=0.0, impl="fused", attention_mask=None):
    set_attention(model, mode, variant=variant, beta=beta, impl=impl)
    return grads(model, lm_loss(model, ids, attention_mask))


@pytest.mark.parametrize("variant", ["hidden", "kv"])
def test_fused_matches_brute_force_at_beta_0(model, ids, variant):
    oracle = brute_force_grads(model, ids, variant)
    got = fast(model, ids, "myopic", variant)
    err, where = max_abs_diff(got, oracle)
    assert err < TOL, f"{variant}: max |fused - brute force| = {err:.3g} at {where}"
    # the myopic gradient really differs from the vanilla one, so the comparison above can fail
    gap, _ = max_abs_diff(fast(model, ids, "vanilla"), oracle)
    assert gap > 1e-3


@pytest.mark.parametrize("variant", ["hidden", "kv"])
def test_reference_matches_brute_force_at_beta_0(model, ids, variant):
    reference = fast(model, ids, "myopic", variant, impl="reference")
    err, where = max_abs_diff(reference, brute_force_grads(model, ids, variant))
    assert err < TOL, f"{variant}: max |reference - brute force| = {err:.3g} at {where}"


@pytest.mark.parametrize("variant", ["hidden", "kv"])
@pytest.mark.parametrize("beta", BETAS)
def test_fused_matches_edge_scaled_reference(model, ids, variant, beta):
    ref = fast(model, ids, "myopic", variant, beta, impl="reference")
    err, where = max_abs_diff(fast(model, ids, "myopic", variant, beta), ref)
    assert err < TOL, f"{variant} beta={beta}: {err:.3g} at {where}"
    # not a linear blend of the myopic and vanilla gradients once paths cross several layers
    myopic, vanilla = fast(model, ids, "myopic", variant), fast(model, ids, "vanilla")
    blend = {n: torch.lerp(myopic[n], vanilla[n], beta) for n in myopic}
    assert max_abs_diff(ref, blend)[0] > 1e-6


@pytest.mark.parametrize("variant", ["hidden", "kv"])
def test_beta_1_equals_vanilla(model, ids, variant):
    err, where = max_abs_diff(fast(model, ids, "myopic", variant, 1.0), fast(model, ids, "vanilla"))
    assert err < TOL, f"{variant}: {err:.3g} at {where}"


@pytest.mark.parametrize("variant", ["hidden", "kv"])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_padding_mask_matches_reference(model, ids, padding_mask, variant, beta):
    ref = fast(model, ids, "myopic", variant, beta, impl="reference", attention_mask=padding_mask)
    got = fast(model, ids, "myopic", variant, beta, attention_mask=padding_mask)
    err, where = max_abs_diff(got, ref)
    assert err < TOL, f"{variant} beta={beta} with padding: {err:.3g} at {where}"
    assert all(torch.isfinite(g).all() for g in got.values())


def test_variants_differ_only_in_the_qkv_projection(model, ids):
    hidden, kv = fast(model, ids, "myopic", "hidden"), fast(model, ids, "myopic", "kv")
    for name in hidden:
        diff = (hidden[name] - kv[name]).abs().max().item()
        if ".query_key_value." in name:
            assert diff > 1e-6, name
        else:
            assert diff < TOL, name


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("variant", ["hidden", "kv"])
def test_forward_equals_vanilla(model, ids, padding_mask, impl, variant):
    for mask in (None, padding_mask):
        set_attention(model, "vanilla")
        vanilla = model(ids, attention_mask=mask).logits
        set_attention(model, "myopic", variant=variant, impl=impl)
        myopic = model(ids, attention_mask=mask).logits  # grad enabled: the myopic path runs
        assert myopic.grad_fn is not None
        assert (myopic - vanilla).abs().max().item() < 1e-12


def test_eval_mode_gradients_are_myopic(model, ids):
    train = fast(model, ids, "myopic")
    model.eval()
    try:
        assert max_abs_diff(fast(model, ids, "myopic"), train)[0] == 0.0
    finally:
        model.train()


def test_float32_matches_float64(ids):
    """The dtype CPU training uses: the fused path in float32 stays within float32 error of the float64 one."""
    torch.manual_seed(0)
    m64 = build_model("14m", dtype=torch.float64, **tiny_config())
    m32 = build_model("14m", dtype=torch.float32, **tiny_config())
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    for m in (m64, m32):
        set_attention(m, "myopic")
    g64, g32 = grads(m64, lm_loss(m64, ids)), grads(m32, lm_loss(m32, ids))
    err, where = max_abs_diff({n: g.double() for n, g in g32.items()}, g64)
    assert err < 1e-5, f"{err:.3g} at {where}"


# CUDA kernels in every precision, against each dtype's floor: tests/unit/test_myopic_precision.py


# ---- checks that share no code with the implementation: what the definition implies, read off the gradients
def _last_position_grads(model, ids, mode, variant):
    """The gradient of the loss at the last position alone, into the input embeddings and every parameter."""
    set_attention(model, mode, variant=variant)
    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, use_cache=False).logits
    torch.nn.functional.cross_entropy(logits[:, -2], ids[:, -1]).backward()
    return embeds.grad, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", ["hidden", "kv"])
def test_a_later_loss_sends_nothing_into_earlier_positions(model, ids, variant):
    """With the loss at the last position only, no earlier position's input gets any gradient, exactly."""
    d_embeds, _ = _last_position_grads(model, ids, "myopic", variant)
    assert torch.count_nonzero(d_embeds[:, :-2]) == 0 and torch.count_nonzero(d_embeds[:, -2]) > 0
    vanilla_d_embeds, _ = _last_position_grads(model, ids, "vanilla", variant)
    assert torch.count_nonzero(vanilla_d_embeds[:, :-2]) > 0  # the vanilla gradient reaches them


def test_the_last_layers_qkv_gradient_separates_the_variants(model, ids):
    """In the last layer the hidden variant keeps the vanilla QKV-weight gradient (live weights on detached past
    inputs); the kv variant keeps only each query's own key and value."""
    name = next(
        n
        for n in dict(model.named_parameters())
        if n.endswith(f"{model.config.num_hidden_layers - 1}.attention.query_key_value.weight")
    )
    _, vanilla = _last_position_grads(model, ids, "vanilla", "hidden")
    _, hidden = _last_position_grads(model, ids, "myopic", "hidden")
    _, kv = _last_position_grads(model, ids, "myopic", "kv")
    assert (hidden[name] - vanilla[name]).abs().max() < TOL
    assert (kv[name] - vanilla[name]).abs().max() > 1e-3

"""The GPU speedups' switches (trainers.speedups): what a worker turns on, and the fused-loss head's loss and
gradients against the model's own `labels=` loss. Liger's CUDA kernel is checked where a GPU is visible; the
engine path (ZeRO-2/3, engine.compile) is in tests/integration/test_zero.py."""

from __future__ import annotations

import pytest
import torch

from tests.oracle import grads, tiny_config
from trainers.models import build_model
from trainers.myopic import set_attention
from trainers.spec import RunSpec
from trainers.speedups import FusedLossGPTNeoX, fuse_loss, speedups


def test_switches_apply_on_gpu_workers_only():
    text = RunSpec()
    on = speedups(text, cuda=True)
    assert on.compile and on.fused_adamw and on.fused_loss
    off = speedups(text, cuda=False)
    assert not (off.compile or off.fused_adamw or off.fused_loss)
    synthetic = RunSpec.model_validate({"data": {"kind": "synthetic"}})
    assert not speedups(synthetic, cuda=True).fused_loss  # Huber regression: no cross-entropy to fuse
    fp16 = RunSpec.model_validate({"train": {"precision": "fp16"}, "resources": {"gpus_per_worker": 1}})
    assert not speedups(fp16, cuda=True).fused_loss  # liger's forward-time gradient would underflow before scaling
    plain = RunSpec.model_validate({"train": {"compile": False, "fused_loss": False}, "optimizer": {"fused": False}})
    assert speedups(plain, cuda=True) == speedups(plain, cuda=False)


def test_switches_are_part_of_a_runs_identity():
    assert RunSpec().config_hash() != RunSpec.model_validate({"train": {"compile": False}}).config_hash()


def _loss_and_grads(model, ids, device="cpu", autocast=None):
    with torch.autocast(device, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = model(ids, labels=ids, use_cache=False).loss
    return loss.detach().float(), grads(model, loss)


@pytest.mark.parametrize("mode", ["vanilla", "myopic"])
def test_fused_loss_head_equals_the_models_own_loss(mode):
    torch.manual_seed(0)
    model = set_attention(build_model("14m", **tiny_config()), mode)
    ids = torch.randint(0, 48, (3, 11))
    want_loss, want = _loss_and_grads(model, ids)
    fuse_loss(model)
    assert isinstance(model, FusedLossGPTNeoX)
    got_loss, got = _loss_and_grads(model, ids)
    torch.testing.assert_close(got_loss, want_loss)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, msg=name)
    assert model(ids).logits.shape == (3, 11, 48)  # without labels: logits, as before (evaluation, generate)
    assert set(model.state_dict()) == set(build_model("14m", **tiny_config()).state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_liger_fused_loss_on_cuda(autocast):
    torch.manual_seed(0)
    model = build_model("14m", **tiny_config(vocab_size=512)).cuda()
    ids = torch.randint(0, 512, (4, 64), device="cuda")
    want_loss, want = _loss_and_grads(model, ids, "cuda", autocast)
    fuse_loss(model)
    got_loss, got = _loss_and_grads(model, ids, "cuda", autocast)
    tol = 1e-4 if autocast is None else 2e-2
    torch.testing.assert_close(got_loss, want_loss, rtol=tol, atol=tol)
    for name, g in want.items():
        scale = g.abs().max().item() + 1e-12
        assert (got[name] - g).abs().max().item() / scale < 10 * tol, name


def test_evaluation_holds_a_bounded_number_of_logits(monkeypatch):
    """A micro-batch sized for training with the fused loss would not fit as whole logits: evaluation splits it,
    with the same result."""
    from trainers import evaluate

    torch.manual_seed(0)
    model = build_model("14m", **tiny_config()).eval()
    ids = torch.randint(0, 48, (5, 12))
    batches = [(torch.arange(5).numpy(), ids)]
    whole = evaluate.text_loss(model, batches, 5, 12)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(a[0].shape[0]) or forward(*a, **k))
    monkeypatch.setattr(evaluate, "EVAL_LOGITS", 2 * 12 * 48)  # two sequences' logits at a time
    split = evaluate.text_loss(model, batches, 5, 12)
    assert calls == [2, 2, 1]
    assert split["per_sequence"] == whole["per_sequence"]
    assert split["per_position"] == pytest.approx(whole["per_position"], rel=1e-12)

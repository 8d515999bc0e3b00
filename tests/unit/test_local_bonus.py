"""The local myopia bonus arm (trainers.local): its wiring, checked against the myopic arm in float64."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from trainers.local import LocalMyopic, latest_checkpoint, partner_weights
from trainers.models import build_model
from trainers.spec import RunSpec, SpecError, parse_spec

SHAPE = {"num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 2}


def _model(mode: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("14m", attention=mode, vocab_size=50, dtype=torch.float64, **SHAPE)


def _grads(model: torch.nn.Module, ids: torch.Tensor, named: torch.nn.Module) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(ids, labels=ids, use_cache=False).loss.backward()
    return {n: p.grad.clone() for n, p in named.named_parameters() if p.grad is not None}


def test_local_on_its_own_past_is_the_myopic_arm():
    """With the frozen model equal to the trained one, the past streams equal the trained model's own, detached:
    the forward is vanilla's and every gradient is the myopic arm's (hidden, β = 0), except the input LayerNorms',
    which the local arm also trains through the past keys and values (its LayerNorm applies to the frozen stream)."""
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    trained = _model("local")
    local = LocalMyopic(trained, copy.deepcopy(_model("vanilla")))
    vanilla, myopic = _model("vanilla"), _model("myopic")
    torch.testing.assert_close(local(ids).logits, vanilla(ids).logits, rtol=0, atol=1e-12)

    g_local, g_myopic = _grads(local, ids, trained), _grads(myopic, ids, myopic)
    assert g_local.keys() == g_myopic.keys()
    for name in g_myopic:
        if "input_layernorm" in name:
            assert not torch.allclose(g_local[name], g_myopic[name]), name
        else:
            torch.testing.assert_close(g_local[name], g_myopic[name], rtol=1e-10, atol=1e-12, msg=name)
    assert all(p.grad is None for p in local.frozen.parameters())  # the past is fixed


def test_local_reads_the_frozen_past_not_its_own():
    """Keys and values of earlier positions come from the frozen model: changing it changes every position but the
    first (which sees only itself), and the trained model's own earlier positions get no gradient from later losses."""
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    trained = _model("local")
    a = LocalMyopic(trained, _model("vanilla", seed=1))(ids).logits
    b = LocalMyopic(trained, _model("vanilla", seed=2))(ids).logits
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-12)
    assert (a[:, 1:] - b[:, 1:]).abs().amax() > 1e-6

    local = LocalMyopic(trained, _model("vanilla", seed=1))
    with torch.no_grad():  # evaluation runs the same computation: the frozen past, not vanilla's shortcut
        torch.testing.assert_close(local.eval()(ids).logits, a, rtol=0, atol=1e-12)
    embeds = []
    hook = trained.gpt_neox.embed_in.register_forward_hook(lambda _m, _i, out: embeds.append(out) or out.retain_grad())
    local.train()(ids).logits[:, -1].sum().backward()
    hook.remove()
    (grad,) = [e.grad for e in embeds]
    assert grad[:, :-1].abs().amax() == 0  # the last position's loss reaches no earlier embedding of the trained model
    assert grad[:, -1].abs().amax() > 0


def test_local_spec_names_its_partner():
    def refused(attention: dict, data: str = "text") -> str:
        with pytest.raises(SpecError) as e:
            parse_spec(json.dumps({"data": {"kind": data}, "attention": attention}))
        return str(e.value)

    assert "attention.past_from" in refused({"mode": "local"})
    assert "attention.past_from" in refused({"mode": "myopic", "past_from": "x"})
    assert "attention.beta" in refused({"mode": "local", "past_from": "x", "beta": 0.5})
    assert "attention.mode" in refused({"mode": "local", "past_from": "x"}, data="synthetic")
    assert "attention.variant" in refused({"mode": "local", "past_from": "x", "variant": "kv"})
    ok = RunSpec.model_validate({"attention": {"mode": "local", "past_from": "sw-1-14m-s0-vanilla"}})
    vanilla = ok.arm("vanilla")
    assert vanilla.attention.past_from is None and vanilla.pair_hash() == ok.pair_hash()


def test_the_partner_checkpoint_is_its_newest_or_named_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="sw-1-14m-s0-vanilla"):
        latest_checkpoint(str(tmp_path), "sw-1-14m-s0-vanilla")
    run = tmp_path / "sw-1-14m-s0-vanilla"
    for name in ("checkpoint_2026-12-04_21-46-46.797990", "checkpoint_2026-12-04_21-47-01.000001"):
        (run / name).mkdir(parents=True)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray Train's own file beside them
    assert latest_checkpoint(str(tmp_path), run.name).name == "checkpoint_2026-12-04_21-47-01.000001"


def test_the_partner_weights_are_its_final_ones(tmp_path):
    states = tmp_path / "ckpt"
    states.mkdir()
    torch.save({"module": {"w": torch.ones(2)}, "step": 200}, states / "mp_rank_00_model_states.pt")
    assert torch.equal(partner_weights(tmp_path, 200)["w"], torch.ones(2))
    with pytest.raises(ValueError, match="from step 200, not the run's last .300."):
        partner_weights(tmp_path, 300)  # an intermediate checkpoint of a run still training

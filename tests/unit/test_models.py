"""The Pythia zoo: parameter counts, Pythia-format checkpoints, save/load round trips, generation in myopic mode."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPTNeoXForCausalLM

from tests.oracle import tiny_config
from trainers.models import PYTHIA_SIZES, build_model, count_params, load_model, pythia_config, shape_label
from trainers.myopic import MyopicGPTNeoXAttention, attention_settings, set_attention
from trainers.spec import RunSpec

# (total, non-embedding) parameters of the Hugging Face Pythia checkpoints, as their configs give them
PYTHIA_COUNTS = {
    "14m": (14_067_712, 1_189_888),
    "31m": (30_494_720, 4_739_072),
    "70m": (70_426_624, 18_915_328),
    "160m": (162_322_944, 85_056_000),
    "410m": (405_334_016, 302_311_424),
    "1b": (1_011_781_632, 805_736_448),
    "1.4b": (1_414_647_808, 1_208_602_624),
    "2.8b": (2_775_208_960, 2_517_652_480),
}


@pytest.mark.parametrize("size", list(PYTHIA_COUNTS))
def test_parameter_counts(size):
    assert count_params(size) == PYTHIA_COUNTS[size]  # built on the meta device: nothing allocated
    s = PYTHIA_SIZES[size]
    assert (s.n_params(), s.n_params_nonembedding()) == PYTHIA_COUNTS[size]


def test_unknown_size_and_field_are_named():
    with pytest.raises(ValueError, match="'3b'"):
        pythia_config("3b")
    with pytest.raises(ValueError, match="hiden_size"):
        pythia_config("14m", hiden_size=3)
    with pytest.raises(ValueError, match="beta"):
        build_model("14m", attention="myopic", beta=1.5, **tiny_config())
    with pytest.raises(ValueError, match="variant"):
        build_model("14m", attention="myopic", variant="keys", **tiny_config())


def test_config_matches_pythia():
    c = pythia_config("410m")
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (24, 1024, 16, 4096)
    assert c.rope_parameters["partial_rotary_factor"] == 0.25 and c.rope_parameters["rope_theta"] == 10000
    assert c.use_parallel_residual and not c.tie_word_embeddings and c.vocab_size == 50304


def test_mode_switch_keeps_state_dict():
    torch.manual_seed(0)
    model = build_model("14m", **tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_attention(model, "myopic", variant="kv", beta=0.3)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert attention_settings(model.config).beta == 0.3


def test_bigram_mode_sees_only_the_current_token():
    """Each position attends only to itself: changing earlier tokens changes no later output, with or without
    gradients, and the weights are the vanilla model's."""
    torch.manual_seed(0)
    model = build_model("14m", attention="bigram", **tiny_config())
    ids = torch.randint(0, 48, (2, 9))
    other = ids.clone()
    other[:, :4] = torch.randint(0, 48, (2, 4))
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            a, b = model(ids).logits, model(other).logits
        assert torch.allclose(a[:, 4:], b[:, 4:], atol=1e-6) and not torch.allclose(a[:, :4], b[:, :4])
    vanilla = build_model("14m", **tiny_config())
    vanilla.load_state_dict(model.state_dict())
    assert not torch.allclose(vanilla(other).logits[:, 4:], model(other).logits[:, 4:])
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.ndim >= 2)


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("14m", attention="myopic", variant="kv", beta=0.25, **tiny_config())
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    s = attention_settings(loaded.config)
    assert (s.mode, s.variant, s.beta) == ("myopic", "kv", 0.25)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert isinstance(loaded.gpt_neox.layers[0].attention, MyopicGPTNeoXAttention)
    assert attention_settings(load_model(tmp_path, attention="vanilla").config).mode == "vanilla"


def test_pythia_format_checkpoint_loads_into_both_modes(tmp_path):
    """A directory laid out as EleutherAI's hub checkpoints (old config keys, attention.bias buffers)."""
    cfg = {
        "architectures": ["GPTNeoXForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "gelu",
        "hidden_size": 128,
        "initializer_range": 0.02,
        "intermediate_size": 512,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "model_type": "gpt_neox",
        "num_attention_heads": 4,
        "num_hidden_layers": 6,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.29.2",
        "use_cache": True,
        "use_parallel_residual": True,
        "vocab_size": 50304,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    reference = build_model("14m")
    weights = {k: v.half() for k, v in reference.state_dict().items()}
    weights["embed_out.weight"] = weights.pop("lm_head.weight")  # the name in Pythia's files
    for i in range(6):
        weights[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 2048, 2048, dtype=torch.bool).tril()
        weights[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})

    ids = torch.randint(0, 50304, (1, 12))
    for mode in ("vanilla", "myopic"):
        model = load_model(tmp_path, attention=mode, torch_dtype=torch.float32)
        assert attention_settings(model.config).mode == mode
        assert model.config.rope_parameters["partial_rotary_factor"] == 0.25
        for k, v in reference.state_dict().items():
            assert torch.equal(model.state_dict()[k], v.half().float()), k
        logits = model(ids).logits
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", ["hidden", "kv"])
def test_generate_with_kv_cache_in_myopic_mode(variant):
    torch.manual_seed(0)
    vanilla = build_model("14m", **tiny_config())
    myopic = build_model("14m", attention="myopic", variant=variant, **tiny_config())
    myopic.load_state_dict(vanilla.state_dict())
    prompt = torch.tensor([[5, 7, 9, 11], [0, 0, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])  # left padding
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=True)
    out_v = vanilla.generate(prompt, **kwargs)
    out_m = myopic.generate(prompt, **kwargs)
    assert out_m.shape == (2, 10) and torch.equal(out_m, out_v)
    # the cache path gives the same continuation as recomputing the whole sequence
    assert torch.equal(myopic.generate(prompt, **{**kwargs, "use_cache": False}), out_m)


def test_training_forward_fills_an_empty_cache_with_the_same_keys():
    torch.manual_seed(0)
    model = build_model("14m", attention="myopic", **tiny_config())
    ids = torch.randint(0, 48, (1, 6))
    with torch.no_grad():
        expected = model(ids, use_cache=True).past_key_values
    got = model(ids, use_cache=True).past_key_values  # grad enabled: the fused path fills the cache
    assert torch.allclose(got.layers[0].keys, expected.layers[0].keys, atol=1e-6)
    with pytest.raises(ValueError, match="use_cache=False"):
        model(ids[:, -1:], past_key_values=got)


def test_loads_into_plain_transformers(tmp_path):
    """A myopic model is an ordinary Pythia at inference: plain transformers loads what it saves."""
    torch.manual_seed(0)
    model = build_model("14m", attention="myopic", **tiny_config())
    model.save_pretrained(tmp_path)
    plain = GPTNeoXForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 48, (2, 7))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(ids).logits, atol=1e-6)


def test_a_model_is_named_by_its_shape_unless_it_has_its_sizes():
    """A Pythia name means Pythia's shape: "14m" with its dimensions overridden is labelled by what it is, a zoo
    name where one has that shape, and one shape has one name whichever size it was reached from."""
    assert shape_label("14m") == "14m" and shape_label("0.1m") == "0.1m"
    assert shape_label("14m", num_hidden_layers=6, hidden_act="relu") == "14m"  # the same shape, another activation
    assert shape_label("14m", num_hidden_layers=2, hidden_size=64, num_attention_heads=2) == "0.1m"  # the zoo's
    assert shape_label("14m", num_hidden_layers=2, hidden_size=64) == "L2-d64-h4"
    assert shape_label("70m", num_hidden_layers=2, hidden_size=64) == "L2-d64-h8"  # heads differ: names differ
    assert shape_label("160m", intermediate_size=1000) == "L12-d768-h12-f1000"
    spec = RunSpec.model_validate({"model": {"size": "14m", "overrides": {"num_hidden_layers": 2, "hidden_size": 64}}})
    assert spec.label == "L2-d64-h4" and RunSpec().label == "14m"

"""The zoo: Pythia's eight sizes and three scaled-down GPT-NeoX shapes for CPU ladders (named by their non-embedding
parameters), as GPT-NeoX configs; parameter counts; and `build_model`.

The models are plain `transformers.GPTNeoXForCausalLM`s, so Pythia checkpoints load unchanged; the attention mode
lives in the attention modules (see `trainers.myopic`) and in `config.myopia`, and can be switched at any time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from trainers.myopic import AttentionMode, Variant, attention_settings, set_attention

PYTHIA_VOCAB = 50304
SizeName = Literal["0.1m", "0.4m", "14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b"]


@dataclass(frozen=True)
class PythiaSize:
    name: str
    layers: int
    hidden: int
    heads: int
    lr: float  # Pythia's pretraining peak learning rate (the CPU shapes: 14m's)

    def n_params(self, vocab_size: int = PYTHIA_VOCAB) -> int:
        return self.n_params_nonembedding() + 2 * vocab_size * self.hidden  # untied embed_in + embed_out

    def n_params_nonembedding(self) -> int:
        c = self.hidden
        # per layer: 2 LayerNorms (4c), QKV (3c^2 + 3c), dense (c^2 + c), MLP (8c^2 + 5c); plus the final LayerNorm
        return self.layers * (12 * c * c + 13 * c) + 2 * c


PYTHIA_SIZES: dict[str, PythiaSize] = {
    s.name: s
    for s in (
        PythiaSize("14m", 6, 128, 4, 1e-3),
        PythiaSize("31m", 6, 256, 8, 1e-3),
        PythiaSize("70m", 6, 512, 8, 1e-3),
        PythiaSize("160m", 12, 768, 12, 6e-4),
        PythiaSize("410m", 24, 1024, 16, 3e-4),
        PythiaSize("1b", 16, 2048, 8, 3e-4),
        PythiaSize("1.4b", 24, 2048, 16, 2e-4),
        PythiaSize("2.8b", 32, 2560, 32, 1.6e-4),
    )
}


# Pythia's shape scaled down below 14m (head size 32, rotary on a quarter of each head); named by their
# non-embedding parameters: with 14m (1.19M) they make a decade of scale that two CPU cores can train.
CPU_SIZES: dict[str, PythiaSize] = {
    s.name: s
    for s in (
        PythiaSize("0.1m", 2, 64, 2, 1e-3),
        PythiaSize("0.4m", 4, 96, 3, 1e-3),
    )
}
SIZES: dict[str, PythiaSize] = dict(  # every size a run may name, in increasing non-embedding parameters
    sorted({**CPU_SIZES, **PYTHIA_SIZES}.items(), key=lambda kv: kv[1].n_params_nonembedding())
)
assert tuple(SIZES) == get_args(SizeName)


def pythia_size(size: str) -> PythiaSize:
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}") from None


def pythia_config(size: str, *, vocab_size: int | None = None, **overrides: Any) -> GPTNeoXConfig:
    """The Hugging Face config of a Pythia size; `overrides` are GPTNeoXConfig fields (e.g. num_hidden_layers=2)."""
    s = pythia_size(size)
    fields: dict[str, Any] = dict(
        vocab_size=vocab_size or PYTHIA_VOCAB,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=4 * s.hidden,
        hidden_act="gelu",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        max_position_embeddings=2048,
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_bias=True,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=0,
    )
    if "intermediate_size" not in overrides and "hidden_size" in overrides:
        overrides["intermediate_size"] = 4 * overrides["hidden_size"]
    unknown = sorted(set(overrides) - set(GPTNeoXConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown GPT-NeoX config field(s): {', '.join(unknown)}")
    fields.update(overrides)
    config = GPTNeoXConfig(**fields)
    config._attn_implementation = "sdpa"
    return config


SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")


def shape_label(size: str, **overrides: Any) -> str:
    """What a run is called in tables, plots, run names and MLflow: the size's name where the model has that size's
    shape; where overrides change it, the name of the zoo size with that shape if there is one, else the shape
    itself (`L2-d64-h4`: 2 layers of width 64 with 4 heads; `-f…` where the MLP is not 4 × the width). A Pythia
    name always means Pythia's shape, and one shape has one name."""

    def shape(config: GPTNeoXConfig) -> tuple[int, ...]:
        return tuple(getattr(config, f) for f in SHAPE_FIELDS)

    mine = shape(pythia_config(size, **overrides))
    if mine == shape(pythia_config(size)):
        return size
    named = next((name for name in SIZES if shape(pythia_config(name)) == mine), None)
    if named:
        return named
    layers, hidden, heads, ffn = mine
    return f"L{layers}-d{hidden}-h{heads}" + (f"-f{ffn}" if ffn != 4 * hidden else "")


def count_params(size: str, *, vocab_size: int | None = None, **overrides: Any) -> tuple[int, int]:
    """(total, non-embedding) parameter counts, read off a model built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(pythia_config(size, vocab_size=vocab_size, **overrides))
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    return total, total - embedding


def build_model(
    size: str,
    *,
    attention: AttentionMode = "vanilla",
    variant: Variant = "hidden",
    beta: float = 0.0,
    vocab_size: int | None = None,
    dtype: torch.dtype | None = None,
    **config_overrides: Any,
) -> GPTNeoXForCausalLM:
    """A freshly initialised Pythia-shaped model in the given attention mode (seed with torch.manual_seed)."""
    config = pythia_config(size, vocab_size=vocab_size, **config_overrides)
    model = GPTNeoXForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    return set_attention(model, attention, variant=variant, beta=beta)


def load_model(
    path_or_hub_id: str | Path,
    *,
    attention: AttentionMode | None = None,
    variant: Variant | None = None,
    beta: float | None = None,
    **from_pretrained_kwargs: Any,
) -> GPTNeoXForCausalLM:
    """Load a Pythia checkpoint (local directory, or hub id where the hub is reachable) into either mode.

    The attention mode defaults to what the checkpoint's config records (vanilla for an original Pythia).
    """
    model = GPTNeoXForCausalLM.from_pretrained(path_or_hub_id, attn_implementation="sdpa", **from_pretrained_kwargs)
    saved = attention_settings(model.config)
    return set_attention(
        model,
        attention or saved.mode,
        variant=variant or saved.variant,
        beta=saved.beta if beta is None else beta,
    )

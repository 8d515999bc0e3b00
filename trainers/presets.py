"""Named run presets. The control plane's sweep presets build on these; any field can be overridden."""

from __future__ import annotations

from typing import Any

from trainers.models import PYTHIA_SIZES
from trainers.spec import RunSpec

# The paper's D_p model: GPT-2-style, 2 layers, d 128, 2 heads, ReLU MLP (here on the GPT-NeoX backbone).
DP_MODEL = {"size": "14m", "overrides": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2,
                                         "hidden_act": "relu"}}  # fmt: skip


def _synthetic_paper(size: str | None) -> dict[str, Any]:
    """The paper's exact D_p configuration: b = 10, batch 512, lr 1e-3 cosine, 1% warmup, 30M sequences."""
    return {
        "model": DP_MODEL,
        "data": {"kind": "synthetic", "p": 0.5, "b": 10.0, "lags": 10},
        "train": {"steps": 58_593, "seq_len": 64, "micro_batch": 512, "global_batch": 512, "checkpoint_interval": 5000},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.01, "warmup_frac": 0.01, "min_lr_ratio": 0.0},
        "resources": {"gpus_per_worker": 1},
        "eval": {"held_out_sequences": 2048, "interval": 5000},
    }


def _synthetic_cpu(size: str | None) -> dict[str, Any]:
    """D_p sized for 2 CPU cores: b = 3 (learnable fast, still far from linear), batch 64, lr 3e-3, 2,000 steps."""
    return {
        "model": DP_MODEL,
        "data": {"kind": "synthetic", "p": 0.5, "b": 3.0, "lags": 10},
        "train": {"steps": 2000, "seq_len": 64, "micro_batch": 64, "global_batch": 64, "checkpoint_interval": 500},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.0, "warmup_frac": 0.01, "min_lr_ratio": 0.1},
        "resources": {"cpus_per_worker": 2},
        "eval": {"held_out_sequences": 1024},
    }


def _text_cpu(size: str | None) -> dict[str, Any]:
    """A Pythia shape from scratch on the Wikipedia corpus, 2 CPU workers under ZeRO-2."""
    return {
        "model": {"size": size or "14m"},
        "data": {"kind": "text", "corpus": "wiki"},
        "train": {"steps": 200, "seq_len": 64, "micro_batch": 8, "global_batch": 16, "checkpoint_interval": 100},
        "optimizer": {"warmup_frac": 0.05},
        "resources": {"zero_stage": 2, "workers": 2, "cpus_per_worker": 1},
        "eval": {"held_out_sequences": 256},
    }


def _pythia_paper(size: str | None) -> dict[str, Any]:
    """The paper's Pythia protocol: fine-tune the pretrained checkpoint on 10M Pile sequences of 64 tokens, one
    epoch, lr 0.4 × Pythia's, 5% warmup, fp16, ZeRO-2 (needs the hub, or local copies of both)."""
    size = size or "410m"
    global_batch = 1024
    return {
        "model": {"size": size},
        "protocol": {"kind": "finetune", "checkpoint": f"EleutherAI/pythia-{size}"},
        "data": {"kind": "hf", "dataset": "monology/pile-uncopyrighted", "split": "train", "text_field": "text"},
        "train": {
            "steps": 10_000_000 // global_batch,
            "seq_len": 64,
            "micro_batch": 64,
            "global_batch": global_batch,
            "precision": "fp16",
            "checkpoint_interval": 1000,
        },  # fmt: skip
        "optimizer": {"lr": 0.4 * PYTHIA_SIZES[size].lr, "warmup_frac": 0.05},
        "resources": {"zero_stage": 2, "workers": 8, "gpus_per_worker": 1, "cpus_per_worker": 4},
        "eval": {"held_out_sequences": 4096, "interval": 1000},
    }


PRESETS = {
    "synthetic-paper": _synthetic_paper,
    "synthetic-cpu": _synthetic_cpu,
    "text-cpu": _text_cpu,
    "pythia-paper": _pythia_paper,
}


def preset(preset_name: str, size: str | None = None, /, **overrides: Any) -> RunSpec:
    """A RunSpec from a named preset; `overrides` are top-level RunSpec fields merged section by section."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; known: {', '.join(PRESETS)}")
    base = PRESETS[preset_name](size)
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return RunSpec.model_validate(base)

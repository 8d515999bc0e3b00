"""Named sweep requests. A request that names a `preset` starts from it; every field the request gives overrides
the preset's (sections such as `train` merge key by key; a `dataset` of another kind replaces the preset's)."""

from __future__ import annotations

from typing import Any

from trainers.presets import DP_MODEL

ALL_SIZES = ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b"]

SWEEP_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        # Sized for 2 CPU cores: the two smallest Pythia shapes from scratch on the Wikipedia corpus.
        "name": "demo-text",
        "sizes": ["14m", "31m"],
        "seeds": [0],
        "dataset": {"kind": "text", "corpus": "wiki"},
        "train": {"steps": 60, "seq_len": 32, "batch_size": 8, "warmup_frac": 0.05, "eval_sequences": 64},
        "myopic": {"variant": "kv"},
    },
    "demo-synthetic": {
        # The D_p pair of the demo (preset synthetic-cpu, shortened): where the gap is large and certain.
        "name": "demo-synthetic",
        "sizes": ["14m"],
        "seeds": [0],
        "dataset": {"kind": "synthetic", "p": 0.5, "b": 3.0, "lags": 10},
        "train": {
            "steps": 400,
            "seq_len": 64,
            "batch_size": 64,
            "lr": 3e-3,
            "warmup_frac": 0.01,
            "weight_decay": 0.0,
            "eval_sequences": 1024,
            "model_overrides": DP_MODEL["overrides"],
        },
        "myopic": {"variant": "kv"},
    },  # fmt: skip
    "synthetic-paper": {
        # The paper's D_p run: b = 10, batch 512, lr 1e-3, 30M sequences; five seeds for an interval.
        "name": "synthetic-paper",
        "sizes": ["14m"],
        "seeds": [0, 1, 2, 3, 4],
        "dataset": {"kind": "synthetic", "p": 0.5, "b": 10.0, "lags": 10},
        "train": {
            "steps": 58_593,
            "seq_len": 64,
            "batch_size": 512,
            "lr": 1e-3,
            "warmup_frac": 0.01,
            "weight_decay": 0.01,
            "eval_sequences": 2048,
            "checkpoint_interval": 5000,
            "model_overrides": DP_MODEL["overrides"],
        },
    },  # fmt: skip
    "pythia-paper": {
        # The paper's eight-size protocol: fine-tune each Pythia checkpoint on 10M Pile sequences of 64 tokens,
        # one epoch, lr 0.4 × the size's Pythia lr, 5% warmup, fp16 (needs GPUs and the hub or local copies).
        "name": "pythia-paper",
        "sizes": ALL_SIZES,
        "seeds": [0],
        "protocol": "finetune",
        "dataset": {"kind": "hf", "dataset": "monology/pile-uncopyrighted", "split": "train", "text_field": "text"},
        "train": {
            "steps": 10_000_000 // 1024,
            "seq_len": 64,
            "batch_size": 1024,
            "lr_scale": 0.4,
            "warmup_frac": 0.05,
            "precision": "fp16",
            "checkpoint_interval": 1000,
            "eval_sequences": 4096,
        },
    },  # fmt: skip
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        same_kind = not (isinstance(old, dict) and isinstance(value, dict) and value.get("kind", old.get("kind"))
                         != old.get("kind"))  # fmt: skip
        out[key] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) and same_kind else value
    return out


def apply_preset(body: dict[str, Any]) -> dict[str, Any]:
    """The request with its preset filled in under the fields it gives."""
    name = body.get("preset")
    if name is None:
        return body
    if name not in SWEEP_PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; known: {', '.join(SWEEP_PRESETS)}")
    return _merge(SWEEP_PRESETS[name], body)

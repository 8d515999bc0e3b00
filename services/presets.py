"""Named sweeps: one table. A preset is a run template (the sections and field names of `trainers.spec.RunSpec`)
plus the axes (sizes, seeds) and the learning-rate rule; a request that names one overrides any of its fields
(the run template merges key by key; a `data` section of another kind replaces the preset's).

Presets named after the paper carry the values the paper states (its section 2 for D_p, section 3 for Pythia);
what differs is listed in `deviations` and in docs/science.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_SIZES = ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b"]

# The paper's D_p model: 2 layers, d 128, 2 heads, ReLU MLP of 4d (here on the GPT-NeoX backbone).
DP_MODEL = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "hidden_act": "relu"}
CPU_DP_MODEL = {**DP_MODEL, "hidden_size": 64}  # half the width: twice as fast on 2 cores (calibration)
# The paper's optimiser for both protocols: AdamW (0.9, 0.999), weight decay 0.01, cosine to 0, no clipping.
PAPER_OPTIMIZER = {"betas": [0.9, 0.999], "weight_decay": 0.01, "min_lr_ratio": 0.0, "clip": 0.0}
LADDER_CORPUS = "wiki+sotu+brown+austen+moby-dick"  # the five registry corpora of docs/data.md, mixed


# The CPU text ladder's run (calibration: docs/results.md); the demo's text sweep is its seed 0 at 0.1m.
LADDER_RUN: dict[str, Any] = {
    "model": {"vocab_size": 4096},
    "attention": {"variant": "hidden", "beta": 0.0},
    "data": {"kind": "text", "corpus": LADDER_CORPUS, "sequences": "packed", "held_out": 0.05},
    "train": {"steps": 300, "seq_len": 128, "global_batch": 32, "micro_batch": 32},
    "optimizer": {"lr": 3e-3, "warmup_frac": 0.05},
    "resources": {"zero_stage": 0, "workers": 1, "cpus_per_worker": 1},
    "eval": {"held_out_sequences": 1024},
}


# Text where the context matters (docs/results.md): the ladder's data as document starts (position 0 is a
# document's first token, as in the paper's per-position analysis), 64 tokens, at Pythia-14m's shape with five times
# the ladder's steps: its vanilla model beats the bigram reference by more than half a nat.
CONTEXT_RUN: dict[str, Any] = {
    **LADDER_RUN,
    "data": {**LADDER_RUN["data"], "sequences": "document_start"},
    "train": {"steps": 1500, "seq_len": 64, "global_batch": 32, "micro_batch": 32},
    "eval": {"held_out_sequences": 512},  # every held-out document start (about 420 of them)
}
# Multiplication with filler positions sized for one core per arm (docs/results.md): operands of 1–2 digits,
# 4 layers of width 128; the filler sweep pads the operands to 8 digits (run.data.pad: 8).
MULTIPLICATION_RUN: dict[str, Any] = {
    "model": {"overrides": {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4}},
    "data": {"kind": "multiplication", "max_digits": 2, "pad": 2},
    "train": {"steps": 4000, "global_batch": 64, "micro_batch": 64},
    "optimizer": {"lr": 2e-3, "warmup_frac": 0.05},
    "resources": {"zero_stage": 0, "workers": 1, "cpus_per_worker": 1},
    "eval": {"held_out_sequences": 2048},
}


@dataclass(frozen=True)
class Preset:
    doc: str
    sizes: list[str]
    seeds: list[int]
    run: dict[str, Any]
    arms: list[str] | None = None  # None: vanilla and myopic
    lr_scale: float | None = None
    lr_by_size: dict[str, float] | None = None
    profile: str | None = None  # the resource profile it is meant for, where a command is given none
    deviations: list[str] = field(default_factory=list)

    def request(self, name: str) -> dict[str, Any]:
        """The preset as the fields of a sweep request."""
        body: dict[str, Any] = {"name": name, "sizes": self.sizes, "seeds": self.seeds, "run": self.run}
        if self.arms is not None:
            body["arms"] = self.arms
        if self.lr_scale is not None:
            body["lr_scale"] = self.lr_scale
        if self.lr_by_size is not None:
            body["lr_by_size"] = self.lr_by_size
        return body


SYNTHETIC_PAPER = Preset(
    doc="The paper's D_p run (section 2): p = 1, b = 10, window 10, T = 64; 2 layers, d 128, 2 heads, ReLU MLP; "
    "AdamW lr 1e-3 (0.9, 0.999), weight decay 0.01, 1% warmup, cosine to 0, no clipping; batch 512 of fresh "
    "samples × 58,593 steps (30M sequences); fp32. Other p values of the paper: run.data.p = 0.01, 0.1 or 0.3.",
    sizes=["14m"],
    seeds=[0, 1, 2],
    run={
        "model": {"overrides": DP_MODEL},
        "data": {"kind": "synthetic", "p": 1.0, "b": 10.0, "lags": 10},
        "train": {
            "steps": 58_593,
            "seq_len": 64,
            "global_batch": 512,
            "precision": "fp32",
            "checkpoint_interval": 5000,
        },
        "optimizer": {"lr": 1e-3, "warmup_frac": 0.01, **PAPER_OPTIMIZER},
        "resources": {"zero_stage": 0, "workers": 1},
        "eval": {"held_out_sequences": 50_000, "interval": 5000},
    },
    deviations=[
        "GPT-NeoX blocks (parallel residual, rotary position on a quarter of each head, GPT-NeoX init) instead of "
        "GPT-2 blocks (sequential residual, learned absolute positions): ablation in docs/results.md",
        "the paper's myopic p = 1 run had 3 layers; both arms here have the paper's main 2",
        "three seeds (the paper reports one run per p)",
        "held-out Huber/p on 50,000 fresh sequences of a fixed seed (the paper: training loss and a 50k evaluation)",
    ],
)

PYTHIA_PAPER = Preset(
    doc="The paper's Pythia protocol (section 3.2): fine-tune each non-deduped Pythia checkpoint on the first 64 "
    "tokens of Pile documents with at least 64 tokens, 10M sequences, one epoch (6,144 × 1,627 steps), 1% held "
    "out; AdamW (0.9, 0.999), weight decay 0.01, 5% warmup, cosine to 0, no clipping; the paper's lr per size; "
    "fp16; ZeRO-2; the `hidden` variant. Needs GPUs and the hub (or local copies of checkpoints and data).",
    sizes=ALL_SIZES,
    seeds=[0],
    lr_by_size={
        "14m": 4e-4,
        "31m": 4e-4,
        "70m": 1.2e-4,
        "160m": 2.4e-4,
        "410m": 1.2e-4,
        "1b": 1.2e-4,
        "1.4b": 8e-5,
        "2.8b": 6.4e-5,
    },
    run={
        "protocol": {"kind": "finetune", "checkpoint": "EleutherAI/pythia-{size}"},
        "attention": {"variant": "hidden", "beta": 0.0},
        "data": {
            "kind": "hf",
            "dataset": "EleutherAI/the_pile_deduplicated",
            "split": "train",
            "text_field": "text",
            "sequences": "document_start",
            "held_out": 0.01,
        },
        "train": {"steps": 1627, "seq_len": 64, "global_batch": 6144, "precision": "fp16", "checkpoint_interval": 200},
        "optimizer": {"warmup_frac": 0.05, **PAPER_OPTIMIZER},
        "resources": {"zero_stage": 2},
        "eval": {"held_out_sequences": 8192, "interval": 400},
    },
    profile="gpu",
    deviations=[
        "data: the deduplicated Pile as text from the hub (EleutherAI/the_pile_deduplicated), tokenized here with "
        "the Pythia tokenizer; the paper read the pre-tokenized deduped idxmap, in order",
        "held-out split by a hash of the document index (1%), not datasets' train_test_split",
        "fp16 attention scores: the fused kernels accumulate scores and softmax in fp32 (the paper upcast an "
        "eager attention to fp32)",
        "the reported loss is held-out cross-entropy on a fixed set of 8,192 sequences, not the last training "
        "step's loss",
        "micro-batch and workers per size from the cluster profile (the paper: 6 GPUs, 1,024 sequences each per "
        "step); the effective batch, 6,144, is the paper's",
    ],
)

PRESETS: dict[str, Preset] = {
    "synthetic-paper": SYNTHETIC_PAPER,
    "pythia-paper": PYTHIA_PAPER,
    "synthetic-cpu": Preset(
        doc="D_p sized for 2 CPU cores, calibrated so that the paper's `hidden` arm behaves as in the paper "
        "(docs/results.md): p = 1, window 10, T = 64; b = 3 instead of 10; d 64 instead of 128 (2 layers, 2 heads, "
        "ReLU MLP); the paper's optimiser with lr 3e-3; batch 64 × 3,000 steps.",
        sizes=["14m"],
        seeds=[0, 1, 2],
        run={
            "model": {"overrides": CPU_DP_MODEL},
            "data": {"kind": "synthetic", "p": 1.0, "b": 3.0, "lags": 10},
            "train": {"steps": 3000, "seq_len": 64, "global_batch": 64, "checkpoint_interval": 1000},
            "optimizer": {"lr": 3e-3, "warmup_frac": 0.01, **PAPER_OPTIMIZER},
            "resources": {"zero_stage": 0, "workers": 1},
            "eval": {"held_out_sequences": 2048},
        },
    ),
    "cpu-ladder": Preset(
        doc="A text scaling ladder two CPU cores train in under an hour (docs/results.md): three GPT-NeoX shapes "
        "from scratch (0.1m, 0.4m and Pythia-14m's, a decade of non-embedding parameters) on the registry corpus "
        "mix, packed windows of 128 tokens, the 4,095 most frequent training tokens (the rest one id), 300 steps "
        "of 32 sequences, 3 seeds, vanilla and myopic (the paper's `hidden` variant); one worker of one core per "
        "run. The bigram reference (arms: [vanilla, myopic, bigram]) adds half again.",
        sizes=["0.1m", "0.4m", "14m"],
        seeds=[0, 1, 2],
        run=LADDER_RUN,
    ),
    "text-cpu": Preset(
        doc="A Pythia shape from scratch on the Wikipedia corpus, 2 CPU workers under ZeRO-2.",
        sizes=["14m"],
        seeds=[0],
        run={
            "data": {"kind": "text", "corpus": "wiki"},
            "train": {"steps": 200, "seq_len": 64, "micro_batch": 8, "global_batch": 16, "checkpoint_interval": 100},
            "optimizer": {"warmup_frac": 0.05},
            "resources": {"zero_stage": 2, "workers": 2, "cpus_per_worker": 1},
            "eval": {"held_out_sequences": 256},
        },
    ),
    "demo-synthetic": Preset(
        doc="The demo's D_p pair: synthetic-cpu cut to one seed and 1,000 steps on one core per arm, the paper's "
        "`hidden` variant.",
        sizes=["14m"],
        seeds=[0],
        run={
            "model": {"overrides": CPU_DP_MODEL},
            "data": {"kind": "synthetic", "p": 1.0, "b": 3.0, "lags": 10},
            "train": {"steps": 1000, "seq_len": 64, "global_batch": 64, "checkpoint_interval": 500},
            "optimizer": {"lr": 3e-3, "warmup_frac": 0.01, **PAPER_OPTIMIZER},
            "resources": {"zero_stage": 0, "workers": 1, "cpus_per_worker": 1},
            "attention": {"variant": "hidden"},
            "eval": {"held_out_sequences": 1024},
        },
    ),
    "context-cpu": Preset(
        doc="Text where the context matters, for the position-0 effect: cpu-ladder's data as document starts (the "
        "first 64 tokens of each document with at least 64), Pythia-14m's shape, 1,500 steps of 32 sequences, "
        "3 seeds, vanilla, myopic and the bigram reference.",
        sizes=["14m"],
        seeds=[0, 1, 2],
        arms=["vanilla", "myopic", "bigram"],
        run=CONTEXT_RUN,
    ),
    "multiplication-cpu": Preset(
        doc="Multiplication with filler positions (the paper's appendix) on one core per arm: reversed-digit "
        "products of 1–2-digit operands, padded to 2 digits (run.data.pad: 8 for 6 filler positions per operand), "
        "a 4-layer GPT-NeoX of width 128 from scratch, 4,000 steps of 64 fresh samples, 3 seeds; exact-match "
        "accuracy by operand length.",
        sizes=["14m"],
        seeds=[0, 1, 2],
        run=MULTIPLICATION_RUN,
    ),
    "demo": Preset(
        doc="The demo's text sweep: cpu-ladder's seed 0 at its smallest shape (0.1m), vanilla, myopic and the bigram "
        "reference; one pair, so its intervals are over held-out sequences (the whole ladder: preset cpu-ladder).",
        sizes=["0.1m"],
        seeds=[0],
        arms=["vanilla", "myopic", "bigram"],
        run=LADDER_RUN,
    ),
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section; a section of another `kind` replaces the base's."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and value.get("kind", old.get("kind")) == old.get("kind"):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out

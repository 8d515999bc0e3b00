"""SweepRequest → matched pairs of RunSpecs.

Every pair is (size, seed); its two runs are built from one spec and differ in `attention.mode` alone, which
`trainers.spec.check_matched` enforces before anything is stored. Resources per size come from
`cluster/resources.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.sweep_presets import apply_preset
from trainers.models import PYTHIA_SIZES
from trainers.spec import DataSpec, ResourceSpec, RunSpec, TextData, TrackingSpec, check_matched

RESOURCES = Path(__file__).resolve().parents[1] / "cluster" / "resources.yaml"
SizeName = Literal["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainOptions(Strict):
    steps: int = Field(1000, ge=1)
    seq_len: int = Field(64, ge=2, le=2048)
    batch_size: int = Field(32, ge=1, description="global batch (sequences per optimizer step)")
    micro_batch: int | None = Field(None, ge=1, description="default: the global batch split over the workers")
    lr: float | None = Field(None, gt=0.0, description="default: lr_scale × the size's Pythia learning rate")
    lr_scale: float = Field(1.0, gt=0.0, description="with lr unset: the multiple of each size's Pythia lr")
    warmup_frac: float = Field(0.01, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.1, ge=0.0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_interval: int = Field(0, ge=0)
    eval_sequences: int = Field(256, ge=1)
    model_overrides: dict[str, Any] = Field(default_factory=dict, description="GPTNeoXConfig fields for every size")


class MyopicOptions(Strict):
    variant: Literal["hidden", "kv"] = "hidden"
    beta: float = Field(0.0, ge=0.0, le=1.0)


class SweepRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    sizes: list[SizeName] = Field(min_length=1)
    arms: list[Literal["vanilla", "myopic"]] = Field(default_factory=lambda: ["vanilla", "myopic"], min_length=1)
    seeds: list[int] = Field(min_length=1)
    protocol: Literal["scratch", "finetune"] = "scratch"
    checkpoint: str = Field("EleutherAI/pythia-{size}", description="finetune: hub id or directory; {size} filled in")
    dataset: DataSpec = TextData()
    train: TrainOptions = TrainOptions()
    myopic: MyopicOptions = MyopicOptions()
    preset: str | None = Field(None, description="a named request (services.sweep_presets) under the given fields")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return apply_preset(data) if isinstance(data, dict) else data

    @field_validator("sizes", "arms", "seeds")
    @classmethod
    def _no_repeats(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("lists each value once")
        return v


@dataclass(frozen=True)
class PlannedPair:
    size: str
    seed: int
    runs: dict[str, RunSpec]  # arm → spec, for the requested arms


def resources(size: str, profile: str = "cpu", path: Path = RESOURCES) -> ResourceSpec:
    table = yaml.safe_load(path.read_text())
    if profile not in table:
        raise ValueError(f"no resource profile {profile!r} in {path}; profiles: {', '.join(table)}")
    entry = table[profile].get(size, table[profile].get("default"))
    if entry is None:
        raise ValueError(f"{path}: profile {profile!r} has no entry for {size} and no default")
    return ResourceSpec.model_validate(entry)


def plan(request: SweepRequest, *, sweep_id: str, profile: str = "cpu",
         tracking: TrackingSpec | None = None) -> list[PlannedPair]:  # fmt: skip
    """One pair per (size, seed), in request order; each run named `<sweep>-<size>-s<seed>-<arm>`."""
    t = request.train
    pairs = []
    for size in request.sizes:
        res = resources(size, profile)
        micro = t.micro_batch or max(1, t.batch_size // res.workers)
        data: dict[str, Any] = request.dataset.model_dump()
        overrides = dict(t.model_overrides)
        if request.dataset.kind == "synthetic":
            overrides.setdefault("hidden_act", "relu")  # the paper's D_p model has a ReLU MLP
        for seed in request.seeds:
            base = RunSpec.model_validate({
                "model": {"size": size, "overrides": overrides},
                "attention": {"mode": "vanilla", **request.myopic.model_dump()},
                "protocol": {"kind": "finetune", "checkpoint": request.checkpoint.format(size=size)}
                if request.protocol == "finetune" else {"kind": "scratch"},
                "data": data,
                "train": {"steps": t.steps, "seq_len": t.seq_len, "micro_batch": micro, "global_batch": t.batch_size,
                          "precision": t.precision, "checkpoint_interval": t.checkpoint_interval},
                "optimizer": {"lr": t.lr or t.lr_scale * PYTHIA_SIZES[size].lr, "warmup_frac": t.warmup_frac,
                              "weight_decay": t.weight_decay},
                "resources": res.model_dump(),
                "eval": {"held_out_sequences": t.eval_sequences},
                "seed": seed,
                "tracking": (tracking or TrackingSpec()).model_dump(),
            })  # fmt: skip
            vanilla, myopic = base.arm("vanilla"), base.arm("myopic")
            check_matched(vanilla, myopic)
            arms = {"vanilla": vanilla, "myopic": myopic}
            runs = {
                arm: arms[arm].model_copy(update={"name": f"{sweep_id}-{size}-s{seed}-{arm}"}) for arm in request.arms
            }
            pairs.append(PlannedPair(size, seed, runs))
    return pairs

"""Sweep requests into matched pairs of RunSpecs.

A sweep is a run template plus its axes. The template (`run`) has the sections and field names of
`trainers.spec.RunSpec`, with the same validation; the planner fills in only what depends on the size: the model
size, the resources of the cluster profile (`cluster/resources.yaml`, under what the template sets), the
micro-batch that fits the size, the learning rate (`run.optimizer.lr`, else `lr_by_size`, else `lr_scale` × the
size's Pythia lr) and `{size}` in a fine-tune checkpoint. Each pair's two runs differ in `attention.mode` alone,
which `trainers.spec.check_matched` enforces before anything is stored. Errors name the field by its path in the
request (`run.train.steps`).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from cluster.capacity import Capacity, unplaceable
from cluster.resources import Placement, placement
from services.errors import InvalidRequest
from services.presets import PRESETS, merge
from trainers.corpora import corpus_names
from trainers.data import DataError, corpus_files
from trainers.models import PYTHIA_SIZES, SIZES, SizeName, count_params
from trainers.myopic import AttentionMode
from trainers.spec import RunSpec, Strict, check_matched, error_path, field_error

# Fields of a RunSpec the request's axes or the service set; a template that sets them is refused.
SET_ELSEWHERE = {
    "name": "set by the service (each run is named after its sweep, size, seed and arm)",
    "seed": "set per run by `seeds`",
    "model.size": "set per run by `sizes`",
    "attention.mode": "set per run by `arms`",
    "attention.past_from": "set by the service (the local arm's vanilla partner)",
    "tracking": "set by the service",
    "storage_path": "set by the service",
}


def _refuse(why: str):
    def check(value: Any) -> Any:
        raise ValueError(why)

    return check


def _template_of(model: type[BaseModel], prefix: str = "") -> type[BaseModel]:
    """A model with `model`'s fields, each optional with its own constraints; fields set elsewhere refused.
    Section validators that look across fields run when the planner builds the whole RunSpec."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if path in SET_ELSEWHERE:
            fields[name] = (Annotated[Any, AfterValidator(_refuse(SET_ELSEWHERE[path]))], None)
            continue
        partial = copy.copy(info)
        partial.default, partial.default_factory = None, None
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            annotation = _template_of(info.annotation, f"{path}.")
        elif get_origin(info.annotation) is Union:  # the data section: one of its kinds, whole
            # with its Discriminator (the data section's): the kind picks the model, whose errors alone are reported
            annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            partial = Field(None, description=info.description)
        else:
            annotation = info.annotation
        fields[name] = (annotation | None, partial)
    return create_model(f"{model.__name__.removesuffix('Spec')}Template", __base__=Strict, **fields)


RunTemplate = _template_of(RunSpec)
Seed = Annotated[int, Field(ge=0, lt=2**32)]
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


MAX_PLANNED_RUNS = 400  # planning costs milliseconds a run; a request of 3,200 runs held a server core for a minute


class SweepRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    sizes: list[SizeName] = Field(min_length=1, max_length=len(SIZES))
    seeds: list[Seed] = Field(
        min_length=1, max_length=100, description=f"sizes × seeds × arms plans at most {MAX_PLANNED_RUNS} runs"
    )
    arms: list[AttentionMode] = Field(
        default_factory=lambda: ["vanilla", "myopic"],
        min_length=1,
        max_length=4,
        description="vanilla and myopic make the pair; bigram (each position sees only itself) is the optional "
        "reference: the share of the context benefit that myopia loses; local (text, from scratch) trains after "
        "its vanilla partner on that model's frozen past: the local myopia bonus",
    )
    preset: PresetName | None = Field(None, description="a named sweep (see `myopia presets`) under the given fields")
    run: RunTemplate = Field(default_factory=RunTemplate, description="a RunSpec template: its sections and fields")
    lr_scale: float = Field(
        1.0,
        gt=0.0,
        allow_inf_nan=False,
        description="with no run.optimizer.lr and no "
        "lr_by_size entry: each size's lr is lr_scale × its Pythia pretraining lr",
    )
    lr_by_size: dict[SizeName, Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        max_length=len(SIZES),
        description="per-size learning rates, used where run.optimizer.lr is unset",
    )
    unpaired: bool = Field(
        False,
        description="true: arms without both vanilla and myopic are allowed (no gap is reported for them); "
        "by default a sweep must make pairs",
    )

    @field_validator("lr_by_size", mode="before")
    @classmethod
    def _few_sizes(cls, v: Any) -> Any:
        # by shape, before each key is validated: a body of 60,000 keys is refused in one error, not 120,000
        if isinstance(v, dict) and len(v) > len(SIZES):
            raise ValueError(f"at most {len(SIZES)} entries, one per size; got {len(v):,}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        name = data["preset"]
        if not isinstance(name, str) or name not in PRESETS:
            return data  # the field's own validation names it
        return merge(PRESETS[name].request(name), data)

    @field_validator("sizes", "seeds", "arms")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError("lists each value once")
        return values

    @model_validator(mode="after")
    def _arms_make_pairs(self) -> SweepRequest:
        runs = len(self.sizes) * len(self.seeds) * len(self.arms)
        if runs > MAX_PLANNED_RUNS:
            raise field_error("seeds", f"sizes × seeds × arms = {runs} runs; a sweep plans at most {MAX_PLANNED_RUNS}")
        if not self.unpaired and not {"vanilla", "myopic"} <= set(self.arms):
            raise field_error("arms", "a sweep measures the gap between vanilla and myopic, so both must run "
                              '(`"unpaired": true` runs other arms alone)')  # fmt: skip
        if "local" in self.arms and not {"vanilla", "myopic"} <= set(self.arms):
            raise field_error("arms", "the local arm trains on its vanilla partner's past and is reported beside "
                              "the pair, so vanilla and myopic must run too")  # fmt: skip
        return self

    def template(self) -> dict[str, Any]:
        return self.run.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class PlannedPair:
    size: str
    seed: int
    runs: dict[str, RunSpec]  # arm → spec, for the requested arms


def size_spec(request: SweepRequest, size: str, seed: int, profile: str) -> dict[str, Any]:
    """The run template with what depends on the size filled in (a RunSpec document, not yet validated)."""
    doc = request.template()
    where = placement(size, profile)
    doc["resources"] = {**where.resources, **doc.get("resources", {})}
    doc["model"] = {**doc.get("model", {}), "size": size}
    doc["seed"] = seed
    train = doc.setdefault("train", {})
    workers = doc["resources"].get("workers", 1)
    global_batch = train.get("global_batch", RunSpec.model_fields["train"].default.global_batch)
    if "micro_batch" not in train and global_batch % workers == 0:
        train["micro_batch"] = where.micro_batch(global_batch, workers, fits=gpu_fit(size, doc))
    optimizer = doc.setdefault("optimizer", {})
    if optimizer.get("lr") is None:
        optimizer["lr"] = request.lr_by_size.get(size) or request.lr_scale * SIZES[size].lr
    protocol = doc.get("protocol", {})
    if isinstance(protocol.get("checkpoint"), str):  # `{size}` only: a request is data, never a format string
        doc["protocol"] = {**protocol, "checkpoint": protocol["checkpoint"].replace("{size}", size)}
    return doc


def gpu_fit(size: str, doc: dict[str, Any]) -> int | None:
    """On GPUs, the most sequences per forward that fit one GPU with the headroom `cluster.memory` keeps, at this
    run's sequence length, precision, ZeRO stage and loss (fused or not; a Pythia shape; config overrides are not
    modelled)."""
    res, train = doc["resources"], doc["train"]
    if not res.get("gpus_per_worker") or size not in PYTHIA_SIZES:
        return None
    from cluster.memory import largest_micro_batch  # (imports DeepSpeed: only for GPU plans)
    from trainers.speedups import fuses_loss

    defaults = RunSpec.model_fields["train"].default
    return largest_micro_batch(
        size,
        seq_len=train.get("seq_len", defaults.seq_len),
        precision=train.get("precision", defaults.precision),
        zero_stage=res.get("zero_stage", 0),
        gpus=int(res.get("workers", 1) * res["gpus_per_worker"]),
        fused_loss=fuses_loss(
            doc.get("data", {}).get("kind", "text"),
            train.get("precision", defaults.precision),
            train.get("fused_loss", defaults.fused_loss),
        ),
    )


def plan(
    request: SweepRequest,
    *,
    profile: str = "cpu",
    allowed_roots: list[Path] | None = None,
    capacity: Capacity | None = None,
) -> list[PlannedPair]:
    """One pair per (size, seed), in request order. Runs are unnamed and untracked: the service names them.
    With `allowed_roots`, every local path the runs would read (a corpus, a dataset, a checkpoint) must lie under
    one of them; the planned model must fit the profile's `max_params`; with `capacity`, the cluster must be able
    to place each run's workers."""
    pairs, corpora_checked = [], {}
    for size in request.sizes:
        for seed in request.seeds:
            try:
                base = RunSpec.model_validate(size_spec(request, size, seed, profile))
            except ValidationError as e:
                errors = [(error_path(err, ("run",)), f"{err['msg']} (at size {size})") for err in e.errors()]
                raise InvalidRequest(errors) from None
            errors = _paths_outside(base, allowed_roots, corpora_checked)
            errors += _too_big(base, placement(size, profile), profile)
            errors += [(f, f"{msg} (at size {size})") for f, msg in unplaceable(base.resources, capacity)]
            if errors:
                raise InvalidRequest(errors)
            arms = {mode: base.arm(mode, "partner") for mode in ("vanilla", "myopic", "bigram", "local")}
            check_matched(*arms.values())
            if "local" in request.arms:  # what the local arm refuses of the template (the `kv` variant), by path
                try:
                    RunSpec.model_validate(arms["local"].model_dump())
                except ValidationError as e:
                    raise InvalidRequest([(error_path(err, ("run",)), err["msg"]) for err in e.errors()]) from None
            pairs.append(PlannedPair(size, seed, {arm: arms[arm] for arm in request.arms}))
    labels: dict[str, str] = {}
    for pair in pairs:  # two sizes that the overrides turn into one model would be one row, and one run name
        label = next(iter(pair.runs.values())).label
        if labels.setdefault(label, pair.size) != pair.size:
            raise InvalidRequest(
                [("sizes", f"{labels[label]} and {pair.size} are the same model ({label}) with run.model.overrides")]
            )
    return pairs


def profile_of(request_body: dict[str, Any], default: str) -> str:
    """The profile a preset is meant for (pythia-paper: gpu), else `default`."""
    preset = PRESETS.get(str(request_body.get("preset")))
    return (preset.profile if preset else None) or default


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _paths_outside(spec: RunSpec, roots: list[Path] | None, checked: dict | None = None) -> list[tuple[str, str]]:
    """The local paths a run would read that lie outside the allowed roots (a request is data, never a path to
    whatever the service can read)."""
    if roots is None:
        return []
    wanted: list[tuple[str, str]] = []
    if spec.data.kind == "text" and not corpus_names(spec.data.corpus):
        wanted.append(("run.data.corpus", spec.data.corpus))
    if spec.data.kind == "hf" and not (HUB_ID.match(spec.data.dataset) and ".." not in spec.data.dataset):
        wanted.append(("run.data.dataset", spec.data.dataset))
    checkpoint = spec.protocol.checkpoint
    if checkpoint and not (HUB_ID.match(checkpoint) and ".." not in checkpoint):
        wanted.append(("run.protocol.checkpoint", checkpoint))
    resolved = [r.expanduser().resolve() for r in roots]
    where = ", ".join(str(r) for r in resolved) or "(none)"
    outside = [
        (field, f"{value!r} is neither a known name nor a path under the allowed data roots ({where})")
        for field, value in wanted
        if not any(Path(value).expanduser().resolve().is_relative_to(r) for r in resolved)
    ]
    corpus = Path(spec.data.corpus).expanduser() if spec.data.kind == "text" else None
    if not outside and corpus and ("run.data.corpus", spec.data.corpus) in wanted and corpus.exists():
        if (checked := {} if checked is None else checked).get(str(corpus)) is None:  # once per request, not per pair
            try:  # what the job would read of it, checked now where this machine sees it (the job checks again)
                corpus_files(corpus)
                checked[str(corpus)] = ""
            except DataError as e:
                checked[str(corpus)] = str(e)
        if checked[str(corpus)]:
            outside.append(("run.data.corpus", checked[str(corpus)]))
    return outside


def _too_big(spec: RunSpec, where: Placement, profile: str) -> list[tuple[str, str]]:
    """A planned model larger than the profile takes (parameters counted on the meta device: nothing allocated)."""
    if where.max_params is None:
        return []
    total = _total_params(spec.model.size, spec.model.vocab_size, json.dumps(spec.model.overrides, sort_keys=True))
    if total <= where.max_params:
        return []
    return [("run.model.overrides", f"the planned {spec.model.size} model has {total:,} parameters; the {profile} "
             f"profile takes at most {where.max_params:,}")]  # fmt: skip


@functools.lru_cache(maxsize=256)
def _total_params(size: str, vocab_size: int | None, overrides: str) -> int:
    """Once per shape, not per seed: a meta-device model of 128 layers takes a noticeable fraction of a second."""
    return count_params(size, vocab_size=vocab_size, **json.loads(overrides))[0]


def preset_run(
    name: str,
    *,
    size: str | None = None,
    seed: int | None = None,
    profile: str | None = None,
    run: dict[str, Any] | None = None,
) -> RunSpec:
    """One vanilla run of a preset (a size and seed, the preset's first by default), planned as its sweep would be;
    `run` overrides the preset's run template section by section."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    body: dict[str, Any] = {"preset": name, "run": run or {}}
    if size:
        body["sizes"] = [size]
    if seed is not None:
        body["seeds"] = [seed]
    request = SweepRequest.model_validate(body)
    one = request.model_copy(update={"sizes": request.sizes[:1], "seeds": request.seeds[:1]})
    return plan(one, profile=profile or profile_of(body, "cpu"))[0].runs["vanilla"]

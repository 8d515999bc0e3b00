"""RunSpec: everything one training run depends on, as one pydantic model (JSON in, JSON out).

The control plane and the trainers meet only here: a run is fully determined by its spec (docs/architecture.md).
The two arms of a pair (and the optional bigram and local arms) are specs that differ in `attention.mode` alone
(the local arm also names its vanilla partner in `attention.past_from`); `check_matched` refuses anything else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from trainers.models import SIZES, SizeName, pythia_config, shape_label
from trainers.myopic import AttentionMode, Variant


def field_error(field: str, message: str) -> PydanticCustomError:
    """A check across fields that names the field at fault (its path within the section that checks)."""
    return PydanticCustomError("spec_field", message, {"field": field})


DATA_KINDS = ("synthetic", "text", "hf", "multiplication")  # the tags of the data section's union


def error_path(err: Any, prefix: tuple[str, ...] = ()) -> str:
    """The dotted path of a validation error (`data.p`: without the union's tag pydantic puts in its location), with
    the field a cross-field check names."""
    loc = [str(p) for i, p in enumerate(err["loc"]) if not (i and err["loc"][i - 1] == "data" and p in DATA_KINDS)]
    field = (err.get("ctx") or {}).get("field")
    return ".".join([*prefix, *loc, *([field] if field else [])]) or "(top level)"


class Strict(BaseModel):
    """Unknown fields refused by name; no NaN or infinity in any float; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelOverrides(Strict):
    """The GPT-NeoX config fields a run may change, with their bounds."""

    num_hidden_layers: int | None = Field(None, ge=1, le=128)
    hidden_size: int | None = Field(None, ge=8, le=16384)
    num_attention_heads: int | None = Field(None, ge=1, le=256)
    intermediate_size: int | None = Field(None, ge=8, le=65536, description="default: 4 × hidden_size")
    hidden_act: Literal["gelu", "gelu_new", "gelu_fast", "relu", "silu"] | None = None
    use_parallel_residual: bool | None = Field(None, description="false: GPT-2-style sequential blocks")
    layer_norm_eps: float | None = Field(None, gt=0.0, le=0.1)
    hidden_dropout: float | None = Field(None, ge=0.0, le=0.9)
    attention_dropout: float | None = Field(None, ge=0.0, le=0.9)
    max_position_embeddings: int | None = Field(None, ge=2, le=65536)
    initializer_range: float | None = Field(None, gt=0.0, le=1.0)


def _bounded_overrides(value: dict[str, Any]) -> dict[str, Any]:
    return ModelOverrides.model_validate(value).model_dump(exclude_none=True)


Overrides = Annotated[
    dict[str, Any], AfterValidator(_bounded_overrides), WithJsonSchema(ModelOverrides.model_json_schema())
]
TextField = Annotated[str, Field(min_length=1, max_length=1000)]


class ModelSpec(Strict):
    size: SizeName = "14m"
    vocab_size: int | None = Field(
        None,
        ge=2,
        le=1_000_000,
        description="None: Pythia's 50,304 (text) or unused (synthetic). Smaller, on text from scratch: the data keep "
        "the vocab_size − 1 most frequent training tokens and map the rest to one out-of-vocabulary id",
    )
    overrides: Overrides = Field(default_factory=dict, description="GPT-NeoX config fields, e.g. num_hidden_layers")

    @model_validator(mode="after")
    def _valid_overrides(self) -> ModelSpec:
        try:
            pythia_config(self.size, vocab_size=self.vocab_size, **self.overrides)  # names unknown fields
        except Exception as e:  # noqa: BLE001 - whatever GPTNeoXConfig refuses is a bad request, not a crash
            raise field_error("overrides", f"not a valid GPT-NeoX config: {e}") from None
        return self


class AttentionSpec(Strict):
    mode: AttentionMode = "vanilla"
    variant: Variant = Field(
        "hidden", description="hidden: the paper's (past attention inputs detached); kv: past keys and values detached"
    )
    beta: float = Field(0.0, ge=0.0, le=1.0, description="gradient share through edges to earlier positions")
    past_from: str | None = Field(
        None,
        max_length=160,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="mode local: the run name of the trained vanilla model whose past it uses (its final checkpoint "
        "in the same storage); a sweep sets it to the pair's vanilla run",
    )

    @model_validator(mode="after")
    def _local_needs_past(self) -> AttentionSpec:
        if self.mode == "local" and self.beta != 0.0:
            raise field_error("beta", "local attention takes the whole past from the frozen model: beta must be 0")
        if self.mode == "local" and self.variant != "hidden":
            raise field_error("variant", "the local arm projects the frozen model's states (the `hidden` variant)")
        if (self.past_from is not None) != (self.mode == "local"):
            raise field_error("past_from", "mode 'local', and only it, names the vanilla run whose past it reads")
        return self


class ProtocolSpec(Strict):
    kind: Literal["scratch", "finetune"] = "scratch"
    checkpoint: TextField | None = Field(
        None,
        description="finetune: a Hugging Face hub id or a local checkpoint directory; in a sweep's run "
        "template, `{size}` stands for each size",
    )

    @model_validator(mode="after")
    def _checkpoint_iff_finetune(self) -> ProtocolSpec:
        if (self.kind == "finetune") != (self.checkpoint is not None):
            raise field_error("checkpoint", "protocol 'finetune' needs a checkpoint, and 'scratch' takes none")
        return self


class SyntheticData(Strict):
    kind: Literal["synthetic"] = "synthetic"
    p: float = Field(1.0, gt=0.0, le=1.0, description="share of positions whose target is the window sum")
    b: float = Field(10.0, gt=0.0, le=1000.0, description="sine frequency")
    lags: int = Field(
        10, ge=1, le=2048, description="window length: the target sums sin(b·x) over the previous `lags` inputs"
    )


class MultiplicationData(Strict):
    kind: Literal["multiplication"] = "multiplication"
    max_digits: int = Field(3, ge=1, le=9, description="operands have 1..max_digits digits (uniform)")
    pad: int = Field(
        3, ge=1, le=64, description="operands zero-padded to this many digits; beyond max_digits: filler positions"
    )

    @model_validator(mode="after")
    def _pad_holds_operands(self) -> MultiplicationData:
        if self.pad < self.max_digits:
            raise field_error("pad", f"pad ({self.pad}) must be at least max_digits ({self.max_digits})")
        return self

    @property
    def seq_len(self) -> int:
        """Both padded operands, '*', '=' and the product's 2 · max_digits digits."""
        return 2 * self.pad + 2 + 2 * self.max_digits


Sequences = Literal["packed", "document_start"]
SEQUENCES_DOC = "packed: documents joined by EOS and cut into windows; document_start: the first seq_len tokens of "
SEQUENCES_DOC += "each document with at least seq_len tokens (position 0 is a document's first token)"


class TextData(Strict):
    kind: Literal["text"] = "text"
    corpus: TextField = Field(
        "wiki",
        description="a corpus name from `myopia data fetch`, several joined by '+' (a mix: wiki+sotu+brown), "
        "or a text file or folder",
    )
    sequences: Sequences = Field("packed", description=SEQUENCES_DOC)
    held_out: float = Field(0.02, gt=0.0, le=0.5, description="share of documents held out (by a hash of the id)")


class HFData(Strict):
    kind: Literal["hf"] = "hf"
    dataset: TextField = Field(description="hub id (streamed where the hub is reachable) or a save_to_disk directory")
    split: str = Field("train", min_length=1, max_length=200)
    text_field: str = Field("text", min_length=1, max_length=200)
    sequences: Sequences = Field("document_start", description=SEQUENCES_DOC)
    held_out: float = Field(0.01, gt=0.0, le=0.5, description="share of documents held out (by a hash of the id)")


def _data_kind(value: Any) -> str:
    """A data section's kind; a section that names none is text (RunSpec's default)."""
    return value.get("kind", "text") if isinstance(value, dict) else getattr(value, "kind", "text")


DataSpec = Annotated[
    Annotated[SyntheticData, Tag("synthetic")]
    | Annotated[TextData, Tag("text")]
    | Annotated[HFData, Tag("hf")]
    | Annotated[MultiplicationData, Tag("multiplication")],
    Discriminator(_data_kind),
]


MAX_TOKENS_PER_FORWARD = 2**22  # 2,048 sequences of 2,048: above what the GPU planner gives the smallest model (1,024)


class TrainSpec(Strict):
    steps: int = Field(1000, ge=1, le=10_000_000)
    seq_len: int = Field(64, ge=2, le=2048)
    micro_batch: int = Field(
        8,
        ge=1,
        le=65_536,
        description=f"sequences per worker per forward; micro_batch × seq_len ≤ {MAX_TOKENS_PER_FORWARD:,} tokens",
    )
    global_batch: int = Field(32, ge=1, le=1_048_576, description="sequences per optimizer step, all workers together")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_interval: int = Field(
        0, ge=0, le=10_000_000, description="steps between checkpoints; 0: only at the end"
    )
    compile: bool = Field(True, description="GPU workers: torch.compile the model (DeepSpeed's engine.compile)")
    fused_loss: bool = Field(
        True,
        description="GPU workers, text data: liger-kernel's fused linear + cross-entropy, chunked, with no "
        "micro_batch × seq_len × vocabulary logits",
    )


class OptimizerSpec(Strict):
    lr: float | None = Field(None, gt=0.0, le=1.0, description="None: the size's Pythia learning rate")
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    weight_decay: float = Field(0.1, ge=0.0, le=10.0)
    warmup_frac: float = Field(0.01, ge=0.0, lt=1.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine decays to this fraction of lr")
    clip: float = Field(1.0, ge=0.0, le=1e6, description="gradient-norm clipping; 0: none")
    fused: bool = Field(True, description="GPU workers: torch's fused AdamW kernel")


class ResourceSpec(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 0
    workers: int = Field(1, ge=1, le=1024)
    gpus_per_worker: float = Field(0.0, ge=0.0, le=16.0)
    cpus_per_worker: float = Field(1.0, gt=0.0, le=512.0)
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the workers over nodes (STRICT_SPREAD: one per node)"
    )


class EvalSpec(Strict):
    held_out_sequences: int = Field(256, ge=1, le=1_000_000)
    interval: int = Field(0, ge=0, le=10_000_000, description="steps between evaluations; 0: only at the end")
    per_position: bool = True
    probes: bool = Field(True, description="synthetic data: linear probes of sin(b·x) per layer and lag")


class TrackingSpec(Strict):
    mlflow_uri: str | None = Field(None, description="None: no MLflow logging")
    experiment: str = "myopia"
    parent_run_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class RunSpec(Strict):
    name: str | None = Field(
        None,
        max_length=160,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="run id; also the Ray Train run name (checkpoints resume by it)",
    )
    model: ModelSpec = ModelSpec()
    attention: AttentionSpec = AttentionSpec()
    protocol: ProtocolSpec = ProtocolSpec()
    data: DataSpec = TextData()
    train: TrainSpec = TrainSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    resources: ResourceSpec = ResourceSpec()
    eval: EvalSpec = EvalSpec()
    seed: int = Field(0, ge=0, lt=2**32)
    tracking: TrackingSpec = TrackingSpec()
    storage_path: str | None = Field(None, description="Ray Train storage (checkpoints); None: the data dir")

    @model_validator(mode="before")
    @classmethod
    def _multiplication_length(cls, doc: Any) -> Any:
        """Multiplication data fix the sequence length: where train.seq_len is not given, it is theirs."""
        data, train = (doc.get("data"), doc.get("train") or {}) if isinstance(doc, dict) else (None, None)
        if not (isinstance(data, dict) and data.get("kind") == "multiplication" and isinstance(train, dict)):
            return doc
        fields = MultiplicationData.model_fields
        digits, pad = (data.get(k, fields[k].default) for k in ("max_digits", "pad"))
        if "seq_len" not in train and isinstance(digits, int) and isinstance(pad, int):  # else the data's errors
            doc = {**doc, "train": {**train, "seq_len": 2 * pad + 2 + 2 * digits}}
        return doc

    @model_validator(mode="after")
    def _batches_divide(self) -> RunSpec:
        per_step = self.train.micro_batch * self.resources.workers
        if self.train.global_batch % per_step:
            raise field_error(
                "train.global_batch",
                f"train.global_batch ({self.train.global_batch}) must be a multiple of train.micro_batch × "
                f"resources.workers ({per_step})",
            )
        if self.protocol.kind == "finetune" and self.model.vocab_size is not None:
            raise field_error("model.vocab_size", "a fine-tuned checkpoint keeps its own vocabulary: leave it unset")
        if self.attention.mode == "local" and (self.data.kind not in ("text", "hf") or self.protocol.kind != "scratch"):
            raise field_error(
                "attention.mode", "the local arm trains a text model from scratch (text or hf data, scratch)"
            )
        if isinstance(self.data, MultiplicationData):
            if self.train.seq_len != self.data.seq_len:
                raise field_error(
                    "train.seq_len",
                    f"train.seq_len must be 2 · data.pad + 2 + 2 · data.max_digits = {self.data.seq_len} for this "
                    f"multiplication data, not {self.train.seq_len}",
                )
            if self.model.vocab_size is not None or self.protocol.kind == "finetune":
                raise field_error(
                    "data",
                    "multiplication data trains from scratch on its own 12 tokens: leave "
                    "model.vocab_size and protocol.checkpoint unset",
                )
        if self.train.micro_batch * self.train.seq_len > MAX_TOKENS_PER_FORWARD:
            raise field_error(
                "train.micro_batch",
                f"train.micro_batch × train.seq_len is {self.train.micro_batch * self.train.seq_len:,} tokens per "
                f"forward; at most {MAX_TOKENS_PER_FORWARD:,} (no worker holds more activations)",
            )
        if self.train.precision == "fp16" and self.resources.gpus_per_worker == 0:
            raise field_error("train.precision", "fp16 needs GPUs (resources.gpus_per_worker > 0); use fp32 or bf16")
        return self

    @property
    def label(self) -> str:
        """The model's name in tables, plots, run names and MLflow: its size, or its shape where overrides change
        it (`trainers.models.shape_label`)."""
        return shape_label(self.model.size, **self.model.overrides)

    @property
    def grad_accum(self) -> int:
        return self.train.global_batch // (self.train.micro_batch * self.resources.workers)

    @property
    def lr(self) -> float:
        return self.optimizer.lr or SIZES[self.model.size].lr

    def identity(self) -> dict[str, Any]:
        """What determines the result: everything but naming, tracking, storage and placement over nodes."""
        return self.model_dump(
            mode="json",
            exclude={
                "name": True,
                "tracking": True,
                "storage_path": True,
                "resources": {"placement"},
                "attention": {"past_from"},  # names the partner run, like `name`
            },
        )

    def config_hash(self) -> str:
        return _hash(self.identity())

    def pair_hash(self) -> str:
        """Shared by the two arms of a pair: the identity without the attention mode."""
        ident = self.identity()
        ident["attention"].pop("mode")
        return _hash(ident)

    def arm(self, mode: AttentionMode, past_from: str | None = None) -> RunSpec:
        update = {"mode": mode, "past_from": past_from if mode == "local" else None}
        return self.model_copy(update={"attention": self.attention.model_copy(update=update)})


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def check_matched(vanilla: RunSpec, *others: RunSpec) -> None:
    """Refuse arms that differ from the vanilla one in anything but the attention mode (naming and tracking aside):
    a pair is a vanilla and a myopic arm, with a bigram arm (the reference) and a local arm (the local myopia
    bonus) as options."""
    modes = [vanilla.attention.mode, *(o.attention.mode for o in others)]
    if modes[0] != "vanilla" or len(set(modes)) != len(modes) or "myopic" not in modes:
        raise ValueError(f"a pair is one vanilla arm and one myopic arm (bigram and local optional), not {modes}")
    a = _flatten(vanilla.identity())
    for other in others:
        b = _flatten(other.identity())
        differing = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k != "attention.mode")
        if differing:
            raise ValueError(f"the arms of a pair may differ only in attention.mode, not in: {', '.join(differing)}")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def flat_params(spec: RunSpec) -> dict[str, str]:
    """The spec as flat key → string pairs (MLflow params)."""
    return {
        k: json.dumps(v) if not isinstance(v, str) else v for k, v in _flatten(spec.model_dump(mode="json")).items()
    }


class SpecError(ValueError):
    """A spec that cannot be read; the message names each bad field."""


def parse_spec(text: str, source: str = "spec") -> RunSpec:
    try:
        return RunSpec.model_validate_json(text)
    except ValidationError as e:
        lines = [f"  {error_path(err)}: {err['msg']}" for err in e.errors()]
        raise SpecError(f"{source} is not a valid run spec:\n" + "\n".join(lines)) from None


def load_spec(path: str | Path) -> RunSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read spec {path}: {e.strerror}") from None
    return parse_spec(text, str(path))

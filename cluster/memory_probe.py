"""Peak bytes of live tensors during a forward and backward, measured on any device (CPU here) by watching every
storage the ops create: the calibration behind `cluster.memory` (bench/memory_calibration.py, tests/unit/test_memory).

`StorageTracker` is a TorchDispatchMode: each op's outputs whose storage is new (not one of the inputs', not one
already tracked: views share their base's storage) are counted by the storage's bytes until the storage dies
(weakref.finalize; torch keeps one Python object per storage while any tensor holds it, autograd's saved ones
included). Tensors made before the mode (parameters, pre-allocated gradients, the batch) are not counted, so the
peak is what a step needs above the model states: activations and the transient gradients of backward.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from trainers.models import build_model

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class StorageTracker(TorchDispatchMode):
    """Live bytes of the storages created under the mode (`current`) and their high-water mark (`peak`)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}  # storage data_ptr → bytes
        self.current = 0
        self.peak = 0

    def reset_peak(self) -> None:
        self.peak = self.current

    def _free(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0 or ptr in self.live or ptr in inputs:  # empty, a view, or an in-place result
                continue
            self.live[ptr] = storage.nbytes()
            self.current += self.live[ptr]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, ptr)
        return out


@dataclass(frozen=True)
class Shape:
    """A GPT-NeoX shape and batch: `layers` blocks of width `hidden` with `heads` heads, `batch` sequences of `seq`."""

    layers: int
    hidden: int
    heads: int
    seq: int
    batch: int
    vocab: int


@dataclass(frozen=True)
class Measurement:
    saved: int  # bytes live after the forward (the loss computed, the logits dropped): kept for backward
    peak: int  # the highest live bytes during forward and backward


def measure(shape: Shape, precision: str = "fp32", attention: str = "vanilla") -> Measurement:
    """One training forward and backward of `trainers.models.build_model`'s model, as DeepSpeed runs it on a GPU:
    the whole model cast to the precision (DeepSpeed's fp16/bf16 engines call module.half()/.bfloat16(), no
    autocast) and the loss the text task takes, transformers' cross-entropy on logits upcast to fp32. Gradients
    are allocated beforehand: they are model states (ZeRO's buckets and partitions), not activations."""
    torch.manual_seed(0)
    model = build_model(
        "14m",
        attention=attention,  # type: ignore[arg-type]
        vocab_size=shape.vocab,
        dtype=DTYPES[precision],
        num_hidden_layers=shape.layers,
        hidden_size=shape.hidden,
        num_attention_heads=shape.heads,
    ).train()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq))
    tracker = StorageTracker()
    with tracker:
        loss = model(ids, labels=ids, use_cache=False).loss  # the output's logits die with the expression
        saved = tracker.current
        loss.backward()
        del loss
    return Measurement(saved, tracker.peak)

"""What differs between a text run and a D_p run: the model, the batches, the loss and the evaluation.

Batches are pure functions of (seed, step) and the world size only decides which slice a rank takes, so both arms
of a pair see the same data in the same order at any world size.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from trainers import arithmetic, evaluate, local
from trainers.data import TokenShards, global_batch_indices, shard, text_dataset
from trainers.job_protocol import run_storage
from trainers.models import PYTHIA_VOCAB, build_model, load_model, pythia_config
from trainers.myopic import set_attention
from trainers.spec import MultiplicationData, RunSpec, SyntheticData
from trainers.synthetic import RegressionGPTNeoX, SyntheticTask

EVAL_SEED = 999_999  # the held-out D_p set's own seed, never used for training batches
PROBE_SEQUENCES = 2048  # probes fit on half of these (every layer's states of every position: memory grows fast)


class Task(Protocol):
    """What the training loop needs of a kind of data: the model, the batches, the loss and the evaluation."""

    spec: RunSpec
    wants_weights: bool  # `analyse` needs the whole trained weights (gathered from every rank under ZeRO-3)

    def build_model(self) -> torch.nn.Module: ...
    def micro_batches(self, step: int, rank: int, world: int) -> list[Any]: ...
    def loss(self, model: Any, batch: Any) -> torch.Tensor: ...
    def tokens(self, batch: Any) -> int: ...
    def evaluate(self, model: Any, rank: int, world: int) -> dict: ...
    def analyse(self, weights: dict[str, torch.Tensor]) -> list[dict] | None: ...


def eval_windows(wanted: int, available: int) -> np.ndarray:
    """The held-out windows a text run is scored on, in stream order: evenly spaced over the whole held-out stream
    (the first ones alone would come from the first corpora of a mix only), the same for every run of the data."""
    if wanted >= available:
        return np.arange(available)
    return np.unique(np.linspace(0, available - 1, wanted).round().astype(np.int64))


class TextTask:
    wants_weights = False

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        need = (spec.train.steps * spec.train.global_batch, spec.eval.held_out_sequences)
        self.shards: TokenShards = text_dataset(spec.data, spec.train.seq_len, need)  # type: ignore[arg-type]
        if spec.model.vocab_size and spec.model.vocab_size < PYTHIA_VOCAB:
            self.shards.restrict_vocab(spec.model.vocab_size)

    def build_model(self) -> torch.nn.Module:
        s, a = self.spec, self.spec.attention
        if s.protocol.kind == "finetune":
            return load_model(s.protocol.checkpoint, attention=a.mode, variant=a.variant, beta=a.beta)

        model = _fresh(s, a.mode, s.model.vocab_size)  # first: the same initial weights as every arm of the seed
        if a.mode != "local":
            return model
        frozen = _fresh(s, "vanilla", s.model.vocab_size)
        checkpoint = local.latest_checkpoint(run_storage(s.storage_path), a.past_from)
        frozen.load_state_dict(local.partner_weights(checkpoint, s.train.steps))
        return local.LocalMyopic(model, frozen)

    def micro_batches(self, step: int, rank: int, world: int) -> list[torch.Tensor]:
        """This rank's micro-batches of token ids for optimizer step `step`."""
        t = self.spec.train
        idx = global_batch_indices(step, t.global_batch, self.shards.n_sequences("train"), self.spec.seed)
        return [torch.from_numpy(self.shards.sequences("train", i)) for i in shard(idx, rank, world, t.micro_batch)]

    def loss(self, model: Any, ids: torch.Tensor) -> torch.Tensor:
        return model(ids, labels=ids, use_cache=False).loss

    def tokens(self, batch: torch.Tensor) -> int:
        return batch.numel()

    def evaluate(self, model: Any, rank: int, world: int) -> dict:
        windows = eval_windows(self.spec.eval.held_out_sequences, self.shards.n_sequences("heldout"))
        n = len(windows)
        mine = np.arange(n)[rank::world]  # positions in the evaluation set (per-sequence losses are kept by them)
        mb = self.spec.train.micro_batch
        batches = [
            (mine[i : i + mb], torch.from_numpy(self.shards.sequences("heldout", windows[mine[i : i + mb]])))
            for i in range(0, len(mine), mb)
        ]
        return evaluate.text_loss(model, batches, n, self.spec.train.seq_len)

    def analyse(self, weights: dict[str, torch.Tensor]) -> None:
        return None


class DpTask:
    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.wants_weights = spec.eval.probes
        d: SyntheticData = spec.data  # type: ignore[assignment]
        self.task = SyntheticTask(p=d.p, b=d.b, lags=d.lags, seq_len=spec.train.seq_len)

    def build_model(self) -> torch.nn.Module:
        a = self.spec.attention
        config = pythia_config(self.spec.model.size, vocab_size=1, **self.spec.model.overrides)
        return set_attention(RegressionGPTNeoX(config), a.mode, variant=a.variant, beta=a.beta)

    def micro_batches(self, step: int, rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fresh samples every step: the global batch is drawn from a generator seeded by (seed, step)."""
        t = self.spec.train
        inputs, target, _ = self.task.sample(t.global_batch, _step_generator(self.spec.seed, step))
        parts = shard(np.arange(t.global_batch), rank, world, t.micro_batch)
        return [(inputs[p], target[p]) for p in parts]

    def loss(self, model: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, target = batch
        dtype = next(model.parameters()).dtype
        return F.huber_loss(model(inputs.to(dtype)).float(), target, delta=1.0)

    def tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[1].numel()

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, target, _ = self.task.sample(
            self.spec.eval.held_out_sequences, torch.Generator().manual_seed(EVAL_SEED)
        )
        return inputs, target

    def evaluate(self, model: Any, rank: int, world: int) -> dict:
        inputs, target = self.held_out()
        dtype = next(model.parameters()).dtype
        mb = self.spec.train.micro_batch
        mine = np.arange(len(inputs))[rank::world]
        batches = [
            (mine[i : i + mb], (inputs[mine[i : i + mb]].to(dtype), target[mine[i : i + mb]]))
            for i in range(0, len(mine), mb)
        ]
        return evaluate.synthetic_loss(model, batches, len(inputs), self.task.p, self.task.lags)

    def analyse(self, weights: dict[str, torch.Tensor]) -> list[dict]:
        """Probe table for trained weights (a whole state dict) next to the untrained control of the same seed."""
        inputs = self.held_out()[0][:PROBE_SEQUENCES]
        torch.manual_seed(self.spec.seed)
        control = self.build_model().eval()
        trained = self.build_model().eval()
        trained.load_state_dict({k: v.float() for k, v in weights.items()})
        trained_r2 = evaluate.probe_r2(trained, inputs, self.task.b)
        return evaluate.probe_table(trained_r2, evaluate.probe_r2(control, inputs, self.task.b))


class ProductTask:
    """Reversed-digit products (`trainers.arithmetic`): a causal LM on 12 tokens, trained on fresh samples every
    step, with the loss on the product's digits only (the operands are random: nothing there to learn)."""

    wants_weights = False

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        d: MultiplicationData = spec.data  # type: ignore[assignment]
        self.task = arithmetic.MultiplicationTask(max_digits=d.max_digits, pad=d.pad)

    def build_model(self) -> torch.nn.Module:
        return _fresh(self.spec, self.spec.attention.mode, arithmetic.VOCAB)

    def micro_batches(self, step: int, rank: int, world: int) -> list[torch.Tensor]:
        t = self.spec.train
        ids, _ = self.task.sample(t.global_batch, _step_generator(self.spec.seed, step))
        return [ids[p] for p in shard(np.arange(t.global_batch), rank, world, t.micro_batch)]

    def loss(self, model: Any, ids: torch.Tensor) -> torch.Tensor:
        return self.task.answer_losses(model(ids, use_cache=False).logits, ids)[0].mean()

    def tokens(self, batch: torch.Tensor) -> int:
        return batch.numel()

    def evaluate(self, model: Any, rank: int, world: int) -> dict:
        n, generator = self.spec.eval.held_out_sequences, torch.Generator().manual_seed(EVAL_SEED)
        ids, lengths = self.task.sample(n, generator, held_out=True)
        mb, mine = self.spec.train.micro_batch, np.arange(len(ids))[rank::world]
        batches = [
            (mine[i : i + mb], (ids[mine[i : i + mb]], lengths[mine[i : i + mb]])) for i in range(0, len(mine), mb)
        ]
        return evaluate.multiplication_eval(model, batches, len(ids), self.task)

    def analyse(self, weights: dict[str, torch.Tensor]) -> None:
        return None


def _fresh(spec: RunSpec, mode: str, vocab_size: int | None) -> torch.nn.Module:
    """A freshly initialised causal LM of the spec's shape in attention mode `mode`."""
    a = spec.attention
    return build_model(
        spec.model.size, attention=mode, variant=a.variant, beta=a.beta, vocab_size=vocab_size, **spec.model.overrides
    )


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one optimizer step's fresh samples: seeded by (seed, step), so both arms draw the same."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def make_task(spec: RunSpec) -> Task:
    kinds = {"synthetic": DpTask, "multiplication": ProductTask}
    return kinds.get(spec.data.kind, TextTask)(spec)

"""Multiplication with filler positions: the data, the spec's checks, the loss and exact match."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainers.arithmetic import EQUALS, TIMES, MultiplicationTask, is_held_out
from trainers.spec import RunSpec, SpecError, parse_spec
from trainers.tasks import make_task


def _number(digits: torch.Tensor) -> int:
    return int(sum(int(d) * 10**i for i, d in enumerate(digits.tolist())))


@pytest.mark.parametrize("max_digits,pad", [(1, 1), (3, 3), (3, 8), (5, 10)])
def test_sequences_are_reversed_padded_products(max_digits, pad):
    task = MultiplicationTask(max_digits=max_digits, pad=pad)
    ids, lengths = task.sample(256, torch.Generator().manual_seed(0))
    assert ids.shape == (256, task.seq_len) and task.seq_len == 2 * pad + 2 + 2 * max_digits
    assert (ids[:, pad] == TIMES).all() and (ids[:, task.answer_start] == EQUALS).all()
    for row, (la, lb) in zip(ids, lengths.tolist(), strict=True):
        a, b, c = _number(row[:pad]), _number(row[pad + 1 : 2 * pad + 1]), _number(row[task.answer_start + 1 :])
        assert a * b == c
        assert len(str(a)) == la and len(str(b)) == lb  # the operand lengths the accuracy is broken down by
        assert (row[la:pad] == 0).all()  # the padding: zeros after the most significant digit (the fillers)
    assert set(lengths.flatten().tolist()) == set(range(1, max_digits + 1))


def test_held_out_problems_are_never_trained_on():
    """A tenth of the problems (a, b), chosen by a hash of the pair, are held out: no training sample holds one,
    every held-out sample does (with 2-digit operands there are only 10⁴ problems: sampling alone would overlap)."""
    task = MultiplicationTask(max_digits=2, pad=2)
    g = torch.Generator().manual_seed(0)
    a = torch.arange(100).repeat_interleave(100)
    everything = is_held_out(torch.stack([a, torch.arange(100).repeat(100)], 1))
    assert 0.08 < everything.float().mean() < 0.12  # about a tenth of the 10⁴ problems
    train, _ = task.sample(20_000, g)
    held, _ = task.sample(2_000, g, held_out=True)

    def problems(ids: torch.Tensor) -> set[tuple[int, int]]:
        return {(_number(r[:2]), _number(r[3:5])) for r in ids}

    assert not problems(train) & problems(held)
    assert len(problems(train)) > 5_000  # (a quarter of the draws are 2×2 problems, 8,100 of them: not all are drawn)


def test_the_spec_checks_the_sequence_length_and_vocabulary():
    def refused(doc: dict) -> str:
        with pytest.raises(SpecError) as e:
            parse_spec(json.dumps(doc))
        return str(e.value)

    data = {"kind": "multiplication", "max_digits": 3, "pad": 8}
    assert RunSpec.model_validate({"data": data}).train.seq_len == 24  # where not given, the data's
    wrong = {"data": data, "train": {"seq_len": 64}}
    assert "train.seq_len" in refused(wrong) and "= 24" in refused(wrong)
    assert "data.pad" in refused({"data": {**data, "pad": 2}, "train": {"seq_len": 12}})
    assert "data" in refused({"data": data, "train": {"seq_len": 24}, "model": {"vocab_size": 50}})
    assert RunSpec.model_validate({"data": data, "train": {"seq_len": 24}}).data.seq_len == 24


def _spec(layers: int, width: int, pad: int, batch: int, held_out: int) -> RunSpec:
    """2-digit operands padded to `pad`, on a small GPT-NeoX."""
    return RunSpec.model_validate(
        {
            "model": {"overrides": {"num_hidden_layers": layers, "hidden_size": width, "num_attention_heads": 1}},
            "data": {"kind": "multiplication", "max_digits": 2, "pad": pad},
            "train": {"global_batch": batch, "micro_batch": batch},
            "eval": {"held_out_sequences": held_out},
        }
    )


def test_exact_match_is_greedy_decoding():
    """All product digits argmax-correct under teacher forcing iff greedy decoding writes the product."""
    task = make_task(_spec(layers=1, width=32, pad=3, batch=32, held_out=64))
    torch.manual_seed(0)
    model = task.build_model().eval()
    ids, _ = task.task.sample(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, correct = task.task.answer_losses(model(ids).logits, ids)
        start = task.task.answer_start + 1
        out = ids[:, :start]
        while out.shape[1] < ids.shape[1]:
            out = torch.cat([out, model(out).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(correct.all(1), (out == ids).all(1))


def test_a_short_run_learns():
    """The task, its loss and its evaluation in a few hundred steps: the loss falls, one-digit products start to
    come out right, and the evaluation breaks exact match down by operand lengths."""
    task = make_task(_spec(layers=2, width=64, pad=2, batch=64, held_out=512))
    torch.manual_seed(0)
    model = task.build_model()
    before = task.evaluate(model.eval(), 0, 1)
    opt = torch.optim.AdamW(model.train().parameters(), lr=3e-3)
    for step in range(300):
        (ids,) = task.micro_batches(step, 0, 1)
        opt.zero_grad()
        task.loss(model, ids).backward()
        opt.step()
    result = task.evaluate(model.eval(), 0, 1)
    assert set(result["accuracy_by_length"]) == {"1×1", "1×2", "2×1", "2×2"}
    assert result["loss"] < before["loss"] - 0.5
    assert result["accuracy_by_length"]["1×1"] > 0.2 > before["accuracy_by_length"]["1×1"]
    assert len(result["per_position"]) == 4 and len(result["per_sequence"]) == 512
    assert sum(result["count_by_length"].values()) == 512
    assert result["accuracy_hardest"] == result["accuracy_by_length"]["2×2"]
    assert np.isclose(result["loss"], np.mean(result["per_position"]))


def test_the_docs_count_the_held_out_split_as_it_is():
    """docs/results.md and docs/science.md describe the multiplication-cpu evaluation set: its problems, its mirrors
    in training, and its draws (the eval seed's 2,048 held-out samples at 2 digits)."""
    from pathlib import Path

    from trainers.tasks import EVAL_SEED

    root = Path(__file__).resolve().parents[2]
    a = torch.arange(100).repeat_interleave(100)
    b = torch.arange(100).repeat(100)
    held = {(int(x), int(y)) for x, y, h in zip(a, b, is_held_out(torch.stack([a, b], 1)), strict=True) if h}
    mirrored = sum((y, x) not in held for x, y in held)
    ids, lengths = MultiplicationTask(max_digits=2, pad=2).sample(
        2048, torch.Generator().manual_seed(EVAL_SEED), held_out=True
    )
    drawn = [((_number(r[:2]), _number(r[3:5])), tuple(n.tolist())) for r, n in zip(ids, lengths, strict=True)]
    one = [p for p, n in drawn if n == (1, 1)]
    two = [p for p, n in drawn if n == (2, 2)]
    results = " ".join((root / "docs" / "results.md").read_text().split())
    science = " ".join((root / "docs" / "science.md").read_text().split())
    assert f"for {mirrored:,} of the {len(held):,} held-out pairs (a, b), the pair (b, a)" in results
    assert f"({mirrored:,} of {len(held):,} at 2 digits)" in science
    assert (
        f"cover {len({p for p, _ in drawn}):,} distinct problems: {len(set(one))} of them make up the {len(one):,} "
        f"draws of the 1×1 bucket" in results
    )
    assert f"and {len(set(two)):,} the {len(two):,} draws of the 2×2 bucket" in results

"""Multiplication with filler positions (the paper's appendix, docs/science.md): reversed-digit products, each
operand zero-padded to `pad` digits, the product padded to 2 · max_digits.

A sequence is `a₀ … a_{pad−1} * b₀ … b_{pad−1} = c₀ … c_{2·max_digits−1}`, least significant digit first. With
pad > max_digits the operands end in zeros that carry no information: positions where a vanilla model can compute
ahead for the product (the loss there reaches them through attention), and a myopic one cannot. Evaluation is on
problems never trained on (`is_held_out`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TIMES, EQUALS = 10, 11  # token ids; 0-9 are the digits
VOCAB = 12


@dataclass(frozen=True)
class MultiplicationTask:
    max_digits: int = 3
    pad: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.max_digits <= self.pad:
            raise ValueError(f"need 1 ≤ max_digits ≤ pad, not max_digits={self.max_digits}, pad={self.pad}")

    @property
    def seq_len(self) -> int:
        return 2 * self.pad + 2 + 2 * self.max_digits

    @property
    def answer_start(self) -> int:
        """The position of '=': the first position whose next token is a product digit."""
        return 2 * self.pad + 1

    def sample(
        self, batch: int, generator: torch.Generator, held_out: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, T), operand digit counts (B, 2)), drawn from `generator` alone. Each operand's length is uniform
        in 1..max_digits and its value uniform among numbers of that many digits (0-9 for one digit). Training
        samples never hold a held-out problem (`is_held_out`), and held-out samples hold nothing else."""
        lengths, operands = torch.empty(0, 2, dtype=torch.long), torch.empty(0, 2, dtype=torch.long)
        while len(operands) < batch:  # rejection: a tenth of the problems are held out
            draw = 2 * batch if not held_out else 20 * batch
            n = torch.randint(1, self.max_digits + 1, (draw, 2), generator=generator)
            low = torch.where(n == 1, 0, 10 ** (n - 1))
            u = torch.rand(draw, 2, generator=generator, dtype=torch.float64)
            values = low + (u * (10**n - low)).long()
            keep = is_held_out(values) == held_out
            lengths, operands = torch.cat([lengths, n[keep]]), torch.cat([operands, values[keep]])
        lengths, operands = lengths[:batch], operands[:batch]
        product = operands[:, 0] * operands[:, 1]
        ids = torch.cat(
            [
                _digits(operands[:, 0], self.pad),
                torch.full((batch, 1), TIMES),
                _digits(operands[:, 1], self.pad),
                torch.full((batch, 1), EQUALS),
                _digits(product, 2 * self.max_digits),
            ],
            dim=1,
        )
        return ids, lengths

    def answer_losses(self, logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy per product digit (B, 2 · max_digits) and whether each is the argmax (teacher forcing: all
        correct is exactly greedy decoding's exact match, since greedy's first wrong digit would be one here)."""
        s = self.answer_start
        pred = logits[:, s:-1].float()
        target = ids[:, s + 1 :]
        ce = torch.nn.functional.cross_entropy(pred.transpose(1, 2), target, reduction="none")
        return ce, pred.argmax(-1) == target


HELD_OUT_EVERY = 10  # one problem (a, b) in ten, by a hash of the pair: scored in evaluation, never trained on


def is_held_out(operands: torch.Tensor) -> torch.Tensor:
    """Whether each problem (a, b) (rows of `operands`) is held out: splitmix64 of a · 10⁹ + b, modulo 10. The
    split is by problem, not by sample: with 2-digit operands there are only 10⁴ problems, and training draws each
    many times, so a held-out set drawn like the training samples would be memorised."""
    x = operands[:, 0].numpy().astype(np.uint64) * np.uint64(10**9) + operands[:, 1].numpy().astype(np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as splitmix64 intends
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return torch.from_numpy(x % np.uint64(HELD_OUT_EVERY) == 0)


def _digits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Decimal digits, least significant first, zero-padded to `width`: (B,) → (B, width)."""
    powers = 10 ** torch.arange(width, dtype=torch.long)
    return (values[:, None] // powers) % 10


def operand_lengths_key(lengths: np.ndarray) -> list[str]:
    """'a×b' labels of operand digit counts, e.g. '3×2'."""
    return [f"{a}×{b}" for a, b in lengths.tolist()]

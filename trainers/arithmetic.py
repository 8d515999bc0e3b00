"""Multiplication with filler positions (the paper's appendix, docs/science.md): reversed-digit products, each
operand zero-padded to `pad` digits, the product padded to 2 · max_digits.

A sequence is `a₀ … a_{pad−1} * b₀ … b_{pad−1} = c₀ … c_{2·max_digits−1}`, least significant digit first. With
pad > max_digits the operands end in zeros that carry no information: positions where a vanilla model can compute
ahead for the product (the loss there reaches them through attention), and a myopic one cannot.
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

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, T), operand digit counts (B, 2)), drawn from `generator` alone. Each operand's length is uniform
        in 1..max_digits and its value uniform among numbers of that many digits (0-9 for one digit)."""
        lengths = torch.randint(1, self.max_digits + 1, (batch, 2), generator=generator)
        low = torch.where(lengths == 1, 0, 10 ** (lengths - 1))
        u = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
        operands = low + (u * (10**lengths - low)).long()
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


def _digits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Decimal digits, least significant first, zero-padded to `width`: (B,) → (B, width)."""
    powers = 10 ** torch.arange(width, dtype=torch.long)
    return (values[:, None] // powers) % 10


def operand_lengths_key(lengths: np.ndarray) -> list[str]:
    """'a×b' labels of operand digit counts, e.g. '3×2'."""
    return [f"{a}×{b}" for a, b in lengths.tolist()]

"""The synthetic task D_p of docs/science.md and the GPT-NeoX regression model that learns it.

Inputs (x_n, z_n): x_n ~ N(0, 1), z_n ~ Bernoulli(p). Target y_n = z_n · Σ_{i=1..lags} sin(b·x_{n−i}) + (1 − z_n)·x_n
(x_j = 0 for j < 0). sin(b·x_n) is useless at n and needed at n+1..n+lags: the task forces pre-caching, so a
myopic model can do no better on the z = 1 positions than predicting zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXModel


@dataclass(frozen=True)
class SyntheticTask:
    p: float = 0.5
    b: float = 10.0  # sine frequency: the paper's 10; 3 is learnable quickly on a CPU
    lags: int = 10
    seq_len: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"p must lie in (0, 1], not {self.p!r}")
        if self.lags < 1 or self.seq_len < 2:
            raise ValueError("lags must be ≥ 1 and seq_len ≥ 2")

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs (B, T, 2), targets (B, T), z (B, T)), drawn from `generator` alone: same seed, same batches."""
        x = torch.randn(batch, self.seq_len, generator=generator)
        z = (torch.rand(batch, self.seq_len, generator=generator) < self.p).float()
        c = F.pad(torch.sin(self.b * x).cumsum(1), (1, 0))  # c[:, n] = Σ_{j<n} sin(b·x_j)
        lagged = c[:, :-1] - F.pad(c, (self.lags, 0))[:, : self.seq_len]  # Σ_{i=1..lags} sin(b·x_{n−i})
        y = z * lagged + (1 - z) * x
        return torch.stack([x, z], dim=-1), y, z


class RegressionGPTNeoX(nn.Module):
    """Linear (2 → d) in, GPT-NeoX layers (myopic-capable), linear (d → 1) out."""

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.config = config
        self.inp = nn.Linear(2, config.hidden_size)
        self.backbone = GPTNeoXModel(config)
        self.out = nn.Linear(config.hidden_size, 1)

    def forward(self, inputs: torch.Tensor, output_hidden_states: bool = False):
        h = self.backbone(inputs_embeds=self.inp(inputs), use_cache=False, output_hidden_states=output_hidden_states)
        pred = self.out(h.last_hidden_state).squeeze(-1)
        return (pred, h.hidden_states) if output_hidden_states else pred

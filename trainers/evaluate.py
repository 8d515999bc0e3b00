"""Held-out evaluation: cross-entropy (text) or Huber/p (D_p), mean and per position, summed over all ranks; and
linear probes of sin(b·x_{n−i}) from every layer's hidden states, fit on one half of the held-out set and scored
(R²) on the other, next to the same probe on the untrained model (the control)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

PROBE_LAGS = range(0, 11)


def headline(result: dict) -> tuple[str, float]:
    """The loss a gap is measured on: Huber/p for D_p, cross-entropy for text."""
    key = "huber_over_p" if "huber_over_p" in result else "loss"
    return key, result[key]


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


Batches = list[tuple[np.ndarray, Any]]  # (held-out indices of the batch's sequences, the batch)


def _per_sequence(n: int, parts: list[tuple[np.ndarray, torch.Tensor]]) -> list[float]:
    """Every held-out sequence's mean loss, by its index, gathered from all ranks (each fills its own indices)."""
    out = torch.zeros(n, dtype=torch.float64)
    for idx, losses in parts:
        out[torch.as_tensor(idx, dtype=torch.long)] = losses
    # 6 decimals: paired differences are taken between runs; the document stays a few bytes per sequence
    return [round(x, 6) for x in _all_sum(out).tolist()]


# The most logits evaluation holds at once (about 1.6 GB with their fp32 copy and log-softmax): a micro-batch sized
# for training with the fused loss (no logits) would not fit as a whole.
EVAL_LOGITS = 2**27


def _logit_rows(seq_len: int, model: Any) -> int:
    """Sequences per forward in evaluation (a DeepSpeed engine holds the model as `.module`)."""
    vocab = getattr(model, "module", model).config.vocab_size
    return max(1, EVAL_LOGITS // (seq_len * vocab))


def _token_losses(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per prediction, (B, T − 1), float64."""
    logits = model(ids, use_cache=False).logits.float()
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").double()


@torch.no_grad()
def text_loss(model: torch.nn.Module, batches: Batches, n: int, seq_len: int) -> dict:
    """Held-out next-token cross-entropy: mean, per position, and per sequence (for paired intervals between the
    arms of a pair, which see the same `n` held-out sequences), over this rank's batches and all ranks'."""
    sums = torch.zeros(seq_len - 1, dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.float64)
    parts = []
    for idx, ids in batches:
        ce = torch.cat([_token_losses(model, part) for part in ids.split(_logit_rows(ids.shape[1], model))])
        sums += ce.sum(0).cpu()
        count += ids.shape[0]
        parts.append((idx, ce.mean(1).cpu()))
    return _cross_entropy(sums, count, n, parts)


def _cross_entropy(sums: torch.Tensor, count: torch.Tensor, n: int, parts: list) -> dict:
    """Mean, per position and per sequence cross-entropy from this rank's sums, over all ranks."""
    _all_sum(sums), _all_sum(count)
    per_position = (sums / count).tolist()
    return {
        "loss": float(np.mean(per_position)),
        "per_position": per_position,
        "per_sequence": _per_sequence(n, parts),
        "sequences": int(count.item()),
    }


def trivial_myopic_prediction(inputs: torch.Tensor) -> torch.Tensor:
    """The baseline a model without pre-caching can reach on D_p: 0 where z = 1 (the window sum needs sines of past
    inputs that were never computed), x_n where z = 0 (the current input: no past needed)."""
    x, z = inputs[..., 0], inputs[..., 1]
    return (1 - z) * x


@torch.no_grad()
def synthetic_loss(model: torch.nn.Module, batches: Batches, n: int, p: float, lags: int) -> dict:
    """Held-out Huber (delta 1) and Huber/p: mean, per position and per sequence (Huber/p); and the same for the
    trivial myopic baseline on the same sequences, with the model's loss as a fraction of it, over all positions
    and over positions ≥ `lags` (where the whole window exists)."""
    sums, base_sums, count, parts = None, None, torch.zeros(1, dtype=torch.float64), []
    for idx, (inputs, target) in batches:
        h = F.huber_loss(model(inputs).float(), target, delta=1.0, reduction="none").double()  # (B, T)
        base = F.huber_loss(trivial_myopic_prediction(inputs.float()), target, delta=1.0, reduction="none").double()
        sums = h.sum(0).cpu() if sums is None else sums + h.sum(0).cpu()
        base_sums = base.sum(0).cpu() if base_sums is None else base_sums + base.sum(0).cpu()
        count += inputs.shape[0]
        parts.append((idx, h.mean(1).cpu() / p))
    _all_sum(sums), _all_sum(base_sums), _all_sum(count)
    per_position, baseline = (sums / count / p).numpy(), (base_sums / count / p).numpy()
    huber = float(per_position.mean()) * p
    past = slice(min(lags, len(per_position) - 1), None)
    return {
        "loss": huber,
        "huber": huber,
        "huber_over_p": huber / p,
        "per_position": per_position.tolist(),
        "per_sequence": _per_sequence(n, parts),
        "huber_over_p_past_window": float(per_position[past].mean()),
        "baseline_huber_over_p": float(baseline.mean()),
        "baseline_huber_over_p_past_window": float(baseline[past].mean()),
        "baseline_per_position": baseline.tolist(),
        "fraction_of_baseline": float(per_position.mean() / baseline.mean()),
        "fraction_of_baseline_past_window": float(per_position[past].mean() / baseline[past].mean()),
    }


@torch.no_grad()
def multiplication_eval(model: torch.nn.Module, batches: Batches, n: int, task: Any) -> dict:
    """Held-out cross-entropy on the product's digits (mean, per product digit, per sequence) and exact-match
    accuracy: overall, by operand digit counts ('3×2': a 3-digit times a 2-digit operand; with the count of each),
    and on the hardest, max_digits × max_digits (the paper's headline)."""
    from trainers.arithmetic import operand_lengths_key

    width = 2 * task.max_digits
    sums, count, parts = torch.zeros(width, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), []
    right: dict[str, list[float]] = {}
    for idx, (ids, lengths) in batches:
        ce, correct = task.answer_losses(model(ids, use_cache=False).logits, ids)
        sums += ce.double().sum(0).cpu()
        count += ids.shape[0]
        parts.append((idx, ce.double().mean(1).cpu()))
        for key, ok in zip(operand_lengths_key(lengths.numpy()), correct.all(1).tolist(), strict=True):
            right.setdefault(key, [0.0, 0.0])
            right[key][0] += ok
            right[key][1] += 1
    keys = [f"{a}×{b}" for a in range(1, task.max_digits + 1) for b in range(1, task.max_digits + 1)]
    tally = torch.tensor([right.get(k, [0.0, 0.0]) for k in keys], dtype=torch.float64)  # (keys, [right, seen])
    _all_sum(tally)
    return {
        **_cross_entropy(sums, count, n, parts),
        "accuracy": float(tally[:, 0].sum() / tally[:, 1].sum()),
        "accuracy_by_length": {k: float(r / s) if s else None for k, (r, s) in zip(keys, tally.tolist(), strict=True)},
        "count_by_length": {k: int(s) for k, (_, s) in zip(keys, tally.tolist(), strict=True)},
        "accuracy_hardest": float(tally[-1, 0] / tally[-1, 1]) if tally[-1, 1] else None,
    }


@torch.no_grad()
def probe_r2(model: torch.nn.Module, inputs: torch.Tensor, b: float, lags=PROBE_LAGS) -> np.ndarray:
    """Held-out R² of a ridge probe for sin(b·x_{n−i}), shape (layers + 1, lags): hidden states after the input
    projection (row 0) and after each layer; positions n ≥ max lag; fit on the first half of the sequences."""
    from sklearn.linear_model import Ridge  # here: a second of import that text runs never need
    from sklearn.metrics import r2_score

    _, hidden = model(inputs, output_hidden_states=True)
    x = inputs[..., 0].double()
    start = max(lags)
    half = inputs.shape[0] // 2
    out = np.zeros((len(hidden), len(lags)))
    for li, h in enumerate(hidden):
        feats = h[:, start:].double()
        for ci, lag in enumerate(lags):
            target = torch.sin(b * x[:, start - lag : x.shape[1] - lag])
            fx, fy = feats[:half].flatten(0, 1).numpy(), target[:half].flatten().numpy()
            tx, ty = feats[half:].flatten(0, 1).numpy(), target[half:].flatten().numpy()
            out[li, ci] = r2_score(ty, Ridge(alpha=1e-3).fit(fx, fy).predict(tx))
    return out


def probe_table(trained: np.ndarray, control: np.ndarray, lags=PROBE_LAGS) -> list[dict]:
    """Rows per layer and lag: R² trained, R² control (untrained model), and their difference (selectivity)."""
    return [
        {
            "layer": li,
            "lag": lag,
            "r2": float(trained[li, ci]),
            "r2_control": float(control[li, ci]),
            "selectivity": float(trained[li, ci] - control[li, ci]),
        }
        for li in range(trained.shape[0])
        for ci, lag in enumerate(lags)
    ]

"""The synthetic task D_p: the targets, the sampler, the model both arms start from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from services.planner import preset_run
from trainers.evaluate import synthetic_loss, trivial_myopic_prediction
from trainers.synthetic import SyntheticTask
from trainers.tasks import DpTask


def test_targets_follow_the_definition():
    task = SyntheticTask(p=0.3, b=10.0, lags=10, seq_len=24)
    inputs, y, z = task.sample(3, torch.Generator().manual_seed(0))
    x = inputs[..., 0]
    assert torch.equal(inputs[..., 1], z) and set(z.unique().tolist()) <= {0.0, 1.0}
    for row in range(3):
        for n in range(24):
            lagged = sum(math.sin(10.0 * x[row, n - i].item()) for i in range(1, 11) if n - i >= 0)
            want = lagged if z[row, n] else x[row, n].item()
            assert y[row, n].item() == pytest.approx(want, abs=1e-5)


def test_predicting_zero_scores_about_1_26_at_p_1():
    _, y, _ = SyntheticTask(p=1.0, b=10.0).sample(4096, torch.Generator().manual_seed(0))
    huber = torch.nn.functional.huber_loss(torch.zeros_like(y), y, delta=1.0)
    assert huber.item() == pytest.approx(1.257, abs=0.02)  # docs/science.md


def test_bad_task_parameters_are_named():
    with pytest.raises(ValueError, match="p must"):
        SyntheticTask(p=0.0)
    with pytest.raises(ValueError, match="lags"):
        SyntheticTask(lags=0)


def test_both_arms_start_from_the_same_weights():
    base = preset_run("synthetic-cpu")
    models = []
    for arm in ("vanilla", "myopic"):
        torch.manual_seed(base.seed)  # what every worker does before building (trainers.loop)
        models.append(DpTask(base.arm(arm)).build_model().state_dict())
    assert models[0].keys() == models[1].keys() and all(torch.equal(models[0][k], models[1][k]) for k in models[0])


class Predicts(torch.nn.Module):
    """A stand-in model that returns a fixed function of its inputs."""

    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, inputs):
        return self.f(inputs)


@pytest.mark.parametrize(
    ("p", "level_all", "level_past", "zero_over_baseline"),
    [(1.0, 1.255, 1.352, 1.0), (0.3, 1.253, 1.349, 1.79), (0.1, 1.260, 1.358, 4.03)],
)
def test_the_trivial_myopic_baseline_is_computed_with_every_evaluation(p, level_all, level_past, zero_over_baseline):
    """The baseline (0 where z = 1, x_n where z = 0): its Huber/p is about 1.25 at every p (1.35 past the window),
    where predicting zero everywhere scores p-dependent levels (2.24 at p = 0.3, 5.08 at p = 0.1) because it misses
    the trivial z = 0 targets too. A model at the baseline scores a fraction of 1 exactly."""
    task = SyntheticTask(p=p, b=10.0, lags=10, seq_len=64)
    inputs, target, _ = task.sample(4000, torch.Generator().manual_seed(0))
    batches = [(np.arange(i, i + 500), (inputs[i : i + 500], target[i : i + 500])) for i in range(0, 4000, 500)]
    at_baseline = synthetic_loss(Predicts(trivial_myopic_prediction), batches, 4000, p, task.lags)
    assert at_baseline["baseline_huber_over_p"] == pytest.approx(level_all, abs=0.015)
    assert at_baseline["baseline_huber_over_p_past_window"] == pytest.approx(level_past, abs=0.015)
    assert at_baseline["fraction_of_baseline"] == pytest.approx(1.0, abs=1e-12)
    assert at_baseline["fraction_of_baseline_past_window"] == pytest.approx(1.0, abs=1e-12)
    zeros = synthetic_loss(Predicts(lambda x: torch.zeros_like(x[..., 0])), batches, 4000, p, task.lags)
    assert zeros["baseline_per_position"] == at_baseline["baseline_per_position"]  # the data's, not the model's
    assert zeros["fraction_of_baseline"] == pytest.approx(zero_over_baseline, abs=0.02)

"""The synthetic task D_p: the targets, the sampler, the model both arms start from."""

from __future__ import annotations

import math

import pytest
import torch

from services.planner import preset_run
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

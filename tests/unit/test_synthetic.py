"""The synthetic task D_p and the matched pair on it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from trainers.synthetic import SyntheticTask
from trainers.synthetic_pair import ArmConfig, check_matched, pair, run_pair, train_arm


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


def test_same_seed_same_batches():
    task = SyntheticTask()
    a = task.sample(4, torch.Generator().manual_seed(7))
    b = task.sample(4, torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_bad_task_parameters_are_named():
    with pytest.raises(ValueError, match="p must"):
        SyntheticTask(p=0.0)
    with pytest.raises(ValueError, match="lags"):
        SyntheticTask(lags=0)


def test_pair_differs_only_in_attention():
    vanilla, myopic = pair(ArmConfig(steps=5))
    assert (vanilla.attention, myopic.attention) == ("vanilla", "myopic")
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        check_matched(vanilla, replace(myopic, lr=1e-4))
    with pytest.raises(ValueError, match="one vanilla and one myopic"):
        check_matched(vanilla, vanilla)


def test_arms_start_from_the_same_weights_and_see_the_same_batches(monkeypatch):
    """Record what each arm is given: the initial state and every batch, token for token."""
    import trainers.synthetic_pair as sp

    seen: dict[str, list] = {"vanilla": [], "myopic": []}
    arm = {"name": None}
    real_sample, real_build = SyntheticTask.sample, sp.RegressionGPTNeoX

    def sample(self, batch, generator):
        out = real_sample(self, batch, generator)
        seen[arm["name"]].append(out[0].clone())
        return out

    def build(config):
        model = real_build(config)
        seen[arm["name"]].append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(SyntheticTask, "sample", sample)
    monkeypatch.setattr(sp, "RegressionGPTNeoX", build)
    for config in pair(ArmConfig(steps=4, eval_sequences=8)):
        arm["name"] = config.attention
        train_arm(config)
    v, m = seen["vanilla"], seen["myopic"]
    assert len(v) == len(m) == 6  # initial state, 4 batches, the held-out set
    assert all(torch.equal(v[0][k], m[0][k]) for k in v[0])
    assert all(torch.equal(a, b) for a, b in zip(v[1:], m[1:], strict=True))


@pytest.mark.slow
def test_short_pair_separates_the_arms():
    results = run_pair(ArmConfig(task=SyntheticTask(p=0.5, b=3.0), steps=300, variant="kv", eval_sequences=512))
    vanilla, myopic = results["vanilla"]["huber_over_p"], results["myopic"]["huber_over_p"]
    assert vanilla < 0.6 and myopic > 0.9, (vanilla, myopic)

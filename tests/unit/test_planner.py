"""The planner: sweep requests into matched pairs of run specs, resources per size read from data."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.planner import SweepRequest, plan, resources
from trainers.spec import check_matched


def request(**fields):
    return SweepRequest.model_validate({"name": "ladder", "sizes": ["14m", "70m"], "seeds": [0, 1], **fields})


def test_one_pair_per_size_and_seed_differing_only_in_attention():
    pairs = plan(request(myopic={"variant": "kv", "beta": 0.2}), sweep_id="sw-1")
    assert [(p.size, p.seed) for p in pairs] == [("14m", 0), ("14m", 1), ("70m", 0), ("70m", 1)]
    for p in pairs:
        v, m = p.runs["vanilla"], p.runs["myopic"]
        check_matched(v, m)
        assert (m.attention.variant, m.attention.beta) == ("kv", 0.2)
        assert v.name == f"sw-1-{p.size}-s{p.seed}-vanilla" and v.seed == p.seed
        assert v.lr == {"14m": 1e-3, "70m": 1e-3}[p.size]
    assert len({p.runs["myopic"].config_hash() for p in pairs}) == 4


def test_resources_come_from_the_table():
    assert resources("2.8b", "gpu").workers == 8 and resources("2.8b", "gpu").zero_stage == 2
    assert resources("14m", "gpu").gpus_per_worker == 1
    assert resources("1b", "cpu").gpus_per_worker == 0
    big = plan(request(sizes=["2.8b"], seeds=[0], train={"batch_size": 64}), sweep_id="s", profile="gpu")[0]
    assert big.runs["myopic"].resources.workers == 8 and big.runs["myopic"].train.micro_batch == 8
    with pytest.raises(ValueError, match="no resource profile 'tpu'"):
        resources("14m", "tpu")


def test_finetune_and_synthetic_and_single_arm():
    ft = plan(request(protocol="finetune", sizes=["410m"], seeds=[0]), sweep_id="s")[0].runs["vanilla"]
    assert ft.protocol.checkpoint == "EleutherAI/pythia-410m"
    syn = plan(request(dataset={"kind": "synthetic", "p": 0.3, "b": 3}, seeds=[0]), sweep_id="s")[0]
    assert syn.runs["myopic"].data.p == 0.3 and syn.runs["myopic"].model.overrides["hidden_act"] == "relu"
    only = plan(request(arms=["myopic"]), sweep_id="s")[0]
    assert list(only.runs) == ["myopic"]


@pytest.mark.parametrize(
    "fields,where",
    [
        ({"sizes": ["3b"]}, "sizes"),
        ({"sizes": []}, "sizes"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"arms": ["vanilla", "sideways"]}, "arms"),
        ({"dataset": {"kind": "synthetic", "p": 1.5}}, "dataset.synthetic.p"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"myopic": {"beta": -1}}, "myopic.beta"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_requests_name_the_field(fields, where):
    with pytest.raises(ValidationError) as e:
        request(**fields)
    locs = [".".join(str(p) for p in err["loc"]) for err in e.value.errors()]
    assert any(loc.startswith(where) for loc in locs), locs

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


def test_a_preset_fills_what_the_request_leaves_out():
    demo = SweepRequest.model_validate({"preset": "demo"})
    assert demo.name == "demo-text" and demo.sizes == ["14m", "31m"] and demo.dataset.kind == "text"
    mine = SweepRequest.model_validate({"preset": "demo", "name": "mine", "seeds": [3, 4], "train": {"steps": 7}})
    assert (mine.name, mine.seeds, mine.train.steps) == ("mine", [3, 4], 7)
    assert mine.train.batch_size == demo.train.batch_size  # sections merge key by key
    other_kind = SweepRequest.model_validate({"preset": "demo", "dataset": {"kind": "synthetic", "p": 0.3}})
    assert other_kind.dataset.kind == "synthetic" and other_kind.dataset.p == 0.3  # replaced, not merged


def test_paper_presets():
    paper = SweepRequest.model_validate({"preset": "pythia-paper"})
    assert paper.sizes == ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b"]
    (pair,) = plan(paper.model_copy(update={"sizes": ["1.4b"]}), sweep_id="s", profile="gpu")
    spec = pair.runs["myopic"]
    assert spec.protocol.checkpoint == "EleutherAI/pythia-1.4b" and spec.data.kind == "hf"
    assert spec.lr == pytest.approx(0.4 * 2e-4) and spec.train.precision == "fp16"
    assert spec.train.global_batch * spec.train.steps * spec.train.seq_len == pytest.approx(640e6, rel=1e-3)
    dp = plan(SweepRequest.model_validate({"preset": "synthetic-paper"}), sweep_id="s")
    assert len(dp) == 5 and dp[0].runs["myopic"].model.overrides["hidden_size"] == 128
    assert dp[0].runs["myopic"].data.b == 10.0 and dp[0].runs["myopic"].train.global_batch == 512


def test_an_unknown_preset_is_named():
    with pytest.raises(ValidationError, match="unknown preset 'nope'"):
        SweepRequest.model_validate({"preset": "nope"})

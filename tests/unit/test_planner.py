"""The planner: a run template plus axes into matched pairs of RunSpecs; presets; errors named by RunSpec path."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cluster.resources import placement
from services.errors import InvalidRequest
from services.planner import SweepRequest, plan, preset_run
from services.presets import PRESETS
from trainers.spec import check_matched, error_path


def request(**fields):
    return SweepRequest.model_validate({"name": "ladder", "sizes": ["14m", "70m"], "seeds": [0, 1], **fields})


def errors_of(body: dict, profile: str = "cpu") -> list[str]:
    """The fields a request is refused for, from the request model or from the planner."""
    try:
        plan(SweepRequest.model_validate({"name": "x", "sizes": ["14m"], "seeds": [0], **body}), profile=profile)
    except ValidationError as e:
        return [error_path(err) for err in e.errors()]  # as the API and the CLI name them
    except InvalidRequest as e:
        return [field for field, _ in e.errors]
    return []


def test_one_pair_per_size_and_seed_differing_only_in_attention():
    pairs = plan(request(run={"attention": {"variant": "kv", "beta": 0.2}}))
    assert [(p.size, p.seed) for p in pairs] == [("14m", 0), ("14m", 1), ("70m", 0), ("70m", 1)]
    for p in pairs:
        v, m = p.runs["vanilla"], p.runs["myopic"]
        check_matched(v, m)
        assert (m.attention.variant, m.attention.beta) == ("kv", 0.2) and v.seed == p.seed
        assert v.model.size == p.size and v.optimizer.lr == {"14m": 1e-3, "70m": 1e-3}[p.size]
    assert len({p.runs["myopic"].config_hash() for p in pairs}) == 4


def test_a_bigram_reference_arm_is_matched_to_the_pair():
    pairs = plan(request(arms=["vanilla", "myopic", "bigram"]))
    for p in pairs:
        assert list(p.runs) == ["vanilla", "myopic", "bigram"]
        check_matched(*p.runs.values())
        assert p.runs["bigram"].pair_hash() == p.runs["vanilla"].pair_hash()
    assert "arms" in errors_of({"arms": ["vanilla", "myopic", "bigram", "bigram"]})


def test_resources_and_micro_batch_come_from_the_profile():
    assert placement("2.8b", "gpu").resources["workers"] == 8 and placement("2.8b", "gpu").max_micro_batch == 64
    big = plan(request(sizes=["2.8b"], seeds=[0], run={"train": {"global_batch": 6144}}), profile="gpu")[0]
    spec = big.runs["myopic"]
    assert spec.resources.workers == 8 and spec.train.micro_batch == 64 and spec.grad_accum == 12
    # what the template sets wins over the profile; the micro batch follows the workers
    mine = plan(
        request(sizes=["2.8b"], seeds=[0], run={"resources": {"workers": 4}, "train": {"global_batch": 64}}),
        profile="gpu",
    )[0].runs["vanilla"]
    assert mine.resources.workers == 4 and mine.train.micro_batch == 16 and mine.grad_accum == 1
    with pytest.raises(ValueError, match="no resource profile 'tpu'"):
        placement("14m", "tpu")


def test_learning_rate_rule():
    assert plan(request(lr_scale=0.4))[0].runs["vanilla"].optimizer.lr == pytest.approx(4e-4)
    by_size = plan(request(lr_scale=0.4, lr_by_size={"70m": 1.2e-4}))
    assert [p.runs["vanilla"].optimizer.lr for p in by_size] == pytest.approx([4e-4, 4e-4, 1.2e-4, 1.2e-4])
    fixed = plan(request(lr_by_size={"70m": 1.2e-4}, run={"optimizer": {"lr": 5e-5}}))
    assert {p.runs["myopic"].optimizer.lr for p in fixed} == {5e-5}


def test_finetune_checkpoint_pattern_substitutes_size_only():
    finetune = {"protocol": {"kind": "finetune", "checkpoint": "ckpts/{size}/{size.__class__}"}}
    ft = plan(request(sizes=["410m"], seeds=[0], run=finetune))
    assert ft[0].runs["vanilla"].protocol.checkpoint == "ckpts/410m/{size.__class__}"  # never a format string
    syn = plan(request(seeds=[0], run={"data": {"kind": "synthetic", "p": 0.3, "b": 3}}))[0]
    assert syn.runs["myopic"].data.p == 0.3
    only = plan(request(arms=["myopic"], unpaired=True))[0]
    assert list(only.runs) == ["myopic"]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"sizes": ["3b"]}, "sizes.0"),
        ({"sizes": []}, "sizes"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [-1]}, "seeds.0"),
        ({"seeds": [2**63]}, "seeds.0"),
        ({"arms": ["vanilla", "sideways"]}, "arms.1"),
        ({"arms": ["vanilla", "local"]}, "arms"),  # the local arm is reported beside the pair
        ({"arms": ["vanilla", "myopic", "local"], "run": {"attention": {"variant": "kv"}}}, "run.attention.variant"),
        ({"run": {"attention": {"past_from": "x"}}}, "run.attention.past_from"),
        ({"colour": "red"}, "colour"),
        ({"lr_scale": float("inf")}, "lr_scale"),
        ({"run": {"data": {"kind": "synthetic", "p": 1.5}}}, "run.data.p"),
        ({"run": {"train": {"steps": 0}}}, "run.train.steps"),
        ({"run": {"train": {"stepz": 3}}}, "run.train.stepz"),
        ({"run": {"attention": {"beta": -1}}}, "run.attention.beta"),
        ({"run": {"model": {"size": "70m"}}}, "run.model.size"),
        ({"run": {"seed": 3}}, "run.seed"),
        ({"run": {"tracking": {"experiment": "x"}}}, "run.tracking"),
        ({"run": {"model": {"overrides": {"hidden_size": "wide"}}}}, "run.model.overrides.hidden_size"),
        ({"run": {"model": {"overrides": {"hidden_size": 100, "num_attention_heads": 3}}}}, "run.model.overrides"),
        ({"run": {"protocol": {"kind": "finetune"}}}, "run.protocol.checkpoint"),
        ({"run": {"train": {"global_batch": 7, "micro_batch": 2}}}, "run.train.global_batch"),
        ({"run": {"train": {"precision": "fp16"}}}, "run.train.precision"),
    ],
)
def test_bad_requests_name_the_field_by_its_path(body, field):
    assert field in errors_of(body)


def test_repeats_are_refused():
    with pytest.raises(ValidationError, match="seeds\n  Value error, lists each value once"):
        request(seeds=[1, 1])


def test_a_preset_fills_what_the_request_leaves_out():
    demo = SweepRequest.model_validate({"preset": "demo"})
    assert demo.name == "demo" and demo.sizes == ["0.1m"] and demo.run.data.kind == "text"
    mine = SweepRequest.model_validate(
        {"preset": "demo", "name": "mine", "seeds": [3, 4], "run": {"train": {"steps": 7}}}
    )
    assert (mine.name, mine.seeds, mine.run.train.steps) == ("mine", [3, 4], 7)
    assert mine.run.train.global_batch == demo.run.train.global_batch  # sections merge key by key
    other = SweepRequest.model_validate({"preset": "demo", "run": {"data": {"kind": "synthetic", "p": 0.3}}})
    assert other.run.data.kind == "synthetic" and other.run.data.p == 0.3  # another kind replaces, not merges
    assert "preset" in errors_of({"preset": "nope"})


def test_pythia_paper_is_the_papers_protocol():
    """The paper's section 3.2 (docs/science.md), value by value."""
    runs = {
        p.size: p.runs["myopic"] for p in plan(SweepRequest.model_validate({"preset": "pythia-paper"}), profile="gpu")
    }
    assert list(runs) == ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b"]
    lrs = {
        "14m": 4e-4,
        "31m": 4e-4,
        "70m": 1.2e-4,
        "160m": 2.4e-4,
        "410m": 1.2e-4,
        "1b": 1.2e-4,
        "1.4b": 8e-5,
        "2.8b": 6.4e-5,
    }
    for size, s in runs.items():
        assert s.optimizer.lr == pytest.approx(lrs[size])
        assert s.protocol.kind == "finetune" and s.protocol.checkpoint == f"EleutherAI/pythia-{size}"
        assert (s.data.kind, s.data.sequences, s.data.held_out) == ("hf", "document_start", 0.01)
        assert (s.train.seq_len, s.train.global_batch, s.train.steps) == (64, 6144, 1627)
        assert 9.99e6 < s.train.global_batch * s.train.steps <= 10e6  # 10M sequences, one epoch
        assert (s.optimizer.betas, s.optimizer.weight_decay, s.optimizer.clip) == ((0.9, 0.999), 0.01, 0.0)
        assert (s.optimizer.warmup_frac, s.optimizer.min_lr_ratio) == (0.05, 0.0)
        assert (s.train.precision, s.resources.zero_stage, s.attention.variant) == ("fp16", 2, "hidden")
        assert s.train.micro_batch * s.grad_accum * s.resources.workers == 6144
        assert s.train.micro_batch <= placement(size, "gpu").max_micro_batch


def test_synthetic_paper_is_the_papers_configuration():
    """The paper's section 2 (docs/science.md), value by value; the other p values of the paper are one field away."""
    (pair,) = plan(SweepRequest.model_validate({"preset": "synthetic-paper", "seeds": [0]}))
    s = pair.runs["myopic"]
    assert (s.data.kind, s.data.p, s.data.b, s.data.lags, s.train.seq_len) == ("synthetic", 1.0, 10.0, 10, 64)
    assert s.model.overrides == {
        "num_hidden_layers": 2,
        "hidden_size": 128,
        "num_attention_heads": 2,
        "hidden_act": "relu",
    }
    assert (s.optimizer.lr, s.optimizer.betas, s.optimizer.weight_decay, s.optimizer.clip) == (
        1e-3,
        (0.9, 0.999),
        0.01,
        0.0,
    )
    assert (s.optimizer.warmup_frac, s.optimizer.min_lr_ratio) == (0.01, 0.0)
    assert (s.train.global_batch, s.train.steps, s.train.precision) == (512, 58_593, "fp32")
    assert s.attention.variant == "hidden"
    for p in (0.01, 0.1, 0.3):
        assert preset_run("synthetic-paper", run={"data": {"p": p}}).data.p == p
    assert PRESETS["synthetic-paper"].deviations and PRESETS["pythia-paper"].deviations


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_plans(name):
    for s in (
        pair.runs["vanilla"]
        for pair in plan(SweepRequest.model_validate({"preset": name}), profile=PRESETS[name].profile or "cpu")
    ):
        assert s.grad_accum >= 1 and s.optimizer.lr is not None


def test_two_sizes_that_the_overrides_make_one_model_are_refused():
    """14m and 31m both become 2 layers of width 64 with 4 heads: one label, one run name, one results row."""
    shape = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}
    body = {"name": "x", "sizes": ["14m", "31m"], "seeds": [0], "run": {"model": {"overrides": shape}}}
    with pytest.raises(InvalidRequest) as e:
        plan(SweepRequest.model_validate(body))
    assert e.value.errors[0][0] == "sizes" and "L2-d64-h4" in e.value.errors[0][1]

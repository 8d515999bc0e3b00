"""RunSpec: JSON round trip, errors that name the field, matched pairs, hashes, presets."""

from __future__ import annotations

import json

import pytest

from services.planner import preset_run
from trainers.spec import RunSpec, SpecError, check_matched, load_spec, parse_spec


def test_json_round_trip():
    spec = preset_run("text-cpu", run={"attention": {"variant": "kv", "beta": 0.25}}).arm("myopic")
    again = RunSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.config_hash() == spec.config_hash()


@pytest.mark.parametrize(
    "doc,names",
    [
        ({"train": {"stepz": 3}}, "train.stepz"),
        ({"colour": "red"}, "colour"),
        ({"model": {"size": "3b"}}, "model.size"),
        ({"model": {"overrides": {"hiden_size": 8}}}, "hiden_size"),
        ({"data": {"kind": "synthetic", "p": 0}}, "data.p"),
        ({"data": {"kind": "tape"}}, "data"),
        ({"attention": {"beta": 2}}, "attention.beta"),
        ({"protocol": {"kind": "finetune"}}, "protocol.checkpoint"),
        ({"train": {"micro_batch": 3, "global_batch": 8}}, "train.global_batch"),
        ({"model": {"overrides": {"hidden_size": "wide"}}}, "model.overrides.hidden_size"),
        ({"protocol": {"kind": "finetune", "checkpoint": "x"}, "model": {"vocab_size": 512}}, "model.vocab_size"),
        ({"model": {"vocab_size": 1}}, "model.vocab_size"),
    ],
)
def test_bad_specs_name_what_is_wrong(doc, names):
    with pytest.raises(SpecError, match=names.replace(".", r"\.")):
        parse_spec(json.dumps(doc))


def test_load_spec_errors_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="bad.json is not a valid run spec"):
        load_spec(bad)


def test_arms_differ_only_in_attention_mode():
    base = preset_run("synthetic-cpu")
    vanilla, myopic = base.arm("vanilla"), base.arm("myopic")
    check_matched(vanilla, myopic)
    assert vanilla.pair_hash() == myopic.pair_hash() and vanilla.config_hash() != myopic.config_hash()
    # naming and tracking are not part of a run's identity
    named = myopic.model_copy(update={"name": "x", "tracking": myopic.tracking.model_copy(update={"experiment": "e"})})
    check_matched(vanilla, named)

    lr = myopic.model_copy(update={"optimizer": myopic.optimizer.model_copy(update={"lr": 1e-4})})
    with pytest.raises(ValueError, match="optimizer.lr"):
        check_matched(vanilla, lr)
    warm = myopic.model_copy(update={"optimizer": myopic.optimizer.model_copy(update={"warmup_frac": 0.05})})
    with pytest.raises(ValueError, match="optimizer.warmup_frac"):
        check_matched(vanilla, warm)
    with pytest.raises(ValueError, match="seed"):
        check_matched(vanilla, myopic.model_copy(update={"seed": 1}))
    with pytest.raises(ValueError, match="one vanilla arm and one myopic arm"):
        check_matched(vanilla, vanilla)
    bigram = base.arm("bigram")
    check_matched(vanilla, myopic, bigram)  # the optional reference arm
    with pytest.raises(ValueError, match="one vanilla arm and one myopic arm"):
        check_matched(vanilla, bigram)
    with pytest.raises(ValueError, match="seed"):
        check_matched(vanilla, myopic, bigram.model_copy(update={"seed": 1}))


def test_lr_defaults_to_the_size():
    assert RunSpec.model_validate({"model": {"size": "160m"}}).lr == 6e-4
    assert preset_run("pythia-paper", size="2.8b").lr == pytest.approx(6.4e-5)


def test_a_worker_image_of_another_version_fails_the_job_at_once(tmp_path, monkeypatch, capsys):
    """The control plane gives each job its own version (Settings.job_env); a head image built from another commit
    refuses the job before any worker starts, as a version error naming both (the control plane holds the run in
    the queue: tests/integration/test_faults.py)."""
    from services.settings import Settings
    from trainers.entry import main
    from trainers.job_protocol import ERROR_MARK, version_problem

    env = Settings(data_dir=tmp_path, version="abc123").job_env()
    assert env["MYOPIA_EXPECTED_VERSION"] == "abc123"
    spec = tmp_path / "spec.json"
    spec.write_text(preset_run("synthetic-cpu").model_dump_json())
    monkeypatch.setenv("MYOPIA_EXPECTED_VERSION", env["MYOPIA_EXPECTED_VERSION"])
    monkeypatch.setenv("MYOPIA_VERSION", "def456")
    assert main([str(spec)]) == 4
    error = json.loads(capsys.readouterr().out.split(ERROR_MARK, 1)[1])
    assert error["kind"] == "version" and "version def456" in error["message"] and "abc123" in error["message"]
    monkeypatch.setenv("MYOPIA_VERSION", "abc123")
    assert version_problem() is None  # the same version passes

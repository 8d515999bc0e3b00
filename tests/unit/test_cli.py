"""The `myopia` CLI at its input boundary: bad specs and data give a clear error naming what is wrong."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from api.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_train_refuses_a_bad_spec_naming_the_field(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"train": {"stepz": 10}, "attention": {"mode": "myopc"}}))
    result = invoke("train", str(spec))
    assert result.exit_code == 1
    assert "train.stepz" in result.output and "attention.mode" in result.output


def test_train_needs_exactly_one_source(tmp_path):
    assert "give a SPEC_FILE or --preset" in invoke("train").output
    assert "unknown preset 'nope'" in invoke("train", "--preset", "nope").output


def test_data_prepare_names_a_missing_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MYOPIA_DATA_DIR", str(tmp_path))
    result = invoke("data", "prepare", "sotu")
    assert result.exit_code == 1 and "myopia data fetch sotu" in result.output
    result = invoke("data", "fetch", "pile")
    assert result.exit_code == 1 and "unknown corpus pile" in result.output


def test_zoo_and_presets_list():
    assert "2,775,208,960" in invoke("zoo").output
    out = invoke("presets").output
    assert all(name in out for name in ("synthetic-paper", "synthetic-cpu", "text-cpu", "pythia-paper"))
    assert "pythia-paper (sizes 14m, 31m, 70m, 160m, 410m, 1b, 1.4b, 2.8b; 1 seed(s))" in out
    assert "differs from the paper: data: the deduplicated Pile as text" in out


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv("MYOPIA_API_TOKEN", raising=False)
    monkeypatch.setenv("MYOPIA_DATA_DIR", str(tmp_path))
    result = invoke("serve", "--host", "0.0.0.0")
    assert result.exit_code == 1 and "refusing to serve on 0.0.0.0 without a token" in result.output
    assert "MYOPIA_API_TOKEN" in result.output and not list(tmp_path.iterdir())  # nothing started


def test_results_table_shows_the_baseline_fractions_the_drift_test_and_an_unbounded_share():
    from rich.console import Console

    from api.client_cli import results_table

    size = {
        "size": "0.1m", "n_params_nonembedding": 100_096, "n_pairs": 2, "vanilla_loss_mean": 0.04,
        "myopic_loss_mean": 1.25, "bigram_loss_mean": 1.3, "gap_mean": 1.21, "gap_ci95": [1.1, 1.3],
        "gap_eval_ci95": [1.2, 1.22], "share_lost": 0.96, "share_lost_ci95": None, "share_lost_eval_ci95": None,
        "share_lost_note": "over seeds: bigram − vanilla not significantly different from zero",
        "fraction_of_baseline": {"vanilla": {"all": 0.03, "past_window": 0.022}, "myopic": {"all": 1.0,
                                 "past_window": 0.988}},
        "test": "paired t", "p_value": 0.01, "p_holm": 0.03, "drift": True,
    }  # fmt: skip
    console = Console(width=400, record=True)
    console.print(results_table({"sizes": [size]}))
    text = console.export_text()
    assert "vanilla 0.022, myopic 0.988" in text and "÷ baseline" in text
    assert "yes, paired t, p = 0.03" in text and "Holm" in text
    assert "0.960 (no bounded interval)" in text


def test_results_show_the_local_bonus_and_the_accuracies_averaged_over_seeds():
    from rich.console import Console

    from api.client_cli import results_table
    from services.results import _size_row

    def pair(seed: int, acc: dict[str, float]) -> dict:
        return {
            "seed": seed, "n_params_nonembedding": 1000, "vanilla_loss": 1.0 + seed / 10, "myopic_loss": 1.2,
            "bigram_loss": None, "local_loss": 0.99 + seed / 10, "per_sequence": {},
            "accuracy": acc, "accuracy_hardest": {arm: a / 2 for arm, a in acc.items()},
            "accuracy_by_length": {arm: {"1×1": 1.0, "2×2": a} for arm, a in acc.items()},
        }  # fmt: skip

    row = _size_row("L4-d128-h4", [pair(0, {"vanilla": 0.5, "myopic": 0.4}), pair(1, {"vanilla": 0.7, "myopic": 0.4})])
    assert row.bonus == pytest.approx(0.01) and row.local_loss_mean == pytest.approx(1.04)
    assert row.accuracy["vanilla"][0] == pytest.approx(0.6) and row.accuracy["myopic"][1] == 0.0
    assert row.accuracy_by_length["vanilla"] == {"1×1": 1.0, "2×2": pytest.approx(0.6)}
    console = Console(width=400, record=True)
    console.print(results_table({"sizes": [row.model_dump()]}))
    text = console.export_text()
    assert (
        "+0.0100" in text
        and "myopic 0.400 (hardest 0.200), vanilla 0.600 (hardest 0.300)" in text
        and "local myopia bonus" in text
    )

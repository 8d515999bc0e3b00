"""The docs' measured figures are the ones the bench commands wrote under docs/figures/: each table or figure that
bench/docs_tables.py renders from those JSON files appears, as rendered, in its document."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import docs_tables  # noqa: E402


@pytest.mark.parametrize("doc", list(docs_tables.RENDERERS))
def test_docs_show_what_the_figure_files_hold(doc):
    text = " ".join((ROOT / doc).read_text().split())  # line breaks in prose do not matter
    missing = [line for line in docs_tables.RENDERERS[doc]() if " ".join(line.split()) not in text]
    assert not missing, f"{doc} does not show, as rendered from docs/figures/: {missing}"


def test_the_presets_are_what_their_figures_ran():
    """A preset the docs report a result for plans what the recorded sweeps ran (the filler sweep's pad aside)."""
    from services.planner import SweepRequest, plan

    for sweep in docs_tables.load("multiplication.json")["sweeps"]:
        ran = sweep["request"]["run"]
        preset = SweepRequest.model_validate({"name": "x", "preset": "multiplication-cpu"})
        planned = {s.attention.mode: s for p in plan(preset) for s in p.runs.values()}["vanilla"]
        assert ran["train"]["steps"] == planned.train.steps and ran["optimizer"]["lr"] == planned.optimizer.lr
        assert ran["model"]["overrides"] == planned.model.overrides
        assert ran["data"]["max_digits"] == planned.data.max_digits


def _differences(ran: dict, planned: dict, path: str = "") -> list[str]:
    """Every field the recorded run set that the plan sets otherwise."""
    out = []
    for key, value in ran.items():
        if isinstance(value, dict) and isinstance(planned.get(key), dict):
            out += _differences(value, planned[key], f"{path}{key}.")
        elif planned.get(key) != value:
            out.append(f"{path}{key}: ran {value!r}, planned {planned.get(key)!r}")
    return out


@pytest.mark.parametrize(("figure", "preset"), [("cpu_ladder.json", "cpu-ladder"), ("context.json", "context-cpu")])
def test_the_text_presets_plan_what_their_sweeps_ran(figure, preset):
    from services.planner import SweepRequest, plan

    request = docs_tables.load(figure)["request"]
    planned = SweepRequest.model_validate({"name": "x", "preset": preset})
    assert (request["sizes"], request["arms"]) == (planned.sizes, planned.arms)
    vanilla = {s.attention.mode: s for p in plan(planned) for s in p.runs.values()}["vanilla"]
    assert not _differences(request["run"], vanilla.model_dump(mode="json"))


def test_the_synthetic_preset_plans_what_its_runs_ran():
    """bench/synthetic_cpu.py ran the synthetic-cpu preset's specs (its file predates shape labels: `size` says 14m
    for the preset's 2-layer, d 64 shape, which the service now labels 0.1m)."""
    from services.planner import SweepRequest, plan

    planned = SweepRequest.model_validate({"name": "x", "preset": "synthetic-cpu"})
    specs = {s.attention.mode: s.model_dump(mode="json") for p in plan(planned) for s in p.runs.values()}
    for arm, runs in docs_tables.load("synthetic_cpu.json")["runs"].items():
        for run in runs:
            ran = {k: run["spec"][k] for k in ("model", "data", "train", "optimizer", "eval")}
            ran["model"] = {k: v for k, v in ran["model"].items() if k != "size"}
            assert not _differences(ran, specs["vanilla" if arm == "vanilla" else "myopic"]), arm

"""The per-GPU memory model of `cluster/memory.py`: every gpu-profile run fits 80 GB with 10% to spare, DeepSpeed's
estimator on a hand count, the activation coefficients against a real (small, CPU) measurement, and the table in
docs/operations.md as `python -m cluster.memory` prints it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import memory
from cluster.memory_probe import Shape, measure
from cluster.resources import placement
from services.planner import SweepRequest, plan
from trainers.models import PYTHIA_SIZES
from trainers.speedups import fuses_loss

ROOT = Path(__file__).resolve().parents[2]


def test_budget_is_ninety_percent_of_80_gb():
    assert round(memory.BUDGET_BYTES) == 72 * 10**9  # 0.9 × 80e9 bytes, not GiB: 67.1 GiB


def test_every_gpu_placement_fits_80gb_with_10_percent_headroom():
    rows = memory.table()
    assert [r.size for r in rows] == ["14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b"]
    for r in rows:
        assert r.gpus <= 8, r  # one node of the gpu profile
        assert r.total_gib * memory.GIB < memory.BUDGET_BYTES, r
        assert r.micro_batch <= r.largest_micro_batch, r


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_micro_batch_caps_fit_in_every_precision(precision):
    """The planner caps the micro-batch whatever the run's precision (RunSpec's default is fp32), so every cap of
    the gpu profile must fit in each: any micro-batch the planner picks is at most the cap."""
    for size in PYTHIA_SIZES:
        stage, _, gpus = memory.placed(size, "gpu")
        fits = memory.largest_micro_batch(size, precision=precision, zero_stage=stage, gpus=gpus)
        assert placement(size, "gpu").max_micro_batch <= fits, (size, precision, fits)


def test_pythia_paper_as_planned_fits():
    """The preset's own resources (ZeRO-2) override the profile's stage: check the runs the planner makes."""
    for pair in plan(SweepRequest.model_validate({"preset": "pythia-paper"}), profile="gpu"):
        for spec in pair.runs.values():
            r, t = spec.resources, spec.train
            peak = memory.peak_bytes(
                pair.size,
                t.micro_batch,
                seq_len=t.seq_len,
                precision=t.precision,
                zero_stage=r.zero_stage,
                gpus=int(r.workers * r.gpus_per_worker),
                fused_loss=fuses_loss(spec.data.kind, t.precision, t.fused_loss),
            )
            assert peak < memory.BUDGET_BYTES, (pair.size, peak / memory.GIB)


def test_memory_model_counts_the_fused_loss_chunks():
    """Without the fused loss the logits dominate at T = 2048 (12 bytes per logit); with it, a chunk and the head's
    weight gradient: the largest micro-batch that fits grows."""
    kw = dict(seq_len=2048, precision="bf16", zero_stage=1, gpus=1)
    plain = memory.largest_micro_batch("410m", **kw)
    fused = memory.largest_micro_batch("410m", fused_loss=True, **kw)
    assert fused > plain > 0
    assert memory.peak_bytes("410m", fused, fused_loss=True, **kw) < memory.BUDGET_BYTES
    assert memory.peak_bytes("410m", fused + 1, fused_loss=True, **kw) >= memory.BUDGET_BYTES


def test_deepspeed_estimator_matches_a_hand_count():
    # ZeRO-2, 2.8b on 8 GPUs: 2Ψ of fp16 params + (2 fp16 grads + 16 fp32 grads, params, moments)·Ψ/8
    big = memory.estimate("2.8b")
    n = PYTHIA_SIZES["2.8b"].n_params()
    assert (big.zero_stage, big.gpus) == (2, 8)
    assert big.model_states_gib == pytest.approx((2 * n + 18 * n / 8) / memory.GIB, rel=1e-6)


# Both terms matter at this shape (layers ~45%, logits ~55% of the peak), so a coefficient off by a quarter moves
# the prediction by 10% or more. The fit reproduces every calibration point of bench/memory_calibration.py within
# 0.5% (the measurement is deterministic: the same aten ops for the same shapes), so 5% leaves room only for small
# tensors a torch or transformers upgrade may add or drop; more than that means the coefficients need a refit.
PROBE = Shape(layers=4, hidden=128, heads=4, seq=64, batch=4, vocab=2048)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_coefficients_predict_a_measured_peak(precision):
    s = PROBE
    measured = measure(s, precision).peak
    predicted = memory.shape_activation_bytes(s.layers, s.hidden, s.vocab, s.batch * s.seq, precision)
    assert measured == pytest.approx(predicted, rel=0.05), (measured, predicted)


def test_myopic_attention_needs_what_vanilla_needs():
    """One activation model serves both arms of a pair."""
    assert measure(PROBE, "bf16", "myopic") == measure(PROBE, "bf16", "vanilla")


def test_operations_doc_has_the_printed_table():
    lines = (ROOT / "docs" / "operations.md").read_text().splitlines()
    start = lines.index("### Placement and memory per size")
    rest = lines[start + 1 :]
    first = next(i for i, line in enumerate(rest) if line.startswith("|"))
    end = next((i for i, line in enumerate(rest[first:], first) if not line.startswith("|")), len(rest))
    assert "\n".join(rest[first:end]) == memory.markdown()  # python -m cluster.memory prints markdown()


@pytest.mark.parametrize(("seq_len", "precision"), [(512, "fp16"), (2048, "bf16"), (256, "fp32")])
def test_the_planner_caps_the_micro_batch_to_what_fits(seq_len, precision):
    """Longer sequences than the caps of resources.yaml were set for: the planner lowers the micro-batch (more
    gradient accumulation) until the memory model says it fits."""
    request = {"preset": "pythia-paper", "run": {"train": {"seq_len": seq_len, "precision": precision}}}
    for pair in plan(SweepRequest.model_validate(request), profile="gpu"):
        spec = pair.runs["myopic"]
        r, t = spec.resources, spec.train
        gpus = int(r.workers * r.gpus_per_worker)
        fused = fuses_loss(spec.data.kind, t.precision, t.fused_loss)
        peak = memory.peak_bytes(pair.size, t.micro_batch, seq_len=seq_len, precision=precision,
                                 zero_stage=r.zero_stage, gpus=gpus, fused_loss=fused)  # fmt: skip
        assert peak < memory.BUDGET_BYTES, (pair.size, t.micro_batch, peak / memory.GIB)
        assert t.global_batch % (t.micro_batch * r.workers) == 0  # whole accumulation steps
        bigger = memory.peak_bytes(pair.size, 2 * t.micro_batch, seq_len=seq_len, precision=precision,
                                   zero_stage=r.zero_stage, gpus=gpus, fused_loss=fused)  # fmt: skip
        cap = placement(pair.size, "gpu").max_micro_batch
        assert (
            bigger >= memory.BUDGET_BYTES
            or 2 * t.micro_batch > cap
            or (t.global_batch // r.workers) % (2 * t.micro_batch)
        )


def test_operations_doc_prose_is_what_the_model_says():
    """The figures docs/operations.md quotes from the memory model besides its table."""
    text = " ".join((ROOT / "docs" / "operations.md").read_text().split())

    def largest(size: str, fused: bool, **kw) -> int:
        stage, _, _ = memory.placed(size, "gpu")
        return memory.largest_micro_batch(size, zero_stage=stage, fused_loss=fused, **kw)

    one_gpu = {"seq_len": 2048, "precision": "bf16", "gpus": 1}
    fused = [(largest(size, False, **one_gpu), largest(size, True, **one_gpu)) for size in ("160m", "410m")]
    (a, b), (c, d) = fused
    assert f"grows from {a} to {b} sequences at 160m and from {c} to {d} at 410m" in text
    performance = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    e, f = (memory.largest_micro_batch("1b", zero_stage=1, fused_loss=x, **one_gpu) for x in (False, True))
    assert f"goes from {a} to {b} sequences at 160m, {c} to {d} at 410m and {e} to {f} at 1b" in performance
    stage, _, gpus = memory.placed("160m", "gpu")
    need = memory.peak_bytes("160m", 1024, zero_stage=stage, gpus=gpus) / memory.GIB
    assert f"at 1024 it would need {need:.1f} GiB" in text
    ends = []
    for size in ("14m", "2.8b"):
        stage, _, gpus = memory.placed(size, "gpu")
        ends.append(memory.largest_micro_batch(size, seq_len=2048, zero_stage=stage, gpus=gpus))
    assert f"{ends[0]} sequences for 14m down to {ends[1]} for 2.8b" in text


def test_the_coefficients_are_the_calibrations():
    """cluster/memory.py's activation coefficients are what bench/memory_calibration.py fitted (the JSON it wrote)."""
    import json

    fitted = json.loads((ROOT / "docs" / "figures" / "memory_calibration.json").read_text())["coefficients"]
    for precision, terms in fitted.items():
        coded = memory.ACTIVATIONS[precision]
        assert (coded.layer, coded.logit, coded.token) == tuple(round(terms[k], 1) for k in ("layer", "logit", "token"))

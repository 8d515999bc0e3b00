"""Every GPU check in one command (`make gpu-check`): the environment, the CUDA tests, exactness against each
dtype's floor, one attention layer and whole training steps with MFU. Prints every table and writes them as JSON.

    python bench/gpu_check.py [--out DIR] [--smoke] [--rounds N] [--compile-sizes 410m] [--peak-tflops X]

--smoke runs the same code on CPU, small (the test suite runs it, so this script cannot rot).

Whole steps use the speedups a GPU worker turns on (trainers.speedups: torch's fused AdamW, liger-kernel's fused
linear + cross-entropy, torch.compile for the sizes in --compile-sizes, vanilla and myopic only: each compile costs
about a minute), without DeepSpeed or ZeRO: fp32 weights under bf16 autocast (as HF Trainer or Accelerate run), and
bf16 weights (what DeepSpeed's bf16 mode computes in); random tokens. Modes run interleaved round by round; each
time is the median over rounds of 2 steps (CUDA events).

MFU (PaLM, appendix B): tokens × (6·N + 12·L·d·T) FLOPs per step, N = every parameter but the input embedding
(it multiplies nothing), L layers, d hidden size, T sequence length; against the GPU's dense bf16 peak
(H100/H200 SXM: 989.4 TFLOP/s; A100: 312) or --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # run from anywhere: the project and its bench helpers

import torch  # noqa: E402
from myopic_attention import interleaved  # noqa: E402

from tests.oracle import (  # noqa: E402
    PRECISIONS,
    floor_errors,
    last_position_input_grad,
    perturbed_model,
    tiny_config,
)
from trainers.models import build_model  # noqa: E402
from trainers.myopic import set_attention  # noqa: E402
from trainers.speedups import fuse_loss  # noqa: E402

MODES = {"vanilla": ("vanilla", "hidden"), "myopic": ("myopic", "hidden"), "kv": ("myopic", "kv")}
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0}
CUDA_TESTS = [
    "tests/unit/test_myopic_precision.py",
    "tests/unit/test_myopic_gradients.py",
    "tests/unit/test_speedups.py",
]


def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
    }
    for name in ("transformers", "liger-kernel", "triton", "deepspeed", "pydantic"):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    if torch.cuda.is_available():  # which kernel vanilla SDPA runs for a causal bf16 410m layer (this op: flash)
        q = torch.zeros(8, 16, 2048, 64, device="cuda", dtype=torch.bfloat16)
        choice = torch._fused_sdp_choice(q, q, q, is_causal=True)
        env["vanilla_sdpa_kernel"] = torch.nn.attention.SDPBackend(choice).name
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        env["nvidia_smi"] = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        env["nvidia_smi"] = None
    return env


def cuda_tests(smoke: bool) -> dict:
    """The project's CUDA tests (those named cuda: skipped on CPU, where the CPU suite runs the rest)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "--noconftest", *CUDA_TESTS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.time()
    try:
        proc = subprocess.run([*cmd, "-k", "cuda"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    except subprocess.TimeoutExpired as e:
        return {"returncode": 124, "summary": "timed out after 600 s", "seconds": time.time() - t0,
                "output": str(e.stdout)[-3000:]}  # fmt: skip
    tail = proc.stdout.strip().splitlines()[-15:]
    print("\n".join(tail))
    return {"returncode": proc.returncode, "summary": tail[-1] if tail else "", "seconds": time.time() - t0}


def exactness(smoke: bool, device: str) -> list[dict]:
    """Fused myopic gradients in every precision against float64, judged against the dtype's floor: the error of
    vanilla SDPA and of the paper-style reference in the same precision (tests.oracle.floor_errors)."""
    configs: dict[str, tuple[dict, int, int]] = {"tiny-hd16": ({}, 2, 9)}  # overrides of tests.oracle.tiny_config
    if not smoke:
        configs["hd64-T200"] = (
            dict(vocab_size=128, num_hidden_layers=2, hidden_size=256, num_attention_heads=4),
            3,
            200,
        )
    precisions = ["fp32", "bf16-autocast"] if smoke else list(PRECISIONS)
    rows = []
    print("| config | mask | variant | beta | precision | e_myopic | e_vanilla | e_reference | ratio | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cname, (over, B, T) in configs.items():
        m64, cfg = perturbed_model(**over), tiny_config(**over)
        ids = torch.randint(0, cfg["vocab_size"], (B, T), generator=torch.Generator().manual_seed(1))
        pad = torch.ones(B, T, dtype=torch.long)
        pad[0, : T // 3] = 0
        for mname, mask in (("causal", None), ("padded", pad)):
            for variant in ("hidden", "kv"):
                for beta in (0.0,) if smoke else (0.0, 0.5, 1.0):
                    for precision in precisions:
                        e_my, e_van, e_ref = floor_errors(m64, ids, mask, precision, variant, beta, device)
                        floor = max(e_van, e_ref)
                        row = dict(config=cname, mask=mname, variant=variant, beta=beta, precision=precision,
                                   e_myopic=e_my, e_vanilla=e_van, e_reference=e_ref,
                                   ratio=e_my / floor if floor else None, ok=e_my <= 2 * floor)  # fmt: skip
                        rows.append(row)
                        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
                        print(f"| {cname} | {mname} | {variant} | {beta} | {precision} | {e_my:.2e} | {e_van:.2e} | "
                              f"{e_ref:.2e} | {ratio} | {'OK' if row['ok'] else 'FAIL'} |", flush=True)  # fmt: skip
        for precision in precisions:  # loss at the last position only: earlier inputs get exactly nothing
            weights, _ = PRECISIONS[precision]
            model = build_model("14m", **cfg).to(device, weights)
            model.load_state_dict(m64.state_dict())
            for variant in ("hidden", "kv"):
                g = last_position_input_grad(model, ids.to(device), precision, "myopic", variant)
                leak, own = g[:, :-2].abs().max().item(), g[:, -2].abs().max().item()
                ok = leak == 0 and own > 0
                rows.append(dict(config=cname, check="leak", precision=precision, variant=variant, leak=leak,
                                 own=own, ok=ok))  # fmt: skip
                print(f"| {cname} | leak | {variant} | - | {precision} | earlier {leak:.3g} | last {own:.3g} | | | "
                      f"{'OK' if ok else 'FAIL'} |")  # fmt: skip
    return rows


def _timer(device: str) -> Callable[[Callable[[], None]], tuple[float, int]]:
    def measure(step: Callable[[], None]) -> tuple[float, int]:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            step()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 2e3, torch.cuda.max_memory_allocated()
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0, 0

    return measure


def layer_bench(smoke: bool, device: str, rounds: int) -> list[dict]:
    """One attention layer, forward + backward, batch 1: time and peak memory (CUDA allocator) by mode."""
    size = "14m" if smoke else "410m"
    cases = [(torch.float32, 64)] if smoke else [(torch.bfloat16, T) for T in (64, 512, 2048, 8192)]
    cases += [] if smoke else [(torch.float32, 2048), (torch.float32, 8192)]
    torch.manual_seed(0)
    model = build_model(size, vocab_size=128, num_hidden_layers=1).to(device)
    rows: list[dict] = []
    print("| dtype | T | mode | ms | time / vanilla | peak MiB | memory / vanilla |\n|---|---|---|---|---|---|---|")
    for dtype, T in cases:
        rows += _layer_case(model.to(dtype), dtype, T, device, rounds)
    return rows


def _layer_case(model: torch.nn.Module, dtype: torch.dtype, T: int, device: str, rounds: int) -> list[dict]:
    layer, rotary = model.gpt_neox.layers[0].attention, model.gpt_neox.rotary_emb
    x = torch.randn(1, T, model.config.hidden_size, device=device, dtype=dtype, requires_grad=True)
    pos = rotary(x, torch.arange(T, device=device)[None])
    grad_out = torch.randn_like(x)
    base = torch.cuda.memory_allocated() if device == "cuda" else 0

    def step_for(mode: str, variant: str) -> Callable[[], None]:
        def step() -> None:
            set_attention(model, mode, variant=variant)
            layer(x, None, position_embeddings=pos)[0].backward(grad_out)
            x.grad = None
            model.zero_grad(set_to_none=True)

        return step

    result = timed({k: step_for(*v) for k, v in MODES.items()}, device, rounds)
    rows = []
    van_ms, van_peak = result["vanilla"]
    for label, (ms, peak) in result.items():
        peak_mib = (peak - base) / 2**20
        mem_ratio = (peak - base) / (van_peak - base) if device == "cuda" else None
        row = dict(dtype=str(dtype).removeprefix("torch."), T=T, mode=label, ms=ms, peak_mib=peak_mib,
                   time_vs_vanilla=ms / van_ms, mem_vs_vanilla=mem_ratio)  # fmt: skip
        rows.append(row)
        mem = "-" if mem_ratio is None else f"{mem_ratio:.3f}"
        print(f"| {row['dtype']} | {T} | {label} | {ms:.2f} | {ms / van_ms:.3f} | {peak_mib:.1f} | {mem} |", flush=True)
    return rows


def timed(steps: dict[str, Callable[[], None]], device: str, rounds: int) -> dict[str, tuple[float, int]]:
    """{label: (median ms, last peak bytes)}, the labels interleaved round by round (bench/myopic_attention.py)."""
    measure = _timer(device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    peaks: dict[str, int] = {}

    def wrapped(label: str) -> Callable[[], None]:
        def run() -> None:
            t, peaks[label] = measure(steps[label])
            times[label].append(t)

        return run

    interleaved({k: wrapped(k) for k in steps}, torch.device(device), rounds)
    return {k: (statistics.median(v[1:]) * 1e3, peaks[k]) for k, v in times.items()}  # [0]: the warm-up


def step_bench(smoke: bool, device: str, rounds: int, compile_sizes: set[str], peak_tflops: float | None) -> list[dict]:
    cases = [("14m", 32, 2, "autocast")] if smoke else [
        (size, T, B, "autocast") for size in ("160m", "410m", "1b") for T, B in ((2048, 8), (64, 256))
    ] + [("410m", 2048, 8, "bf16-weights")]  # fmt: skip
    rows: list[dict] = []
    print("| size | T × B | precision | compiled | mode | step ms | time / vanilla | tokens/s | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, T, B, precision in cases:
        compiled = size in compile_sizes and precision == "autocast"
        rows += _step_case(size, T, B, precision, compiled, smoke, device, rounds, peak_tflops)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _step_case(
    size: str, T: int, B: int, precision: str, compiled: bool, smoke: bool, device: str, rounds: int,
    peak_tflops: float | None,
) -> list[dict]:  # fmt: skip
    """A whole training step with a GPU worker's speedups (trainers.speedups), every mode on the same model."""
    torch.manual_seed(0)
    over = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256) if smoke else {}
    model = fuse_loss(build_model(size, **over).to(device))
    if precision == "bf16-weights":
        model.to(torch.bfloat16)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda" or None)
    cfg = model.config
    n_matmul = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    flops = B * T * (6 * n_matmul + 12 * cfg.num_hidden_layers * cfg.hidden_size * T)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=device)

    def step_for(mode: str, variant: str) -> Callable[[], None]:
        def step() -> None:
            set_attention(model, mode, variant=variant)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "autocast"):
                loss = forward(ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    modes = {k: v for k, v in MODES.items() if not compiled or k != "kv"}  # one compile less per case
    result = timed({k: step_for(*v) for k, v in modes.items()}, device, rounds)
    rows = []
    for label, (ms, peak) in result.items():
        mfu = flops / (ms / 1e3) / (peak_tflops * 1e12) if peak_tflops else None
        row = dict(size=size, T=T, B=B, precision=precision, compiled=compiled, mode=label, step_ms=ms,
                   time_vs_vanilla=ms / result["vanilla"][0], tokens_per_s=B * T / (ms / 1e3), mfu=mfu,
                   peak_gib=peak / 2**30)  # fmt: skip
        rows.append(row)
        print(f"| {size} | {T} × {B} | {precision} | {compiled} | {label} | {ms:.1f} | "
              f"{row['time_vs_vanilla']:.3f} | {row['tokens_per_s']:,.0f} | "
              f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | {row['peak_gib']:.2f} |", flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "gpu-check"), help="folder for gpu_check.json")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny: the same code, in about a minute")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds after one warm-up (default 5; smoke 1)")
    ap.add_argument("--compile-sizes", default="410m", help="comma-separated sizes whose steps run compiled")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by GPU name)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: tests,exactness,layer,steps")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device visible: run on a GPU machine, or pass --smoke for the CPU version")
    device = "cpu" if args.smoke else "cuda"
    rounds = args.rounds or (1 if args.smoke else 5)
    skip = set(filter(None, args.skip.split(",")))
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    env = environment()
    name = env["device"]
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    env["peak_tflops"] = peak
    compile_sizes = {"14m"} if args.smoke else set(filter(None, args.compile_sizes.split(",")))
    print("# GPU check\n" + "\n".join(f"- {k}: {v}" for k, v in env.items()), flush=True)
    report: dict = {"smoke": args.smoke, "environment": env, "rounds": rounds}
    sections = {
        "tests": lambda: cuda_tests(args.smoke),
        "exactness": lambda: exactness(args.smoke, device),
        "layer": lambda: layer_bench(args.smoke, device, rounds),
        "steps": lambda: step_bench(args.smoke, device, rounds, compile_sizes, peak),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for key, run in sections.items():
        if key in skip:
            continue
        print(f"\n## {key}", flush=True)
        t0 = time.time()
        report[key] = run()
        report[f"{key}_seconds"] = round(time.time() - t0, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))  # each section as soon as it is done
    failed = [r for r in report.get("exactness", []) if not r["ok"]]
    tests_rc = report.get("tests", {}).get("returncode", 0)
    print(f"\nexactness: {len(report.get('exactness', []))} checks, {len(failed)} failed; tests rc {tests_rc}")
    print(f"written: {out / 'gpu_check.json'}")
    sys.exit(1 if failed or tests_rc else 0)


if __name__ == "__main__":
    main()

"""Cost of myopic attention next to vanilla, measured side by side in one run (prints tables with ratios).

1. One attention layer (QKV projection, attention, output projection), forward + backward, for vanilla fused
   attention, this myopic attention and the paper-style reference (T×T scores, second QKV projection), at
   T ∈ {64, 512, 2048}: Pythia-70m shape on CPU, Pythia-410m on a GPU when one is visible.
2. A whole training step (forward, backward, AdamW) of a Pythia-14m-shaped model, 2 × 1024 tokens, float32.

Modes run interleaved, round after round, and the median is reported, so that load on a shared machine hits every
mode alike. Memory: on CUDA the allocator's peak; on CPU the bytes autograd keeps for backward (activations),
which is where the modes differ.

    python bench/myopic_attention.py [--rounds N] [--quick] [--json FILE]

--json appends this run (machine, versions, every row) to FILE, a list of runs: repeats give the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from trainers.models import build_model
from trainers.myopic import set_attention

MODES = {  # label: (attention mode, impl)
    "vanilla": ("vanilla", "fused"),
    "myopic": ("myopic", "fused"),
    "paper-style": ("myopic", "reference"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def saved_bytes(fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> int:
    """Bytes of distinct non-parameter storages autograd saves for backward while `fn` runs its forward."""
    weights = {p.untyped_storage().data_ptr() for p in params}  # a saved weight.t() is a view of a parameter
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def measure(step: Callable[[], None], device: torch.device) -> tuple[float, int | None]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    return elapsed, peak


def interleaved(steps: dict[str, Callable[[], None]], device: torch.device, rounds: int) -> dict[str, dict]:
    for step in steps.values():  # warm-up: kernel choice, allocator, thread pools
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    peaks: dict[str, int | None] = {}
    for _ in range(rounds):
        for label, step in steps.items():
            t, peak = measure(step, device)
            times[label].append(t)
            peaks[label] = peak
    return {k: {"median": statistics.median(v), "min": min(v), "peak": peaks[k]} for k, v in times.items()}


def attention_layer_bench(size: str, seq_lens: list[int], device: torch.device, dtype: torch.dtype, rounds: int):
    torch.manual_seed(0)
    model = build_model(size, vocab_size=128, num_hidden_layers=1).to(device=device, dtype=dtype)
    layer = model.gpt_neox.layers[0].attention
    rotary = model.gpt_neox.rotary_emb
    rows = []

    def forward(x: torch.Tensor, pos: tuple, mode: str, impl: str) -> torch.Tensor:
        set_attention(model, mode, impl=impl)
        return layer(x, None, position_embeddings=pos)[0]

    def make_step(x: torch.Tensor, pos: tuple, mode: str, impl: str) -> Callable[[], None]:
        grad_out = torch.randn_like(x)

        def step() -> None:
            forward(x, pos, mode, impl).backward(grad_out)
            x.grad = None
            model.zero_grad(set_to_none=True)

        return step

    for T in seq_lens:
        x = torch.randn(1, T, model.config.hidden_size, device=device, dtype=dtype, requires_grad=True)
        pos = rotary(x, torch.arange(T, device=device)[None])
        result = interleaved({k: make_step(x, pos, *v) for k, v in MODES.items()}, device, rounds)
        for label, (mode, impl) in MODES.items():
            if device.type == "cuda":
                mem = result[label]["peak"]
            else:
                mem = saved_bytes(partial(forward, x, pos, mode, impl), list(model.parameters()))
            rows.append((T, label, result[label]["median"], mem))
    return rows


def training_step_bench(device: torch.device, rounds: int, batch: int = 2, seq_len: int = 1024):
    torch.manual_seed(0)
    model = build_model("14m").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device=device)

    def make_step(mode: str, impl: str) -> Callable[[], None]:
        def step() -> None:
            set_attention(model, mode, impl=impl)
            loss = model(ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    return interleaved({k: make_step(*v) for k, v in MODES.items()}, device, rounds)


def fmt_mem(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:8.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="T ∈ {64, 512} only, 3 rounds")
    ap.add_argument("--json", help="append this run's rows to this JSON file (a list of runs)")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    size, dtype = ("410m", torch.bfloat16) if cuda else ("70m", torch.float32)
    seq_lens = [64, 512] if args.quick else [64, 512, 2048]
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# myopic attention bench — {name}, torch {torch.__version__}, {rounds} interleaved rounds (median)\n")

    mem_label = "peak memory" if cuda else "saved for backward"
    print(f"## One attention layer, Pythia-{size} shape, {str(dtype).removeprefix('torch.')}, batch 1, fwd+bwd")
    print(f"| T | mode | time (ms) | time / vanilla | {mem_label} | memory / vanilla |")
    print("|---|---|---|---|---|---|")
    rows = attention_layer_bench(size, seq_lens, device, dtype, rounds)
    base = {T: (t, m) for T, label, t, m in rows if label == "vanilla"}
    for T, label, t, m in rows:
        bt, bm = base[T]
        print(f"| {T} | {label} | {t * 1e3:.2f} | {t / bt:.3f} | {fmt_mem(m)} | {m / bm:.3f} |")

    print("\n## Training step, Pythia-14m shape (vocab 50304), 2 × 1024 tokens, float32, AdamW")
    print("| mode | median (ms) | min (ms) | median / vanilla |" + (" peak memory |" if cuda else ""))
    print("|---|---|---|---|" + ("---|" if cuda else ""))
    steps = training_step_bench(device, rounds)
    for label, r in steps.items():
        ratio = r["median"] / steps["vanilla"]["median"]
        extra = f" {fmt_mem(r['peak'])} |" if cuda else ""
        print(f"| {label} | {r['median'] * 1e3:.1f} | {r['min'] * 1e3:.1f} | {ratio:.3f} |{extra}")
    ratio = steps["myopic"]["median"] / steps["vanilla"]["median"]
    print(f"\nmyopic / vanilla training step: {ratio:.3f} (target ≤ 1.05)")
    if args.json:
        run = {
            "command": f"python bench/myopic_attention.py --rounds {rounds} --json {args.json}",
            "machine": name,
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "rounds": rounds,
            "layer": [
                dict(
                    T=T,
                    mode=label,
                    ms=t * 1e3,
                    memory_bytes=m,
                    time_vs_vanilla=t / base[T][0],
                    memory_vs_vanilla=m / base[T][1],
                )
                for T, label, t, m in rows
            ],  # fmt: skip
            "step": {k: {"median_ms": r["median"] * 1e3, "min_ms": r["min"] * 1e3} for k, r in steps.items()},
            "step_myopic_vs_vanilla": ratio,
        }
        path = Path(args.json)
        runs = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*runs, run], indent=1))


if __name__ == "__main__":
    main()

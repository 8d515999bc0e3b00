"""The training loop each Ray Train worker runs: DeepSpeed engine, deterministic batches, checkpoints through
`ray.train.report`, resume from the latest checkpoint, held-out evaluation, MLflow on rank 0."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from trainers.job_protocol import CHECKPOINT_TAG, version_problem
from trainers.runtime import check_cuda, configure_deepspeed_env
from trainers.spec import RunSpec
from trainers.speedups import adamw, fuse_loss, speedups
from trainers.tasks import make_task
from trainers.tracking import Tracker


def lr_lambda(spec: RunSpec):
    """Linear warmup, then cosine from lr down to min_lr_ratio × lr (Pythia's schedule)."""
    o, steps = spec.optimizer, spec.train.steps
    warmup = max(1, round(o.warmup_frac * steps)) if o.warmup_frac > 0 else 0

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only, not on biases and LayerNorm gains (as GPT-NeoX)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _mean_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t.item())


def _whole_state_dict(engine: Any, stage: int) -> dict[str, torch.Tensor]:
    """Every rank must call this under ZeRO-3, where gathering the parameters is collective."""
    if stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            return {k: v.detach().clone().cpu() for k, v in engine.module.state_dict().items()}
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def train_loop(config: dict[str, Any]) -> None:
    marks = {"worker_start": time.time()}  # wall-clock marks of the fixed costs (bench/run_overhead.py)
    spec = RunSpec.model_validate_json(config["spec"])
    if problem := version_problem():  # this worker's node may run another image than the driver's head
        raise RuntimeError(problem)
    if spec.resources.gpus_per_worker > 0:
        check_cuda()
    if not torch.cuda.is_available():  # the cores this worker reserved, not every core of the node (OMP's default)
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    progress_file = Path(config["progress_file"]) if config.get("progress_file") else None
    steps = spec.train.steps

    def beat(phase: str, step: int = 0, loss: float | None = None) -> None:
        """Rank 0's progress, read by the control plane: each step, and each phase that takes long without one
        (data, engine, the final evaluation and checkpoint), so that a working run never looks stalled."""
        if progress_file and ray.train.get_context().get_world_rank() == 0:
            state = {"step": step, "steps": steps, "phase": phase, "pid": os.getpid()}
            progress_file.write_text(json.dumps(state | ({"loss": loss} if loss is not None else {})))

    beat("placed")

    configure_deepspeed_env()  # before deepspeed is imported: it picks its accelerator then
    from trainers import engine as eng

    eng.init_distributed()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    node_ids: list[str | None] = [None] * world  # the Ray nodes the workers run on (placement, recorded)
    torch.distributed.all_gather_object(node_ids, ray.get_runtime_context().get_node_id())
    marks["distributed"] = time.time()
    task = make_task(spec)
    marks["data"] = time.time()
    beat("data ready")
    torch.manual_seed(spec.seed)  # the same initial weights in both arms
    model = task.build_model()
    fast = speedups(spec)
    if fast.fused_loss:
        fuse_loss(model)
    marks["model"] = time.time()
    opt = adamw(param_groups(model, spec.optimizer.weight_decay), spec, fused=fast.fused_adamw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec))
    ds_config = eng.ds_config(
        stage=spec.resources.zero_stage,
        micro_batch=spec.train.micro_batch,
        grad_accum=spec.grad_accum,
        world_size=world,
        precision=spec.train.precision,
        clip=spec.optimizer.clip,
    )
    engine = eng.initialize(model, opt, ds_config, scheduler=sched)
    if fast.compile:
        engine.compile()
    marks["engine"] = time.time()
    beat("engine ready")

    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag=CHECKPOINT_TAG)
        start = int(client["step"])
    marks["restored"] = time.time()

    tracker = Tracker(spec, enabled=rank == 0)
    tracker.start()
    marks["tracking"] = time.time()
    t = spec.train
    log_every = max(1, steps // 200)
    try:
        for step in range(start, steps):
            began, losses, tokens = time.perf_counter(), [], 0
            grad_norm = None
            for batch in task.micro_batches(step, rank, world):
                loss = task.loss(engine, batch)
                engine.backward(loss)
                if spec.resources.zero_stage == 0 and engine.is_gradient_accumulation_boundary():
                    # DeepSpeed tracks the norm only in its ZeRO optimizers; without ZeRO, take it before the step
                    grad_norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in model.parameters() if p.grad is not None]
                    )
                engine.step()
                losses.append(loss.item())
                tokens += task.tokens(batch)
            done = step + 1
            if done == start + 1:
                marks["first_step"] = time.time()
            beat("training", done, losses[-1])
            if done % log_every == 0 or done == steps or done == start + 1:
                grad_norm = engine.get_global_grad_norm() if grad_norm is None else grad_norm
                metrics = {
                    "train/loss": _mean_over_ranks(sum(losses) / len(losses)),
                    "train/lr": sched.get_last_lr()[0],
                    "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "train/tokens_per_s": tokens * world / (time.perf_counter() - began),
                }
                tracker.metrics(metrics, done)
            if spec.eval.interval and done % spec.eval.interval == 0 and done < steps:
                tracker.evaluation(task.evaluate(engine, rank, world), done)
            if done < steps and t.checkpoint_interval and done % t.checkpoint_interval == 0:
                _report(engine, done, {"step": done})

        marks["last_step"] = time.time()
        beat("evaluating", steps)
        result = task.evaluate(engine, rank, world)
        marks["evaluated"] = time.time()
        probes = None
        if task.wants_weights:
            weights = _whole_state_dict(engine, spec.resources.zero_stage)  # collective under ZeRO-3
            probes = task.analyse(weights) if rank == 0 else None
        tracker.evaluation(result, steps, probes)
        marks["tracked"] = time.time()
        final = {
            "step": steps,
            "eval": result,
            "probes": probes,
            "mlflow_run_id": tracker.run_id,
            "nodes": len(set(node_ids)),
            "node_ids": sorted(set(node_ids)),
            "resumed_from": start,
            "marks": marks,
        }
        tracker.artifact(final, "result.json")
        marks["checkpoint_start"] = time.time()  # the final checkpoint and Ray Train's hand-off end at fit_end
        beat("checkpointing", steps)
        _report(engine, steps, final)
        tracker.end("FINISHED")
    except BaseException:
        tracker.end("FAILED")
        raise


def _report(engine: Any, step: int, metrics: dict[str, Any]) -> None:
    """DeepSpeed shards of every rank into one Ray Train checkpoint (each rank uploads its own files)."""
    tmp = tempfile.mkdtemp(prefix="myopia-ckpt-")
    try:
        engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state={"step": step})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Ray Train loops of both stages (``train_loop_per_worker``): checkpoints, resume, reports.

They live in the package, not in scripts or tests, so Ray workers can import them; one
step of each stage, the optimiser and the LR schedule are ``frameexit.training``'s.

Stage 1, per worker (DDP over ``train.num_workers``; gloo on CPU, NCCL on GPU)::

    shard = get_dataset_shard("train")          decoded frames [B, T, 3, S, S]
    for epoch in start..epochs-1:                start = last checkpoint's epoch (resume)
        lr = lr0 · γ^(#milestones <= epoch)      the paper's step schedule
        for batch in shard.iter_torch_batches():
            L_cls = mean_t CE(f_t(z_t), y)       backbone + projection + classifiers
        report(metrics, checkpoint={model, optimizer, epoch})   every epoch, rank 0 saves

Stage 2 reads the Parquet feature cache instead of frames (the backbone never runs)::

    batch {features z_1..z_T [B, T, D], step_losses [B, T]}
        y^g_t = [ℓ_t <= β·exp(t/2)]              pseudo-labels from the cached losses
        L_gate = mean_t BCE(g_t(z_{t-1}, z_t), y^g_t)    only the gates train

Checkpoints are ``state.pt`` files of tensors and primitives (``weights_only=True``
loads them). Stage-2 checkpoints hold only the gates; the frozen rest is the stage-1 model.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from typing import Any

import torch

from frameexit.training import (
    GateHead,
    epoch_lr,
    gate_epoch,
    gate_metrics,
    gate_sums,
    make_optimizer,
    set_lr,
    stage1_step,
    unwrap,
)
from pipelines.common import quiet_train_logs, unshared

log = logging.getLogger("frameexit.pipelines.loops")

STATE_FILE = "state.pt"


# --- checkpoints ----------------------------------------------------------------------


def _restore(optimizer: torch.optim.Optimizer, load_model) -> tuple[int, dict[str, Any]]:
    """Load the latest Ray Train checkpoint of this run (if any): returns (epoch, metrics)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, {}
    with checkpoint.as_directory() as directory:
        state = torch.load(
            os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True
        )
    load_model(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resumed from checkpoint at epoch %d", state["epoch"])
    return int(state["epoch"]), dict(state.get("metrics") or {})


def _report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Every rank reports; rank 0 (``state`` given) attaches the checkpoint."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="fe-ckpt-") as directory:
        torch.save(state, os.path.join(directory, STATE_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _maybe_fail(fault: dict[str, Any] | None, stage: int, epoch: int, rank: int) -> None:
    """Test hook ``train.fail_after_epoch`` (frameexit.testing.hooks): raise after
    ``epoch``'s checkpoint, once if a marker file is given, else always."""
    if not fault or fault.get("stage") != stage or fault.get("epoch") != epoch or rank != 0:
        return
    marker = fault.get("marker")
    if marker:
        if os.path.exists(marker):
            return
        with open(marker, "w") as handle:
            handle.write(f"stage {stage} epoch {epoch}\n")
    raise RuntimeError(f"injected fault after stage {stage} epoch {epoch}")


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


# --- the loops ------------------------------------------------------------------------


def stage1_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of stage 1.

    ``config``: ``cfg`` (shared config dict), ``clock`` (the run's epoch clock),
    ``best_uri`` (where rank 0 keeps the best model by the validation metric), ``fault``.
    """
    import ray.train
    from ray.train.torch import get_device, prepare_model

    from frameexit.losses import per_step_losses, set_stage
    from frameexit.model import build_model
    from pipelines.data import set_epoch

    quiet_train_logs()
    cfg = unshared(config["cfg"])
    stage, context = cfg.train.stage1, ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    set_stage(model, 1)
    model = prepare_model(model)
    device = get_device()
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), stage)
    start, metrics = _restore(optimizer, unwrap(model).load_state_dict)
    best = {k: metrics[k] for k in ("best_val", "best_epoch") if k in metrics}
    autocast = cfg.train.use_gpu and cfg.train.mixed_precision and device.type == "cuda"
    shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config.get("validate") else None
    target_dtype = torch.float32 if cfg.model.multi_label else torch.int64
    dtypes = {"frames": torch.float32, "target": target_dtype}  # Ray wants every column
    steps = cfg.model.num_steps
    for epoch in range(start, stage.epochs):
        set_epoch(config.get("clock"), epoch)  # row order and seeds of this epoch
        set_lr(optimizer, epoch_lr(stage, epoch))
        model.train()
        began, loss_sum, correct, seen = time.perf_counter(), 0.0, 0.0, 0.0
        step_sum = torch.zeros(steps, dtype=torch.float64)
        for batch in shard.iter_torch_batches(
            batch_size=cfg.data.batch_size, dtypes=dtypes, device=device
        ):
            frames, target = batch["frames"], batch["target"]
            loss, last_logits, step_losses = stage1_step(
                model, frames, target, cfg, autocast=autocast
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = frames.shape[0]
            loss_sum += float(loss.detach()) * n
            step_sum += step_losses.double().cpu() * n
            seen += n
            if not cfg.model.multi_label:
                correct += float((last_logits.argmax(-1) == target).sum())
        loss_sum, correct, seen, *step_sum = _all_reduce(
            [loss_sum, correct, seen, *step_sum.tolist()], device
        )
        if seen == 0:
            raise RuntimeError("stage 1: no training video could be decoded (see skipped/)")
        metrics = {
            "stage": 1,
            "epoch": epoch + 1,
            "resumed_from": start,
            "lr": optimizer.param_groups[0]["lr"],
            "loss": loss_sum / max(seen, 1),
            "train_top1_last_step": correct / max(seen, 1),
            "videos": int(seen),
            **{f"loss_step_{t + 1}": v / max(seen, 1) for t, v in enumerate(step_sum)},
        }
        last = epoch + 1 == stage.epochs
        if val_shard is not None and ((epoch + 1) % cfg.train.val_every == 0 or last):
            val = _validate(model, val_shard, cfg, device, dtypes, per_step_losses)
            metrics.update(val)
            metric = val[f"val_{_metric_name(cfg)}"]
            if "best_val" not in best or metric > best["best_val"]:
                best = {"best_val": metric, "best_epoch": epoch + 1}
                if rank == 0 and config.get("best_uri"):
                    _save_best(unwrap(model), cfg, config, epoch + 1, metric)
        metrics.update(best)
        metrics["seconds"] = time.perf_counter() - began
        _end_epoch(metrics, stage.epochs, unwrap(model), optimizer, rank, config.get("fault"))
    if start >= stage.epochs:  # resumed a finished run: report it again so fit() returns it
        _report_finished(metrics, rank)


def _metric_name(cfg: Any) -> str:
    """The task's metric: mAP for multi-label data (HVU), top-1 otherwise."""
    return "mAP" if cfg.model.multi_label else "top1"


@torch.no_grad()
def _validate(model, val_shard, cfg, device, dtypes, per_step_losses) -> dict[str, float]:
    """Validation on every worker's shard; per-video scores are gathered so every rank
    computes the same metric (mAP needs all videos at once). Metric of f_T (w/o exit) and
    the mean per-step loss."""
    import numpy as np

    from frameexit.evaluation import accuracy

    model.eval()
    logits, targets, loss_sum = [], [], 0.0
    for batch in val_shard.iter_torch_batches(
        batch_size=cfg.data.batch_size, dtypes=dtypes, device=device
    ):
        out = unwrap(model)(batch["frames"])
        step_logits = out.logits.float()
        loss_sum += float(
            per_step_losses(step_logits, batch["target"], cfg.model.multi_label).sum()
        )
        logits.append(step_logits[:, -1].cpu().numpy())
        targets.append(batch["target"].cpu().numpy())
    mine = (
        np.concatenate(logits) if logits else np.zeros((0, cfg.model.num_classes), np.float32),
        np.concatenate(targets) if targets else np.zeros((0,), np.int64),
    )
    gathered = [mine]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, mine)
    all_logits = np.concatenate([g[0] for g in gathered])
    all_targets = np.concatenate([g[1] for g in gathered])
    (loss_sum,) = _all_reduce([loss_sum], device)
    n = len(all_logits)
    name = _metric_name(cfg)
    value = accuracy(all_logits, all_targets, multi_label=cfg.model.multi_label) if n else 0.0
    model.train()
    return {
        f"val_{name}": float(value),
        "val_loss": loss_sum / max(n * cfg.model.num_steps, 1),
        "val_videos": int(n),
    }


def _gate_inputs(batches) -> Any:
    """``(z, ℓ_t)`` pairs of Ray Data batches of the feature cache."""
    return ((batch["features"], batch["step_losses"]) for batch in batches)


def _save_best(model, cfg, config: dict[str, Any], epoch: int, metric: float) -> None:
    """Rank 0: the best model so far as a frameexit checkpoint (atomic, credentials
    redacted), so downstream stages use the epoch with the best validation metric."""
    from frameexit.checkpoint import save_model_checkpoint
    from frameexit.config import redacted

    name = _metric_name(cfg)
    save_model_checkpoint(
        model,
        redacted(cfg),
        config["best_uri"],
        storage_options=unshared(config.get("storage_options")) or None,
        extra={"stage": 1, "epoch": epoch, f"val_{name}": metric, "selected_by": f"val_{name}"},
        class_names=config.get("class_names"),
    )


def stage2_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of stage 2 (``config``: ``cfg`` dict, ``stage1_uri``, ``fault``)."""
    import ray.train
    from ray.train.torch import get_device, prepare_model

    from frameexit.checkpoint import model_from_state, read_model_checkpoint
    from frameexit.losses import set_stage

    quiet_train_logs()
    cfg = unshared(config["cfg"])
    stage, context = cfg.train.stage2, ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(cfg.train.seed)
    weights, _, _ = read_model_checkpoint(
        config["stage1_uri"], storage_options=unshared(config.get("storage_options")) or None
    )
    model = model_from_state(cfg.model, weights, source=config["stage1_uri"])
    set_stage(model, 2)
    head = prepare_model(GateHead(model))
    device = get_device()
    gates = unwrap(head).model.gates
    optimizer = make_optimizer((p for p in gates.parameters() if p.requires_grad), stage)
    start, metrics = _restore(optimizer, gates.load_state_dict)
    shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config.get("validate") else None
    beta = cfg.train.beta
    buffer = max(8 * cfg.data.batch_size, 256)  # rows: the cache follows the manifest order
    for epoch in range(start, stage.epochs):
        began = time.perf_counter()
        batches = shard.iter_torch_batches(
            batch_size=cfg.data.batch_size,
            dtypes=torch.float32,
            device=device,
            local_shuffle_buffer_size=buffer,
            local_shuffle_seed=cfg.train.seed * 1000 + epoch + rank,
        )
        sums = gate_epoch(head, optimizer, stage, epoch, _gate_inputs(batches), beta)
        metrics = {
            "stage": 2,
            "epoch": epoch + 1,
            "resumed_from": start,
            "lr": optimizer.param_groups[0]["lr"],
            **gate_metrics(_all_reduce(sums, device)),
        }
        if val_shard is not None:
            val = val_shard.iter_torch_batches(
                batch_size=cfg.data.batch_size, dtypes=torch.float32, device=device
            )
            sums = gate_sums(head, _gate_inputs(val), beta)
            metrics.update(gate_metrics(_all_reduce(sums, device), "val_"))
        metrics["seconds"] = time.perf_counter() - began
        _end_epoch(metrics, stage.epochs, gates, optimizer, rank, config.get("fault"))
    if start >= stage.epochs:
        _report_finished(metrics, rank)


def _end_epoch(
    metrics: dict[str, Any],
    epochs: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    fault: Any,
) -> None:
    """Log the epoch, report it with rank 0's checkpoint (weights of ``module``, optimiser,
    epoch, metrics), then fire the test fault hook if it targets this stage and epoch."""
    state = None
    if rank == 0:
        _say(_progress(metrics, epochs))
        state = {
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": metrics["epoch"],
            "metrics": metrics,
        }
    _report(metrics, state)
    _maybe_fail(fault, metrics["stage"], metrics["epoch"], rank)


def _report_finished(metrics: dict[str, Any], rank: int) -> None:
    import ray.train

    checkpoint = ray.train.get_checkpoint() if rank == 0 else None
    if checkpoint is None:
        ray.train.report(dict(metrics))
        return
    with checkpoint.as_directory() as directory:
        ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(directory))


def _say(line: str) -> None:
    """One progress line on the worker's stdout (forwarded once to the driver; Ray Train's
    patched ``print`` would log it twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _progress(metrics: dict[str, Any], epochs: int) -> str:
    """One console line per epoch: losses, metrics, lr, time and ETA."""

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:.1f}%"

    epoch, seconds = metrics["epoch"], float(metrics.get("seconds", 0.0))
    parts = [
        f"stage {metrics['stage']}",
        f"epoch {epoch:>3}/{epochs}",
        f"loss {metrics['loss']:.4f}",
    ]
    if "train_top1_last_step" in metrics:
        parts.append(f"train top1 {pct('train_top1_last_step')}")
    if "pseudo_label_rate" in metrics:
        parts += [f"pseudo-labels {pct('pseudo_label_rate')}", f"agree {pct('gate_agreement')}"]
    for name in ("top1", "mAP"):
        if f"val_{name}" in metrics:
            parts.append(f"val {name} {pct(f'val_{name}')}")
            if "best_val" in metrics:
                parts.append(f"(best {100 * metrics['best_val']:.1f}% @{metrics['best_epoch']})")
    if "val_gate_agreement" in metrics:
        parts.append(f"val agree {pct('val_gate_agreement')}")
    eta = seconds * (epochs - epoch)
    parts += [
        f"lr {metrics['lr']:.0e}",
        f"{seconds:.1f} s",
        f"ETA {int(eta // 60)}m{int(eta % 60):02d}s",
    ]
    return "[frameexit] " + "  ".join(parts)


def read_state(checkpoint) -> dict[str, Any]:
    """The ``state.pt`` dict of a Ray Train checkpoint written by these loops."""
    with checkpoint.as_directory() as directory:
        return torch.load(
            os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True
        )

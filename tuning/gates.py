"""A β trial's gates trained inside the trial's own process, when its cache fits in memory.

A gate is a 64-unit MLP on cached features: on a small cluster the start-up of a Ray Train
run (workers, process group, dataset shards — tens of seconds) is most of a β trial. So a
trial whose train + validation cache is at most ``sweep.stage2_in_process_mb`` reads it
into memory and trains here; a larger cache goes through Ray Train
(``pipelines.stages.run_stage2``)::

    features/{train,val}/*.parquet ──pyarrow──► z [N, T, D], ℓ_t [N, T]  (rows by manifest row)
    stage-1 model ─► set_stage(2) ─► GateHead ─► per epoch: lr = epoch_lr(stage2, epoch),
        rows in a permutation seeded by (train.seed, epoch), batches of data.batch_size:
        frameexit.training.gate_epoch (y^g_t = [ℓ_t ≤ β·exp(t/2)], L_gate), Adam
    ─► {run}/checkpoints/stage2.pt   (the file run_stage2 writes: same format, same place)

Same computation as the Ray Train loop (``pipelines.loops.stage2_loop``: same seed, initial
gates, optimiser, schedule, batch size, epoch function ``gate_epoch`` and checkpoint); only the row
order within an epoch differs (Ray Data's block order + local shuffle buffer there). With
one batch per epoch the order cannot matter: the two give the same gate weights
(``tests/test_tuning_sweep.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from frameexit.checkpoint import model_from_state, read_model_checkpoint, save_model_checkpoint
from frameexit.config import Config, redacted
from frameexit.losses import set_stage
from frameexit.storage import pyarrow_filesystem
from frameexit.training import GateHead, gate_epoch, gate_metrics, gate_sums, make_optimizer
from pipelines.common import RunPaths, uri_options
from pipelines.evaluate import tensor_column

log = logging.getLogger("frameexit.tuning.gates")

IN_PROCESS = "in_process"
RAY_TRAIN = "ray_train"


def cache_megabytes(cfg: Config, cache: dict[str, str]) -> float:
    """What the train + validation splits of ``cache`` take in memory as float32 features
    and losses (``rows × T × (D + 1) × 4`` bytes); rows are counted from Parquet footers."""
    import pyarrow.dataset as pads

    rows = 0
    for split in dict.fromkeys([cfg.data.train_split, cfg.data.val_split]):
        if split in cache:
            fs, path = pyarrow_filesystem(cache[split], uri_options(cfg, cache[split]))
            rows += pads.dataset(path, format="parquet", filesystem=fs).count_rows()
    return rows * cfg.model.num_steps * (cfg.model.feature_dim + 1) * 4 / 1024**2


def stage2_mode(cfg: Config, cache: dict[str, str], limit_mb: float) -> str:
    """Where a β trial on ``cache`` trains its gates: :data:`IN_PROCESS` when the cache
    takes at most ``limit_mb`` MB in memory (``sweep.stage2_in_process_mb``), else
    :data:`RAY_TRAIN`."""
    return IN_PROCESS if limit_mb > 0 and cache_megabytes(cfg, cache) <= limit_mb else RAY_TRAIN


def read_gate_inputs(cfg: Config, uri: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``z [N, T, D]`` and ``step_losses [N, T]`` of one cache split, float32, in manifest row
    order (so the order, and with it the training, does not depend on file names)."""
    import pyarrow.dataset as pads

    fs, path = pyarrow_filesystem(uri, uri_options(cfg, uri))
    table = pads.dataset(path, format="parquet", filesystem=fs).to_table(
        columns=["row", "features", "step_losses"]
    )
    if table.num_rows == 0:
        raise ValueError(f"{uri}: the feature cache is empty")
    order = np.argsort(table.column("row").to_numpy(), kind="stable")
    steps = cfg.model.num_steps
    z = tensor_column(table.column("features"), (steps, -1))[order]
    losses = tensor_column(table.column("step_losses"), (steps,))[order]
    return torch.from_numpy(np.ascontiguousarray(z)), torch.from_numpy(losses)


def train_gates_in_process(
    cfg: Config, stage1_uri: str, cache: dict[str, str], *, name: str = "stage2"
) -> str:
    """Stage 2 in this process on the cached train split, validated on the cached
    validation split every epoch; writes and returns ``{run}/checkpoints/{name}.pt`` (the
    stage-1 model with the gates of the last epoch, as ``run_stage2`` does)."""
    began = time.perf_counter()
    stage, beta, batch = cfg.train.stage2, cfg.train.beta, cfg.data.batch_size
    torch.set_num_threads(1)  # β trials run side by side, one core each
    torch.manual_seed(cfg.train.seed)
    weights, _, _ = read_model_checkpoint(
        stage1_uri, storage_options=uri_options(cfg, stage1_uri) or None
    )
    model = model_from_state(cfg.model, weights, source=stage1_uri)
    set_stage(model, 2)
    head = GateHead(model)
    optimizer = make_optimizer((p for p in model.gates.parameters() if p.requires_grad), stage)
    z, losses = read_gate_inputs(cfg, cache[cfg.data.train_split])
    val_uri = cache.get(cfg.data.val_split)
    val = None
    if val_uri and cfg.data.val_split != cfg.data.train_split:
        val = read_gate_inputs(cfg, val_uri)
    metrics: dict[str, Any] = {}
    for epoch in range(stage.epochs):
        order = torch.randperm(
            len(z), generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch)
        )
        batches = (
            (z[idx], losses[idx]) for idx in (order[i : i + batch] for i in range(0, len(z), batch))
        )
        sums = gate_epoch(head, optimizer, stage, epoch, batches, beta)
        metrics = {
            "stage": 2,
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            **gate_metrics(sums),
        }
        if val is not None:
            vz, vl = val
            in_order = ((vz[i : i + batch], vl[i : i + batch]) for i in range(0, len(vz), batch))
            metrics.update(gate_metrics(gate_sums(head, in_order, beta), "val_"))
        log.info(
            "stage 2 (in process) epoch %d/%d: loss %.4f, gate agreement %.3f",
            epoch + 1, stage.epochs, metrics["loss"], metrics["gate_agreement"],
        )  # fmt: skip
    uri = RunPaths(cfg).model(name)
    save_model_checkpoint(
        model,
        redacted(cfg),
        uri,
        storage_options=RunPaths(cfg).options,
        extra={
            "stage": 2,
            "epochs": int(stage.epochs),
            "beta": beta,
            "stage1": stage1_uri,
            "trained": IN_PROCESS,
            **{f"final_{k}": v for k, v in metrics.items() if isinstance(v, int | float)},
        },
    )
    log.info("stage 2 (in process) done in %.1f s: %s", time.perf_counter() - began, uri)
    return uri


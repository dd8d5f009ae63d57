"""What the single-process method benchmarks share (``bench/method.py``, ``bench/paper.py``).

Plain PyTorch in one process, with the step functions the Ray Train loops use
(``frameexit.training``), so a finding here is a finding about the method::

    bench_corpus ─► decode_policies (each policy's T frames per video, once, cached .npz)
    train_stage1 (backbone + pooling + classifiers, L_cls)  ─► pooled_outputs (z, logits, ℓ_t)
    train_gates (gates only, L_gate at β, on the cached z / ℓ_t) ─► frameexit_row, uniform_row

``args`` is the benchmark's argparse namespace: ``image_size, feature_dim, classes, steps,
epochs, gate_epochs, batch_size, lr, seed`` (and ``data``, ``videos`` for the corpus).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from frameexit.config import Config, ModelConfig, StageConfig
from frameexit.exits import exit_steps
from frameexit.losses import per_step_losses, set_stage
from frameexit.operating_point import paper_threshold
from frameexit.synthetic import generate_corpus
from frameexit.training import GateHead, epoch_lr, make_optimizer, set_lr, stage1_step, stage2_step
from frameexit.transforms import frames_to_tensor

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# β is chosen on val; test is large so that "1 point" means more than one video.
SPLITS = {"train": 0.6, "val": 0.15, "test": 0.25}
EVAL_BATCH = 64

# (num_frames, num_steps, video id) -> frame indices; the id seeds random policies
Policy = Callable[[int, int, str], list[int]]


def fixed(policy: Callable[[int, int], list[int]]) -> Policy:
    """A deterministic policy of ``frameexit.policy`` as a :data:`Policy`."""
    return lambda n, steps, _video: policy(n, steps)


def seeded_random(seed: int) -> Policy:
    """The ``random`` policy, each video's order drawn from ``(seed, video id)``."""
    from frameexit.policy import random_policy, video_seed

    return lambda n, steps, video: random_policy(n, steps, seed=video_seed(seed, video))


# --- data -----------------------------------------------------------------------------


def bench_corpus(
    data: str | Path,
    *,
    videos: int,
    classes: int,
    seed: int,
    complementary: int = 0,
    image_size: int = 64,
    splits: Mapping[str, float] = SPLITS,
) -> Path:
    """The benchmark corpus folder under ``data`` (generated once, then reused): ``videos``
    synthetic videos, ``classes`` classes of which ``complementary`` are complementary,
    split by ``splits`` (default train/val/test 0.6/0.15/0.25). Returns the manifest path."""
    name = f"bench-synthetic-{videos}-s{seed}" + (f"-c{complementary}" if complementary else "")
    if image_size != 64:
        name += f"-{image_size}px"
    if dict(splits) != SPLITS:
        name += "-" + "-".join(f"{k}{round(100 * v)}" for k, v in splits.items())
    out = Path(data) / name
    manifest = out / "manifest.parquet"
    if not manifest.exists():
        t0 = time.perf_counter()
        generate_corpus(
            str(out),
            num_videos=videos,
            num_classes=classes,
            complementary_classes=complementary,
            seed=seed,
            image_size=image_size,
            workers=2,
            splits=dict(splits),
        )
        print(f"corpus: {videos} videos generated in {time.perf_counter() - t0:.0f} s -> {out}")
    return manifest


def decode_policies(
    table: pd.DataFrame,
    steps: int,
    policies: Mapping[str, Policy],
    cache: Path,
    *,
    test_policies: Mapping[str, Policy] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per split: uint8 frames ``[N, T, H, W, 3]`` each policy visits (``test_policies``
    on the test split only) and ``label`` ``[N]``; decoded once, cached in ``cache``."""
    from frameexit.video import open_video

    if cache.exists():
        blob = np.load(cache)
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in blob.files:
            split, name = key.split("/", 1)
            out.setdefault(split, {})[name] = blob[key]
        return out
    t0 = time.perf_counter()
    out = {}
    for split in ("train", "val", "test"):
        rows = table[table["split"] == split]
        wanted_policies = dict(policies)
        if split == "test":
            wanted_policies.update(test_policies or {})
        frames: dict[str, list[np.ndarray]] = {name: [] for name in wanted_policies}
        for uri in rows["video"]:
            with open_video(uri) as reader:
                n, video = reader.num_frames, Path(uri).stem
                wanted = {name: list(p(n, steps, video)) for name, p in wanted_policies.items()}
                union = sorted({i for idx in wanted.values() for i in idx})
                decoded = dict(zip(union, reader.get(union), strict=True))
            for name, idx in wanted.items():
                frames[name].append(np.stack([decoded[i] for i in idx]))
        out[split] = {name: np.stack(v) for name, v in frames.items()}
        out[split]["label"] = np.asarray([ids[0] for ids in rows["label_ids"]], dtype=np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{s}/{k}": v for s, d in out.items() for k, v in d.items()})
    print(f"decoded frames in {time.perf_counter() - t0:.0f} s -> {cache}")
    return out


def cache_name(prefix: str, parts: Mapping[str, object]) -> str:
    """A file name for a decoded-frames cache that changes with everything it depends on."""
    key = hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()[:12]
    return f"{prefix}-{key}.npz"


def to_tensor(frames: np.ndarray, size: int, *, train: bool, generator=None) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] → normalised float [B, T, 3, S, S] (train: crop + flip)."""
    return torch.stack(
        [
            frames_to_tensor(
                v, image_size=size, mean=MEAN, std=STD, train=train, generator=generator
            )
            for v in frames
        ]
    )


# --- models ---------------------------------------------------------------------------


def model_config(args: argparse.Namespace, *, pooling: str = "max") -> ModelConfig:
    """The benchmark's FrameExit: the tiny backbone at ``args.image_size``."""
    return ModelConfig(
        backbone="tiny",
        feature_dim=args.feature_dim,
        num_classes=args.classes,
        num_steps=args.steps,
        image_size=args.image_size,
        pooling=pooling,
    )


class PredictionAveraging(nn.Module):
    """Ablation: one classifier per frame, step-t answer = mean of the first t softmaxes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from frameexit.backbones import build_backbone

        self.backbone = build_backbone(cfg.backbone, feature_dim=cfg.feature_dim)
        self.classifier = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def frame_logits(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        return self.classifier(self.backbone(frames.flatten(0, 1))).view(b, t, -1)

    def step_probs(self, frames: torch.Tensor) -> torch.Tensor:
        probs = self.frame_logits(frames).softmax(-1)
        steps = torch.arange(1, probs.shape[1] + 1, dtype=probs.dtype).view(1, -1, 1)
        return probs.cumsum(1) / steps


def train_stage1(
    model: nn.Module,
    frames: np.ndarray,
    labels: np.ndarray,
    args: argparse.Namespace,
    *,
    averaging: bool = False,
    quiet: bool = False,
) -> nn.Module:
    """Stage 1 in this process (``averaging``: a :class:`PredictionAveraging` model,
    cross-entropy on every frame); returns the model in eval mode."""
    stage = StageConfig(
        epochs=args.epochs, lr=args.lr, milestones=[max(1, int(args.epochs * 0.75))]
    )
    if not averaging:
        set_stage(model, 1)
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), stage)
    cfg = Config()
    cfg.model = model_config(args)
    generator = torch.Generator().manual_seed(args.seed)
    n = len(labels)
    for epoch in range(stage.epochs):
        set_lr(optimizer, epoch_lr(stage, epoch))
        model.train()
        order = torch.randperm(n, generator=generator).numpy()
        t0, total, correct = time.perf_counter(), 0.0, 0
        for start in range(0, n, args.batch_size):
            idx = order[start : start + args.batch_size]
            x = to_tensor(frames[idx], args.image_size, train=True, generator=generator)
            y = torch.as_tensor(labels[idx])
            if averaging:
                logits = model.frame_logits(x)
                loss = nn.functional.cross_entropy(
                    logits.flatten(0, 1), y.repeat_interleave(x.shape[1])
                )
                last = logits.mean(1)
            else:
                loss, last, _ = stage1_step(model, x, y, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            correct += int((last.argmax(-1) == y).sum())
        if not quiet or epoch + 1 == stage.epochs:
            print(
                f"  epoch {epoch + 1}/{stage.epochs} loss {total / n:.3f} "
                f"train acc {100 * correct / n:.1f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    model.eval()
    return model


@torch.no_grad()
def pooled_outputs(model, frames: np.ndarray, labels: np.ndarray, args: argparse.Namespace):
    """z [N, T, D], logits [N, T, K], per-step losses [N, T] (eval transform)."""
    zs, logits = [], []
    for start in range(0, len(frames), EVAL_BATCH):
        out = model(to_tensor(frames[start : start + EVAL_BATCH], args.image_size, train=False))
        zs.append(out.features)
        logits.append(out.logits)
    z, lg = torch.cat(zs), torch.cat(logits)
    return z, lg, per_step_losses(lg, torch.as_tensor(labels))


@torch.no_grad()
def averaged_probs(model: PredictionAveraging, frames: np.ndarray, args) -> torch.Tensor:
    """Step-t class probabilities [N, T, K] of a prediction-averaging model."""
    return torch.cat(
        [
            model.step_probs(to_tensor(frames[s : s + EVAL_BATCH], args.image_size, train=False))
            for s in range(0, len(frames), EVAL_BATCH)
        ]
    )


def train_gates(model, z: torch.Tensor, losses: torch.Tensor, beta: float, args):
    """Stage 2 on cached z and losses; returns a model copy with trained gates."""
    gated = copy.deepcopy(model)
    set_stage(gated, 2)
    head = GateHead(gated)
    stage = StageConfig(
        epochs=args.gate_epochs, lr=args.lr, milestones=[max(1, int(args.gate_epochs * 0.7))]
    )
    optimizer = make_optimizer((p for p in gated.gates.parameters() if p.requires_grad), stage)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(stage.epochs):
        set_lr(optimizer, epoch_lr(stage, epoch))
        head.train()
        order = torch.randperm(len(z), generator=generator)
        for start in range(0, len(z), 32):
            idx = order[start : start + 32]
            loss, _, _ = stage2_step(head, z[idx], losses[idx], beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    gated.eval()
    return gated


# --- evaluation -----------------------------------------------------------------------


@dataclass
class Row:
    method: str
    top1: float
    frames: float
    gflops: float


def accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(-1).numpy() == labels).mean())


@torch.no_grad()
def frameexit_row(
    name: str, model, z, logits, labels, cost: float, *, threshold: float | None = None
) -> tuple[Row, np.ndarray]:
    """FrameExit's answer per video at exit threshold ``threshold`` (default the model's):
    its row and the exit step of every video."""
    _, probs, first = model.step_outputs(z)
    tau = paper_threshold(model.cfg) if threshold is None else threshold
    steps = exit_steps(probs, tau, first_step_exits=first)
    chosen = logits[torch.arange(len(z)), torch.as_tensor(steps - 1)]
    return Row(
        name, accuracy(chosen, labels), float(steps.mean()), float(steps.mean() * cost)
    ), steps


def choose_beta(val_rows: Mapping[float, Row], val_full: float, tolerance: float = 0.01) -> float:
    """The main β, chosen on val: the cheapest within ``tolerance`` of w/o exit on val,
    else the cheapest of the most accurate ones (val is small: ties are common)."""
    best = max(r.top1 for r in val_rows.values())
    within = [b for b, r in val_rows.items() if r.top1 >= val_full - tolerance - 1e-9]
    within = within or [b for b, r in val_rows.items() if r.top1 >= best - 1e-9]
    return min(within, key=lambda b: (val_rows[b].gflops, b))


@torch.no_grad()
def uniform_row(model, frames: np.ndarray, k: int, labels, args, cost: float) -> Row:
    """Uniform-K: K frames spread evenly (the first K of ``frames``), pooled, f_K."""
    logits = []
    for start in range(0, len(frames), EVAL_BATCH):
        x = to_tensor(frames[start : start + EVAL_BATCH, :k], args.image_size, train=False)
        out = model.heads(model.frame_features(x))
        logits.append(out.logits[:, k - 1])
    return Row(f"uniform-{k}", accuracy(torch.cat(logits), labels), k, k * cost)


def print_table(rows: list[Row], full_gflops: float) -> None:
    width = max(len(r.method) for r in rows)
    print(
        f"\n{'method':<{width}}  {'top1 %':>7}  {'frames':>6}  {'GFLOPs':>7}  {'vs w/o exit':>11}"
    )
    for r in rows:
        print(
            f"{r.method:<{width}}  {100 * r.top1:7.1f}  {r.frames:6.2f}  {r.gflops:7.3f}  "
            f"{full_gflops / r.gflops:10.2f}x"
        )

"""Does the method work? FrameExit vs its baselines on one synthetic test split.

    python bench/method.py              # 1200 videos, 64 px, T = 10; reuses data/bench-*
    python bench/method.py --videos 600 --epochs 12      # quicker, noisier

Plain PyTorch in one process (the method, not Ray, is under test here), with the same
step functions as the Ray Train loops (frameexit.training). What it does::

    generate_corpus (once) ─► decode the frames each policy visits (once, cached .npz)
    stage 1  coarse-to-fine + max pooling    ─► FrameExit model M
             sequential + max pooling        ─► M_seq     (policy ablation)
             coarse-to-fine, per-frame head  ─► M_avg     (prediction averaging ablation)
    stage 2  gates of M at every β (and of M_seq at the main β), on cached z / losses
    test     w/o exit (all T) · FrameExit per β · fixed budget at FrameExit's mean frames
             (first K frames of the coarse-to-fine order, f_K) · uniform-K (K frames
             spread evenly, pooled, f_K) · sequential vs coarse-to-fine · feature pooling
             vs prediction averaging

GFLOPs per video = frames × (tiny backbone + pooling + classifier + gate) at the image
size (``frameexit.flops.step_gflops``). Target: FrameExit within 1 point of w/o exit at
>= 2.5x fewer GFLOPs, and ahead of the fixed budget at equal mean frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from frameexit.config import ModelConfig, StageConfig
from frameexit.exits import exit_steps
from frameexit.flops import step_gflops
from frameexit.losses import per_step_losses, set_stage
from frameexit.model import build_model
from frameexit.policy import coarse_to_fine, sequential, uniform
from frameexit.synthetic import generate_corpus
from frameexit.training import GateHead, epoch_lr, make_optimizer, set_lr, stage1_step, stage2_step
from frameexit.transforms import frames_to_tensor

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# β is chosen on val; test is large so that "1 point" means more than one video.
SPLITS = {"train": 0.6, "val": 0.15, "test": 0.25}


# --- data -----------------------------------------------------------------------------


def corpus(args) -> pd.DataFrame:  # noqa: F821
    import pandas as pd

    out = Path(args.data) / f"bench-synthetic-{args.videos}-s{args.seed}"
    manifest = out / "manifest.parquet"
    if not manifest.exists():
        t0 = time.perf_counter()
        generate_corpus(
            str(out),
            num_videos=args.videos,
            num_classes=args.classes,
            seed=args.seed,
            image_size=64,
            workers=2,
            splits=SPLITS,
        )
        print(f"corpus: {args.videos} videos generated in {time.perf_counter() - t0:.0f} s")
    return pd.read_parquet(manifest)


def decode(table, args) -> dict[str, dict[str, np.ndarray]]:
    """Per split: uint8 frames [N, T, H, W, 3] for each policy (+ uniform-K on test)."""
    from frameexit.video import open_video

    cache = Path(args.data) / f"bench-frames-{args.videos}-s{args.seed}-T{args.steps}.npz"
    if cache.exists():
        blob = np.load(cache)
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in blob.files:
            split, name = key.split("/", 1)
            out.setdefault(split, {})[name] = blob[key]
        return out
    t0 = time.perf_counter()
    T = args.steps
    out = {}
    for split in ("train", "val", "test"):
        rows = table[table["split"] == split]
        policies = {"c2f": coarse_to_fine, "seq": sequential}
        if split == "test":
            policies.update(
                {f"uniform{k}": (lambda n, _t, k=k: uniform(n, k)) for k in range(1, T + 1)}
            )
        frames = {name: [] for name in policies}
        for uri in rows["video"]:
            with open_video(uri) as reader:
                n = reader.num_frames
                wanted = {name: list(p(n, T)) for name, p in policies.items()}
                union = sorted({i for idx in wanted.values() for i in idx})
                decoded = dict(zip(union, reader.get(union), strict=True))
            for name, idx in wanted.items():
                frames[name].append(np.stack([decoded[i] for i in idx]))
        out[split] = {
            name: np.stack(v) for name, v in frames.items() if name.startswith(("c2f", "seq"))
        }
        for k in range(1, T + 1):
            if f"uniform{k}" in frames:
                # pad uniform-K to T frames so one array holds it (only the first K are used)
                arr = np.stack(frames[f"uniform{k}"])
                out[split][f"uniform{k}"] = arr
        out[split]["label"] = np.asarray([ids[0] for ids in rows["label_ids"]], dtype=np.int64)
    np.savez(cache, **{f"{s}/{k}": v for s, d in out.items() for k, v in d.items()})
    print(f"decoded frames in {time.perf_counter() - t0:.0f} s -> {cache}")
    return out


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
    model: nn.Module, frames: np.ndarray, labels: np.ndarray, args, *, averaging=False
):
    stage = StageConfig(
        epochs=args.epochs, lr=args.lr, milestones=[max(1, int(args.epochs * 0.75))]
    )
    if not averaging:
        set_stage(model, 1)
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), stage)
    cfg = _cfg_for(args)
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
                loss, last = stage1_step(model, x, y, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            correct += int((last.argmax(-1) == y).sum())
        print(
            f"  epoch {epoch + 1}/{stage.epochs} loss {total / n:.3f} "
            f"train acc {100 * correct / n:.1f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    model.eval()
    return model


@torch.no_grad()
def pooled_outputs(model, frames: np.ndarray, labels: np.ndarray, args):
    """z [N, T, D], logits [N, T, K], per-step losses [N, T] (eval transform)."""
    zs, logits = [], []
    for start in range(0, len(frames), 64):
        out = model(to_tensor(frames[start : start + 64], args.image_size, train=False))
        zs.append(out.features)
        logits.append(out.logits)
    z, lg = torch.cat(zs), torch.cat(logits)
    return z, lg, per_step_losses(lg, torch.as_tensor(labels))


def train_gates(model, z: torch.Tensor, losses: torch.Tensor, beta: float, args):
    """Stage 2 on cached z and losses; returns a model copy with trained gates."""
    import copy

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
def frameexit_row(name: str, model, z, logits, labels, cost: float) -> tuple[Row, np.ndarray]:
    _, probs, first = model.step_outputs(z)
    steps = exit_steps(probs, model.cfg.exit_threshold, first_step_exits=first)
    chosen = logits[torch.arange(len(z)), torch.as_tensor(steps - 1)]
    return Row(
        name, accuracy(chosen, labels), float(steps.mean()), float(steps.mean() * cost)
    ), steps


@torch.no_grad()
def uniform_row(model, frames: np.ndarray, k: int, labels, args, cost: float) -> Row:
    logits = []
    for start in range(0, len(frames), 64):
        x = to_tensor(frames[start : start + 64, :k], args.image_size, train=False)
        out = model.heads(model.frame_features(x))
        logits.append(out.logits[:, k - 1])
    return Row(f"uniform-{k}", accuracy(torch.cat(logits), labels), k, k * cost)


def _cfg_for(args):
    from frameexit.config import Config

    cfg = Config()
    cfg.model = model_config(args)
    return cfg


def model_config(args) -> ModelConfig:
    return ModelConfig(
        backbone="tiny",
        feature_dim=args.feature_dim,
        num_classes=args.classes,
        num_steps=args.steps,
        image_size=args.image_size,
        pooling="max",
    )


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=1200)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--gate-epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--betas",
        type=float,
        nargs="+",
        default=[1e-3, 3e-3, 1e-2, 2e-2, 3e-2, 4e-2, 5e-2, 7e-2, 1e-1],
    )
    parser.add_argument(
        "--main-beta",
        type=float,
        default=None,
        help="β of the ablations (default: the cheapest β within 1 point)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=os.environ.get("FRAMEEXIT_DATA", str(ROOT / "data")))
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    began = time.perf_counter()

    table = corpus(args)
    data = decode(table, args)
    train, val, test = data["train"], data["val"], data["test"]
    y_train, y_val, y_test = train["label"], val["label"], test["label"]
    print(
        f"train {len(y_train)} / val {len(y_val)} / test {len(y_test)} videos, T = {args.steps}, "
        f"{args.image_size} px, {args.classes} classes"
    )
    cost = step_gflops(build_model(model_config(args)), args.image_size).total
    T = args.steps

    print("stage 1: coarse-to-fine + max pooling")
    model = train_stage1(build_model(model_config(args)), train["c2f"], y_train, args)
    z_tr, _, l_tr = pooled_outputs(model, train["c2f"], y_train, args)
    z_va, lg_va, _ = pooled_outputs(model, val["c2f"], y_val, args)
    z_te, lg_te, _ = pooled_outputs(model, test["c2f"], y_test, args)

    rows = [Row(f"w/o exit (all {T} frames)", accuracy(lg_te[:, -1], y_test), T, T * cost)]
    fe_rows, val_rows = {}, {}
    for beta in args.betas:
        gated = train_gates(model, z_tr, l_tr, beta, args)
        fe_rows[beta] = frameexit_row(f"FrameExit β={beta:g}", gated, z_te, lg_te, y_test, cost)
        val_rows[beta] = frameexit_row("val", gated, z_va, lg_va, y_val, cost)[0]
        rows.append(fe_rows[beta][0])
    full = rows[0].top1
    # main β, chosen on val: the cheapest within 1 point of w/o exit on val, else the
    # cheapest of the most accurate ones (val is small: ties are common)
    val_full = accuracy(lg_va[:, -1], y_val)
    best = max(val_rows[b].top1 for b in args.betas)
    within = [b for b in args.betas if val_rows[b].top1 >= val_full - 0.01 - 1e-9]
    within = within or [b for b in args.betas if val_rows[b].top1 >= best - 1e-9]
    main_beta = args.main_beta or min(within, key=lambda b: val_rows[b].gflops)
    print(
        f"val: w/o exit {100 * val_full:.1f}; "
        + ", ".join(
            f"β={b:g}: {100 * r.top1:.1f} @ {r.frames:.2f} frames" for b, r in val_rows.items()
        )
    )
    main_row, main_steps = fe_rows[main_beta]
    mean_frames = main_row.frames

    lo, hi = math.floor(mean_frames), math.ceil(mean_frames)
    fixed = {k: accuracy(lg_te[:, k - 1], y_test) for k in {max(lo, 1), max(hi, 1)}}
    frac = mean_frames - lo
    fixed_acc = (1 - frac) * fixed[max(lo, 1)] + frac * fixed[max(hi, 1)]
    rows.append(
        Row(
            f"fixed budget, K={lo}|{hi} mixed to {mean_frames:.2f} frames (β={main_beta:g})",
            fixed_acc,
            mean_frames,
            mean_frames * cost,
        )
    )
    for k in sorted(fixed):
        rows.append(Row(f"fixed budget, first K={k} (coarse-to-fine)", fixed[k], k, k * cost))
    for k in sorted({max(lo, 1), max(hi, 1), T}):
        rows.append(uniform_row(model, test[f"uniform{k}"], k, y_test, args, cost))

    print("stage 1: sequential + max pooling")
    seq = train_stage1(build_model(model_config(args)), train["seq"], y_train, args)
    zs_tr, _, ls_tr = pooled_outputs(seq, train["seq"], y_train, args)
    zs_te, lgs_te, _ = pooled_outputs(seq, test["seq"], y_test, args)
    rows.append(
        Row(
            f"sequential policy, w/o exit ({T} frames)",
            accuracy(lgs_te[:, -1], y_test),
            T,
            T * cost,
        )
    )
    rows.append(
        frameexit_row(
            f"sequential policy, FrameExit β={main_beta:g}",
            train_gates(seq, zs_tr, ls_tr, main_beta, args),
            zs_te,
            lgs_te,
            y_test,
            cost,
        )[0]
    )
    rows.append(
        Row(
            f"coarse-to-fine policy, FrameExit β={main_beta:g}",
            main_row.top1,
            main_row.frames,
            main_row.gflops,
        )
    )

    print("stage 1: prediction averaging (per-frame classifier)")
    avg = train_stage1(
        PredictionAveraging(model_config(args)), train["c2f"], y_train, args, averaging=True
    )
    with torch.no_grad():
        probs = torch.cat(
            [
                avg.step_probs(to_tensor(test["c2f"][s : s + 64], args.image_size, train=False))
                for s in range(0, len(y_test), 64)
            ]
        )
    rows.append(
        Row(f"prediction averaging, {T} frames", accuracy(probs[:, -1], y_test), T, T * cost)
    )
    rows.append(Row(f"feature pooling (max), {T} frames", full, T, T * cost))
    k = max(1, round(mean_frames))
    rows.append(
        Row(
            f"prediction averaging, first {k} frames",
            accuracy(probs[:, k - 1], y_test),
            k,
            k * cost,
        )
    )
    rows.append(
        Row(
            f"feature pooling (max), first {k} frames",
            accuracy(lg_te[:, k - 1], y_test),
            k,
            k * cost,
        )
    )

    print_table(rows, T * cost)
    saving = rows[0].gflops / main_row.gflops
    verdict = {
        "within_1_point": main_row.top1 >= full - 0.01,
        "gflops_saving": saving,
        "saving_at_least_2.5x": saving >= 2.5,
        "beats_fixed_budget": main_row.top1 > fixed_acc,
        "main_beta": main_beta,
        "exit_histogram": np.bincount(main_steps, minlength=T + 1)[1:].tolist(),
        "seconds": time.perf_counter() - began,
    }
    meets = [
        f"β={b:g} ({100 * r.top1:.1f} @ {full_gflops_x(rows, r):.2f}x)"
        for b, (r, _) in fe_rows.items()
        if r.top1 >= full - 0.01 - 1e-9 and full_gflops_x(rows, r) >= 2.5
    ]
    print(
        f"test points within 1 point of w/o exit at >= 2.5x fewer GFLOPs: {', '.join(meets) or 'none'}"
    )
    verdict["test_betas_meeting_target"] = meets
    print(json.dumps(verdict))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": [r.__dict__ for r in rows], **verdict}, indent=2)
        )
    return rows


def full_gflops_x(rows: list[Row], row: Row) -> float:
    return rows[0].gflops / row.gflops


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


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

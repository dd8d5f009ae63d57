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
from pathlib import Path

import numpy as np
import pandas as pd
import torch

if __package__ in (None, ""):  # run as a script: bench/ and the repository importable
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import (  # noqa: E402
    ROOT,
    PredictionAveraging,
    Row,
    accuracy,
    averaged_probs,
    bench_corpus,
    cache_name,
    choose_beta,
    decode_policies,
    fixed,
    frameexit_row,
    model_config,
    pooled_outputs,
    print_table,
    train_gates,
    train_stage1,
    uniform_row,
)

from frameexit.flops import step_gflops  # noqa: E402
from frameexit.model import build_model  # noqa: E402
from frameexit.policy import coarse_to_fine, sequential, uniform  # noqa: E402


def load_data(args) -> dict[str, dict[str, np.ndarray]]:
    """The corpus and the frames of coarse-to-fine and sequential (+ uniform-K on test)."""
    manifest = bench_corpus(args.data, videos=args.videos, classes=args.classes, seed=args.seed)
    table = pd.read_parquet(manifest)
    uniform_k = {
        f"uniform{k}": fixed(lambda n, _t, k=k: uniform(n, k)) for k in range(1, args.steps + 1)
    }
    name = cache_name("bench-frames", {"corpus": str(manifest), "T": args.steps, "v": "method"})
    return decode_policies(
        table,
        args.steps,
        {"c2f": fixed(coarse_to_fine), "seq": fixed(sequential)},
        Path(args.data) / name,
        test_policies=uniform_k,
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

    data = load_data(args)
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
    val_full = accuracy(lg_va[:, -1], y_val)
    main_beta = args.main_beta or choose_beta(val_rows, val_full)
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
    probs = averaged_probs(avg, test["c2f"], args)
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


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

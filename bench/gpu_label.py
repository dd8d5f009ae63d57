"""Benchmark: early-exit labeling frames/s on a GPU against the bare backbone's frames/s
at the same batch size, and the decode threads it takes to keep the GPU busy.

::

    .venv/bin/python bench/gpu_label.py                          # ResNet-50 @ 224, CUDA
    .venv/bin/python bench/gpu_label.py --device cpu --backbone tiny --image-size 64 \\
        --videos 16 --threads 1 2 --iterations 3                 # smoke run without a GPU

Both sides use the labeling device path (``frameexit.inference.device_plan``: bf16
autocast, channels_last, pinned non-blocking copies, step t+1 decoded ahead on CUDA).
``bare``: the backbone alone on a resident ``[B, 3, S, S]`` batch (no decode, no copy,
no heads) — the ceiling. ``early exit``: ``label_videos`` on batches of ``B`` local
Kinetics-like videos (10 s, 30 fps, 340x256, a keyframe every 2-5 s; gates calibrated as
in ``bench/label.py``), for each count of decode threads. Printed: frames/s of each,
their ratio (goal ≥ 0.6) and the fewest threads within 10 % of the best rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import frameexit.video  # noqa: E402,F401 - PyAV before decord (see frameexit.video)
from bench.label import build_checkpoint, make_corpus  # noqa: E402
from frameexit.checkpoint import load_model_checkpoint  # noqa: E402
from frameexit.config import load_config  # noqa: E402
from frameexit.inference import VideoRequest, device_plan, label_videos, prepare_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_frames_per_second(model, plan, batch: int, size: int, iterations: int) -> float:
    """The backbone alone on a resident batch: frames/s."""
    frames = torch.randn(batch, 3, size, size, device=plan.device)
    if plan.channels_last:
        frames = frames.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), plan.autocast():
        for _ in range(3):
            model.backbone(frames)
        _sync(plan.device)
        began = time.perf_counter()
        for _ in range(iterations):
            model.backbone(frames)
        _sync(plan.device)
    return batch * iterations / (time.perf_counter() - began)


def label_frames_per_second(model, cfg, plan, videos: list[str], batch: int, threads: int):
    """``label_videos`` over ``videos`` in batches of ``batch``: (frames/s, frames/video)."""
    frames = 0
    with ThreadPoolExecutor(threads) as pool:
        label_videos(model, [VideoRequest(v) for v in videos[:batch]], cfg, pool=pool, plan=plan)
        _sync(plan.device)
        began = time.perf_counter()
        for k in range(0, len(videos), batch):
            requests = [VideoRequest(v) for v in videos[k : k + batch]]
            outcomes = label_videos(model, requests, cfg, pool=pool, plan=plan)
            frames += sum(o.frames_decoded for o in outcomes)
        _sync(plan.device)
    return frames / (time.perf_counter() - began), frames / len(videos)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--unique", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 4, 8, 12, 16])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--exit-rate", type=float, default=0.15)
    parser.add_argument("--calibration-videos", type=int, default=16)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    args.corpus = "kinetics"

    tmp = tempfile.mkdtemp(prefix="fe-bench-gpu-")
    paths = make_corpus(args, tmp)
    cfg = load_config(None, [
        f"model.backbone={args.backbone}", "model.num_classes=10",
        f"model.num_steps={args.steps}", f"model.image_size={args.image_size}",
    ])  # fmt: skip
    build_checkpoint(args, cfg, paths, f"{tmp}/model.pt", {})
    model, cfg = load_model_checkpoint(f"{tmp}/model.pt")
    plan = device_plan(cfg, args.device)
    model = prepare_model(model, plan)
    bare = bare_frames_per_second(model, plan, args.batch_size, args.image_size, args.iterations)
    rows = []
    for threads in args.threads:
        rate, per_video = label_frames_per_second(model, cfg, plan, paths, args.batch_size, threads)
        rows.append((threads, rate, per_video))
    best = max(rate for _, rate, _ in rows)
    enough = min(t for t, rate, _ in rows if rate >= 0.9 * best)
    print(f"\n{args.backbone} @ {args.image_size}, B = {args.batch_size}, T = {args.steps}, "
          f"{args.device}, plan {plan}\n")  # fmt: skip
    print("| decode threads | early exit frames/s | frames/video | ÷ bare backbone |")
    print("|---|---|---|---|")
    for threads, rate, per_video in rows:
        print(f"| {threads} | {rate:.0f} | {per_video:.2f} | {rate / bare:.2f} (goal ≥ 0.6) |")
    print(f"\nbare backbone: {bare:.0f} frames/s; fewest threads within 10 % of the best: "
          f"{enough}")  # fmt: skip
    return {"bare": bare, "rows": rows, "threads_needed": enough}


if __name__ == "__main__":
    main()

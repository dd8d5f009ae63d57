"""Benchmark: corpus labeling with early exit vs all T frames, against the decode ceiling.

::

    .venv/bin/python bench/label.py                      # defaults below, ~3-4 min on 2 cores
    .venv/bin/python bench/label.py --videos 200 --checkpoint runs/x/checkpoints/stage2.pt

In one run: start a loopback S3 server (moto), generate a synthetic corpus into it,
then label the corpus from S3 to S3 twice with the labeling job (``pipelines/label.py``) — with
early exit and with all T frames — and measure single-process decord random access on the
same videos. Printed:

* videos/s (steady state: from the first result to the last, so actor start-up is not
  counted), frames decoded per video, GFLOPs per video, decoded frames/s, per mode;
* speedup (videos/s exit ÷ all-T) divided by the GFLOPs ratio (all-T ÷ exit): how well
  wall-clock follows the compute saved — target ≥ 0.9;
* the decode ceiling: single-process decord random-access frames/s (the T policy frames of
  every video, one step at a time, from bytes in memory; measured before and after the
  pipeline runs, the higher taken) × cores, and the pipeline's decoded frames/s over it
  (all-T mode) — target ≥ 0.8;
* the same with the per-video I/O the pipeline cannot skip (S3 GET from the loopback
  server, which runs on the same cores, and ``open_video``'s exactness probe): the
  fairer bound for an S3-to-S3 pipeline on this machine.

Without ``--checkpoint`` the model is random (``--backbone``, default tiny); its gates are calibrated on
a few videos so that about ``--exit-rate`` of the videos still running exit at each step
(a random network's gates are otherwise near-constant and all videos exit together).
GPU figures are not measured here (no GPU on this machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import frameexit.video  # noqa: E402,F401 - PyAV before decord (see frameexit.video)
from frameexit.backbones import backbone_spec  # noqa: E402
from frameexit.checkpoint import save_model_checkpoint  # noqa: E402
from frameexit.config import load_config  # noqa: E402
from frameexit.model import build_model  # noqa: E402
from frameexit.policy import get_policy  # noqa: E402
from frameexit.transforms import frames_to_tensor  # noqa: E402


def calibrate_gates(model, frames: torch.Tensor, exit_rate: float, sharpness: float = 4.0) -> None:
    """Shift and scale each gate's output layer so that on ``frames`` ([N, T, 3, S, S]) a
    fraction ``exit_rate`` of videos has exit probability ≥ 0.5 at every step."""
    model.eval()
    with torch.no_grad():
        logits = model(frames).gate_logits  # [N, T]
        for t, gate in enumerate(model.gates):
            column = logits[:, t]
            center = torch.quantile(column, 1.0 - exit_rate)
            scale = sharpness / column.std().clamp_min(1e-6)
            gate.linear.weight.mul_(scale)
            gate.linear.bias.copy_((gate.linear.bias - center) * scale)


def build_checkpoint(args, cfg, videos: list[bytes], uri: str, options: dict) -> None:
    """A random model with calibrated gates, saved as a checkpoint at ``uri``."""
    import decord

    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    spec = backbone_spec(cfg.model.backbone)
    policy = get_policy(cfg.model.policy)
    clips = []
    for data in videos[: args.calibration_videos]:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        raw = reader.get_batch(policy(len(reader), cfg.model.num_steps)).asnumpy()
        clips.append(
            frames_to_tensor(raw, image_size=cfg.model.image_size, mean=spec.mean, std=spec.std)
        )
    calibrate_gates(model, torch.stack(clips), args.exit_rate)
    save_model_checkpoint(model, cfg, uri, storage_options=options)


def decode_ceiling(cfg, videos: list[bytes]) -> float:
    """Single-process decord random-access frames/s: the T policy frames of each video,
    one get per step (as labeling asks for them), from bytes already in memory."""
    import decord

    policy = get_policy(cfg.model.policy)
    frames = 0
    began = time.perf_counter()
    for data in videos:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        for index in policy(len(reader), cfg.model.num_steps):
            reader.get_batch([index]).asnumpy()
            frames += 1
    return frames / (time.perf_counter() - began)


def end_to_end_single_process(cfg, uris: list[str], options: dict) -> float:
    """Single-process frames/s including what the pipeline must also do per video: GET
    from the (loopback) S3 server, open with ``frameexit.video.open_video`` (exactness
    probe + decord where exact), then the T policy frames one step at a time — no
    model, no Ray."""
    from frameexit.video import open_video

    policy = get_policy(cfg.model.policy)
    frames = 0
    began = time.perf_counter()
    for uri in uris:
        with open_video(uri, storage_options=options) as reader:
            for index in policy(reader.num_frames, cfg.model.num_steps):
                reader.get([index])
                frames += 1
    return frames / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="labeling benchmark (early exit vs all T)")
    parser.add_argument("--videos", type=int, default=160)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--min-frames", type=int, default=60)
    parser.add_argument("--max-frames", type=int, default=180)
    parser.add_argument("--steps", type=int, default=10, help="T")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--backbone",
        default="tiny",
        help="per-frame backbone of the random model (e.g. resnet18: more compute per frame)",
    )
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--decode-threads", type=int, default=None)
    parser.add_argument("--exit-rate", type=float, default=0.15)
    parser.add_argument("--calibration-videos", type=int, default=24)
    parser.add_argument("--checkpoint", help="use this model instead of a calibrated random one")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import fsspec

    import pipelines.label  # the entry point under test
    from frameexit.synthetic import generate_corpus
    from frameexit.testing.s3 import start_loopback_s3

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    s3 = start_loopback_s3()
    try:
        bucket = s3.create_bucket()
        options = s3.storage_options
        began = time.perf_counter()
        manifest = generate_corpus(
            f"{bucket}/corpus", num_videos=args.videos, num_classes=10, seed=0,
            image_size=None, width=args.width, height=args.height,
            min_frames=args.min_frames, max_frames=args.max_frames, preset="veryfast",
            workers=args.cores, storage_options=options,
        )  # fmt: skip
        print(
            f"corpus: {args.videos} videos {args.width}x{args.height} in "
            f"{time.perf_counter() - began:.0f} s -> {manifest}",
            flush=True,
        )
        fs = fsspec.filesystem("s3", **options)
        uris = sorted(fs.glob(f"{bucket[5:]}/corpus/videos/*.mp4"))
        videos = [fs.cat_file(u) for u in uris]

        overrides = [
            f"data.storage_options={json.dumps(options)}",
            f"model.backbone={args.backbone}", f"model.feature_dim={args.feature_dim}",
            "model.num_classes=10",
            f"model.num_steps={args.steps}", f"model.image_size={args.image_size}",
            f"label.batch_size={args.batch_size}", f"label.concurrency={args.concurrency}",
            f"label.cpus_per_actor={args.cpus_per_actor}", "label.part_size=64",
        ]  # fmt: skip
        cfg = load_config(None, overrides)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = f"{bucket}/model/calibrated.pt"
            build_checkpoint(args, cfg, videos, checkpoint, options)
        label_overrides = [o for o in overrides if not o.startswith("model.")]

        # measured before and after the pipeline runs; the higher (stricter) is the ceiling
        before = decode_ceiling(cfg, videos)
        results = {}
        for mode, extra in (("all T", ["--no-exit"]), ("early exit", [])):
            threads = ["--decode-threads", str(args.decode_threads)] if args.decode_threads else []
            summary = pipelines.label.main(
                [
                    "--input", manifest, "--output", f"{bucket}/labels-{'all' if extra else 'exit'}",
                    "--checkpoint", checkpoint, "--overwrite", "--no-progress",
                    *threads, *extra, *label_overrides,
                ]
            )  # fmt: skip
            results[mode] = summary["run"]

        after = decode_ceiling(cfg, videos)
        single = max(before, after)
        s3_uris = [f"s3://{u}" for u in uris]
        io_single = end_to_end_single_process(cfg, s3_uris, options)
        full, fast = results["all T"], results["early exit"]
        speedup = fast["steady_videos_per_second"] / full["steady_videos_per_second"]
        gflops_ratio = full["gflops_per_video"] / fast["gflops_per_video"]
        ceiling = single * args.cores
        out = {
            "modes": results,
            "speedup": speedup,
            "gflops_ratio": gflops_ratio,
            "speedup_over_gflops_ratio": speedup / gflops_ratio,
            "decord_single_process_fps": single,
            "decord_single_process_fps_before_after": [before, after],
            "decode_ceiling_fps": ceiling,
            "pipeline_over_ceiling_all_t": full["steady_frames_decoded_per_second"] / ceiling,
            "pipeline_over_ceiling_exit": fast["steady_frames_decoded_per_second"] / ceiling,
            "io_single_process_fps": io_single,
            "pipeline_over_io_ceiling_all_t": full["steady_frames_decoded_per_second"]
            / (io_single * args.cores),
            "cores": args.cores,
            "args": vars(args),
        }
        print_table(out)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return out
    finally:
        s3.stop()


def print_table(out: dict) -> None:
    rows = [("mode", "videos/s", "frames dec./video", "GFLOPs/video", "mean exit", "dec. frames/s")]
    for mode, r in out["modes"].items():
        rows.append((
            mode, f"{r['steady_videos_per_second']:.1f}", f"{r['frames_decoded_per_video']:.2f}",
            f"{r['gflops_per_video']:.4f}", f"{r['mean_exit_step']:.2f}",
            f"{r['steady_frames_decoded_per_second']:.0f}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for k, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))
    print()
    print(f"speedup (videos/s exit / all T)      {out['speedup']:.2f}x")
    print(f"GFLOPs ratio (all T / exit)          {out['gflops_ratio']:.2f}x")
    print(
        f"speedup / GFLOPs ratio               {out['speedup_over_gflops_ratio']:.2f}   (target >= 0.9)"
    )
    print(
        f"decord single process, random access {out['decord_single_process_fps']:.0f} frames/s "
        f"x {out['cores']} cores = {out['decode_ceiling_fps']:.0f} frames/s"
    )
    print(
        f"pipeline decoded frames/s / ceiling  {out['pipeline_over_ceiling_all_t']:.2f} (all T), "
        f"{out['pipeline_over_ceiling_exit']:.2f} (early exit)   (target >= 0.8)"
    )
    print(
        f"with I/O: S3 GET + open_video + frames, single process {out['io_single_process_fps']:.0f} "
        f"frames/s x {out['cores']} = {out['io_single_process_fps'] * out['cores']:.0f}; "
        f"pipeline (all T) / that {out['pipeline_over_io_ceiling_all_t']:.2f}"
    )
    print("GPU figures: not measured (no GPU on this machine)")


if __name__ == "__main__":
    main()

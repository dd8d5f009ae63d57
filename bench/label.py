"""Benchmark: corpus labeling with early exit vs all T frames, against the bare exact
decoder and against the Ray Data batch-inference pattern from Ray's docs.

::

    .venv/bin/python bench/label.py                                # synthetic, S3 + local
    .venv/bin/python bench/label.py --corpus kinetics --videos 480 --unique 48
    .venv/bin/python bench/label.py --where s3 --no-baseline --videos 64   # quick look

Corpora (``--corpus``): ``synthetic`` — the project's corpus as before (256x192, 60-180
frames at 12 fps, a keyframe every 1-2 s); ``kinetics`` — Kinetics-like clips: 10 s at
30 fps, 340x256, a keyframe every 2-5 s (what real uploads have). ``--unique`` distinct
videos are generated and copied up to ``--videos`` (rendering is the slow part; copies
decode the same). Videos live on a loopback S3 server (moto, with its request recorder
on during each run) and/or on local disk (``--where``).

Per place, in one run, each labeling job started from a stopped Ray (start-up counted):

* ``all T`` and ``early exit``: the labeling job, through its entry point only
  (``pipelines.label.main``), the default decode settings;
* ``baseline``: ``bench/ray_baseline.py`` — decord in Ray Data tasks (T uniform frames,
  one sorted ``get_batch``), the model on all T frames in an actor pool, ``write_parquet``.

Printed: videos/s (wall, Ray start included; and the job's steady rate after its first
result), frames and GFLOPs per video; speedup (early exit ÷ all T) ÷ GFLOPs ratio (target
≥ 0.9); early exit ÷ baseline videos/s (target ≥ 2.0); bytes read per video from S3,
counted at the server, and early exit ÷ all T against the frames ratio (target ≤ 1.15 ×);
the pipeline's decoded frames/s over the bare exact decoder's single-process rate × cores
(target ≥ 0.8); and, single process on a sample, CPU ms per video split into fetch (S3
client), S3 server (the moto process, told apart), open, decode, model, with decoded frames
per requested frame (with and without ``plan``).

Without ``--checkpoint`` the model is random (``--backbone``, default tiny); its gates are
calibrated so that about ``--exit-rate`` of the running videos exit at each step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import frameexit.video  # noqa: E402,F401 - PyAV before decord (see frameexit.video)
from frameexit.backbones import backbone_spec  # noqa: E402
from frameexit.checkpoint import save_model_checkpoint  # noqa: E402
from frameexit.config import load_config  # noqa: E402
from frameexit.model import build_model  # noqa: E402
from frameexit.policy import get_policy  # noqa: E402
from frameexit.transforms import frames_to_tensor  # noqa: E402

CORPORA = {
    "synthetic": dict(width=256, height=192, min_frames=60, max_frames=180, fps=12.0,
                      keyframe_interval_s=(1.0, 2.0)),
    "kinetics": dict(width=340, height=256, min_frames=300, max_frames=300, fps=30.0,
                     keyframe_interval_s=(2.0, 5.0)),
}  # fmt: skip


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


def build_checkpoint(args, cfg, paths: list[str], uri: str, options: dict) -> Any:
    """A random model with calibrated gates, saved as a checkpoint at ``uri``."""
    from frameexit.video import open_video

    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    spec = backbone_spec(cfg.model.backbone)
    policy = get_policy(cfg.model.policy)
    clips = []
    for path in paths[: args.calibration_videos]:
        with open_video(path) as reader:
            raw = reader.get(policy(reader.num_frames, cfg.model.num_steps))
        clips.append(
            frames_to_tensor(raw, image_size=cfg.model.image_size, mean=spec.mean, std=spec.std)
        )
    calibrate_gates(model, torch.stack(clips), args.exit_rate)
    save_model_checkpoint(model, cfg, uri, storage_options=options)
    return model


def make_corpus(args, root: str) -> list[str]:
    """``--unique`` generated videos copied up to ``--videos`` files in ``root/videos``."""
    from frameexit.synthetic import generate_corpus

    unique = min(args.unique or args.videos, args.videos)
    began = time.perf_counter()
    generate_corpus(
        f"{root}/gen", num_videos=unique, num_classes=10, seed=0, image_size=None,
        preset="veryfast", workers=args.cores, **CORPORA[args.corpus],
    )  # fmt: skip
    made = sorted(str(p) for p in Path(root, "gen", "videos").glob("*.mp4"))
    os.makedirs(f"{root}/videos")
    out = []
    for k in range(args.videos):
        dst = f"{root}/videos/v{k:05d}.mp4"
        shutil.copyfile(made[k % len(made)], dst)
        out.append(dst)
    sizes = [os.path.getsize(p) for p in made]
    print(
        f"corpus {args.corpus}: {unique} videos generated in {time.perf_counter() - began:.0f} s "
        f"({statistics.mean(sizes) / 1e3:.0f} kB mean, {min(sizes) / 1e3:.0f}-"
        f"{max(sizes) / 1e3:.0f}), {args.videos} files",
        flush=True,
    )
    return out


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ray_down() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def label_run(args, inputs: str, output: str, checkpoint: str, overrides: list[str], exit: bool):
    """One labeling job through its entry point, from a stopped Ray; summary + wall time."""
    import pipelines.label  # the entry point under test

    _ray_down()
    threads = ["--decode-threads", str(args.decode_threads)] if args.decode_threads else []
    began = time.perf_counter()
    summary = pipelines.label.main(
        ["--input", inputs, "--output", output, "--checkpoint", checkpoint, "--overwrite",
         "--no-progress", *threads, *([] if exit else ["--no-exit"]), *overrides]
    )  # fmt: skip
    wall = time.perf_counter() - began
    _ray_down()
    run = dict(summary["run"])
    run["wall_seconds"] = wall
    run["wall_videos_per_second"] = run["videos"] / wall
    return run


def exit_frames(output: str, options: dict | None) -> dict[str, int]:
    """``video -> frames decoded`` from a labeling output's committed parts."""
    import pandas as pd

    from frameexit.storage import url_to_fs

    fs, path = url_to_fs(output, options)
    parts = [p for p in fs.find(path) if p.endswith(".parquet")]
    frames: dict[str, int] = {}
    for part in parts:
        with fs.open(part, "rb") as f:
            try:
                table = pd.read_parquet(f)
            except Exception:  # noqa: BLE001 - not a row part (a manifest of the output)
                continue
        if {"video", "frames_decoded"} <= set(table.columns):
            frames.update(zip(table["video"], table["frames_decoded"], strict=True))
    return frames


def walk_costs(uris, cfg, options, frames_of, server_pid=None, plan=True) -> dict[str, float]:
    """Single process, per video: CPU ms of fetch (storage client), S3 server, open,
    decode (the policy's frames one step at a time, as many as ``frames_of(uri)``), and
    decoded frames per requested frame. Fetch = the Source (GET); open = the decoder and
    its frame table; decode = every ``get`` (later ranged reads included)."""
    from frameexit.video.pyav_backend import PyAVDecoder
    from frameexit.video.source import Source

    policy = get_policy(cfg.model.policy)
    d = cfg.data
    fetch = opened = decode = server = 0.0
    requested = decoded = 0
    for uri in uris:
        s0 = _proc_cpu_s(server_pid) if server_pid else 0.0
        c0 = time.process_time()
        src = Source(uri, storage_options=options, fetch=d.decode.fetch,
                     range_min_bytes=d.decode.range_min_bytes)  # fmt: skip
        c1 = time.process_time()
        dec = PyAVDecoder(src.pyav_input, uri, source=src)
        c2 = time.process_time()
        steps = policy(dec.num_frames, cfg.model.num_steps)[: frames_of(uri)]
        if plan:
            dec.plan(policy(dec.num_frames, cfg.model.num_steps))
        for i in steps:
            dec.get([i])
        c3 = time.process_time()
        server += (_proc_cpu_s(server_pid) - s0) if server_pid else 0.0
        requested += len(steps)
        decoded += dec.frames_decoded
        dec.close()
        src.close()
        fetch, opened, decode = fetch + c1 - c0, opened + c2 - c1, decode + c3 - c2
    n = len(uris)
    return {
        "fetch_ms": 1e3 * fetch / n, "server_ms": 1e3 * server / n, "open_ms": 1e3 * opened / n,
        "decode_ms": 1e3 * decode / n, "frames_per_video": requested / n,
        "decoded_per_requested": decoded / max(requested, 1),
    }  # fmt: skip


def model_ms_per_frame(model, cfg, batch: int = 8) -> float:
    """CPU ms per frame of the network (all steps' forward, ``batch`` videos, 1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    m = cfg.model
    x = torch.randn(batch, m.num_steps, 3, m.image_size, m.image_size)
    with torch.no_grad():
        model(x)
        c0 = time.process_time()
        for _ in range(3):
            model(x)
        ms = 1e3 * (time.process_time() - c0) / (3 * batch * m.num_steps)
    torch.set_num_threads(threads)
    return ms


def exact_ceiling(paths: list[str], cfg) -> float:
    """Single-process frames/s of the bare exact decoder: bytes already in memory, open +
    the T policy frames one step at a time (with the plan), no model, no Ray."""
    import fsspec

    from frameexit.video import open_video

    mem = fsspec.filesystem("memory")
    uris = []
    for k, path in enumerate(paths):
        uri = f"memory://fe-bench-ceiling/{k}.mp4"
        mem.pipe_file(uri, Path(path).read_bytes())
        uris.append(uri)
    policy = get_policy(cfg.model.policy)
    frames, began = 0, time.perf_counter()
    for uri in uris:
        with open_video(uri, fetch="whole", timeout_s=None) as reader:
            steps = policy(reader.num_frames, cfg.model.num_steps)
            reader.plan(steps)
            for i in steps:
                reader.get([i])
                frames += 1
    rate = frames / (time.perf_counter() - began)
    mem.rm("memory://fe-bench-ceiling", recursive=True)
    return rate


def decord_ceiling(paths: list[str], cfg) -> float:
    """Single-process decord random-access frames/s from memory (for reference: not exact)."""
    import io

    import decord

    policy = get_policy(cfg.model.policy)
    blobs = [Path(p).read_bytes() for p in paths]
    frames, began = 0, time.perf_counter()
    for data in blobs:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        for index in policy(len(reader), cfg.model.num_steps):
            reader.get_batch([index]).asnumpy()
            frames += 1
    return frames / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="labeling benchmark (early exit vs all T)")
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="synthetic")
    parser.add_argument("--videos", type=int, default=128)
    parser.add_argument("--unique", type=int, help="distinct videos (default: all)")
    parser.add_argument("--where", choices=["s3", "local", "both"], default="both")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--baseline-actors", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="T")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--decode-threads", type=int, default=None)
    parser.add_argument("--exit-rate", type=float, default=0.15)
    parser.add_argument("--calibration-videos", type=int, default=24)
    parser.add_argument("--sample", type=int, default=64, help="videos for single-process costs")
    parser.add_argument("--checkpoint", help="use this model instead of a calibrated random one")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides for the jobs")
    args = parser.parse_args(argv)

    from frameexit.storage import upload_dir
    from frameexit.testing.s3_requests import RequestLog, bytes_served, start_recording_s3

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    tmp = tempfile.mkdtemp(prefix="fe-bench-label-")
    s3 = start_recording_s3(f"{tmp}/s3-requests.jsonl")
    log = RequestLog(s3)
    try:
        paths = make_corpus(args, f"{tmp}/corpus")
        bucket = s3.create_bucket()
        options = s3.storage_options
        upload_dir(f"{tmp}/corpus/videos", f"{bucket}/videos", storage_options=options)
        remote = {p: f"{bucket}/videos/{os.path.basename(p)}" for p in paths}
        sizes = {remote[p][5:]: os.path.getsize(p) for p in paths}
        overrides = [
            f"data.storage_options={json.dumps(options)}",
            f"model.backbone={args.backbone}", f"model.feature_dim={args.feature_dim}",
            "model.num_classes=10",
            f"model.num_steps={args.steps}", f"model.image_size={args.image_size}",
            f"label.batch_size={args.batch_size}", f"label.concurrency={args.concurrency}",
            f"label.cpus_per_actor={args.cpus_per_actor}", "label.part_size=64",
            *args.overrides,
        ]  # fmt: skip
        cfg = load_config(None, overrides)
        checkpoint = args.checkpoint
        model = None
        if checkpoint is None:
            checkpoint = f"{bucket}/model/calibrated.pt"
            model = build_checkpoint(args, cfg, paths, checkpoint, options)
        job_overrides = [o for o in overrides if not o.startswith("model.")]
        spec = backbone_spec(cfg.model.backbone)

        places = ["s3", "local"] if args.where == "both" else [args.where]
        results: dict[str, Any] = {"args": vars(args), "cores": args.cores, "places": {}}
        for place in places:
            inputs = f"{bucket}/videos/" if place == "s3" else f"{tmp}/corpus/videos"
            out_root = f"{bucket}/out" if place == "s3" else f"{tmp}/out"
            modes: dict[str, Any] = {}
            for mode, early in (("all T", False), ("early exit", True)):
                cpu0 = _proc_cpu_s(s3.process.pid)
                with log.recording() as requests:
                    run = label_run(
                        args, inputs, f"{out_root}/labels-{'exit' if early else 'all'}",
                        checkpoint, job_overrides, early,
                    )  # fmt: skip
                run["server_cpu_ms_per_video"] = 1e3 * (_proc_cpu_s(s3.process.pid) - cpu0)
                run["server_cpu_ms_per_video"] /= run["videos"]
                run["bytes_per_video"] = bytes_served(requests, sizes) / run["videos"]
                modes[mode] = run
                print(f"[{place}] {mode}: {json.dumps(_brief(run))}", flush=True)
            if not args.no_baseline:
                from bench.ray_baseline import run_baseline

                cpu0 = _proc_cpu_s(s3.process.pid)
                with log.recording() as requests:
                    base = run_baseline(
                        inputs, f"{out_root}/baseline", checkpoint,
                        num_steps=cfg.model.num_steps, image_size=cfg.model.image_size,
                        mean=spec.mean, std=spec.std, storage_options=options,
                        actors=args.baseline_actors, batch_size=args.batch_size,
                        num_cpus=args.cores + 1,
                    )  # fmt: skip
                base["server_cpu_ms_per_video"] = (
                    1e3 * (_proc_cpu_s(s3.process.pid) - cpu0) / base["videos"]
                )
                base["bytes_per_video"] = bytes_served(requests, sizes) / base["videos"]
                base["frames_decoded_per_video"] = float(cfg.model.num_steps)
                modes["baseline"] = base
                print(f"[{place}] baseline: {json.dumps(base)}", flush=True)
            frames = exit_frames(f"{out_root}/labels-exit", options if place == "s3" else None)
            results["places"][place] = {"modes": modes, "exit_frames": frames}

        # single-process costs on a sample (no Ray)
        sample = paths[: args.sample]
        ceiling = exact_ceiling(sample, cfg)
        results["exact_ceiling_fps"] = ceiling
        results["decord_ceiling_fps"] = decord_ceiling(sample, cfg)
        results["model_ms_per_frame"] = ms = model_ms_per_frame(
            model if model is not None else build_model(cfg.model).eval(), cfg
        )
        costs: dict[str, Any] = {}
        for place in places:
            frames = results["places"][place]["exit_frames"]
            uris = [remote[p] if place == "s3" else p for p in sample]
            key = {
                u: (remote[p] if place == "s3" else p) for u, p in zip(uris, sample, strict=True)
            }

            def used(uri: str, frames=frames, key=key) -> int:
                f = frames.get(key[uri]) or frames.get(key[uri].replace("s3://", ""))
                return int(f) if f else args.steps

            pid = s3.process.pid if place == "s3" else None
            opts = options if place == "s3" else None
            for mode, frames_of in (("all T", lambda u: args.steps), ("early exit", used)):
                c = walk_costs(uris, cfg, opts, frames_of, server_pid=pid)
                c["model_ms"] = ms * c["frames_per_video"]
                if mode == "early exit":
                    c["decoded_per_requested_no_plan"] = walk_costs(
                        uris, cfg, opts, frames_of, plan=False
                    )["decoded_per_requested"]
                costs[f"{place} {mode}"] = c
        results["costs"] = costs
        print_tables(results, args)
        if args.json:
            Path(args.json).write_text(json.dumps(_jsonable(results), indent=1))
        return results
    finally:
        _ray_down()
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _brief(run: dict) -> dict:
    keys = ("videos", "wall_seconds", "wall_videos_per_second", "steady_videos_per_second",
            "frames_decoded_per_video", "bytes_per_video", "server_cpu_ms_per_video")  # fmt: skip
    return {k: round(float(run[k]), 3) for k in keys if k in run}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if k != "exit_frames"}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x if isinstance(x, str | int | float | bool | type(None)) else float(x)


def _table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))


def print_tables(out: dict, args) -> None:
    cores = out["cores"]
    ceiling = out["exact_ceiling_fps"] * cores
    print()
    print(f"corpus {args.corpus}, {args.videos} videos, backbone {args.backbone} @ "
          f"{args.image_size}, T={args.steps}, {cores} cores")  # fmt: skip
    for place, p in out["places"].items():
        modes = p["modes"]
        rows = [("mode", "videos/s wall", "videos/s steady", "frames/video", "GFLOPs/video",
                 "kB read/video", "S3 server ms/video", "dec. frames/s / ceiling")]  # fmt: skip
        for mode, r in modes.items():
            steady = r.get("steady_frames_decoded_per_second")
            rows.append((
                mode, f"{r['wall_videos_per_second']:.2f}" if "wall_videos_per_second" in r
                else f"{r['videos_per_second']:.2f}",
                f"{r['steady_videos_per_second']:.2f}" if "steady_videos_per_second" in r else "-",
                f"{r['frames_decoded_per_video']:.2f}",
                f"{r['gflops_per_video']:.4f}" if "gflops_per_video" in r else "-",
                f"{r['bytes_per_video'] / 1e3:.0f}" if place == "s3" else "-",
                f"{r['server_cpu_ms_per_video']:.1f}" if place == "s3" else "-",
                f"{steady / ceiling:.2f}" if steady else "-",
            ))  # fmt: skip
        print(f"\n[{place}]")
        _table(rows)
        full, fast = modes["all T"], modes["early exit"]
        gflops = full["gflops_per_video"] / fast["gflops_per_video"]
        frames_ratio = fast["frames_decoded_per_video"] / full["frames_decoded_per_video"]
        for rate in ("steady_videos_per_second", "wall_videos_per_second"):
            speedup = fast[rate] / full[rate]
            print(f"speedup ({rate}) {speedup:.2f}x / GFLOPs ratio {gflops:.2f}x = "
                  f"{speedup / gflops:.2f}   (target >= 0.9)")  # fmt: skip
        if "baseline" in modes:
            base = modes["baseline"]["videos_per_second"]
            print(f"early exit / baseline videos/s (wall, Ray start both sides) "
                  f"{fast['wall_videos_per_second'] / base:.2f}x; all T / baseline "
                  f"{full['wall_videos_per_second'] / base:.2f}x   (target >= 2.0)")  # fmt: skip
        if place == "s3":
            ratio = fast["bytes_per_video"] / full["bytes_per_video"]
            print(f"bytes read early exit / all T {ratio:.2f} vs frames ratio {frames_ratio:.2f}:"
                  f" {ratio / frames_ratio:.2f} x   (target <= 1.15)")  # fmt: skip
    print(f"\nbare exact decoder (memory, plan, T steps): {out['exact_ceiling_fps']:.0f} frames/s "
          f"x {cores} = {ceiling:.0f}; decord random access {out['decord_ceiling_fps']:.0f} "
          f"frames/s (not exact); model {out['model_ms_per_frame']:.2f} ms CPU/frame")  # fmt: skip
    rows = [("single process, per video", "frames", "dec./req.", "dec./req. no plan",
             "fetch ms", "S3 server ms", "open ms", "decode ms", "model ms",
             "total ms (w/o server)")]  # fmt: skip
    for name, c in out["costs"].items():
        total = c["fetch_ms"] + c["open_ms"] + c["decode_ms"] + c["model_ms"]
        rows.append((
            name, f"{c['frames_per_video']:.2f}", f"{c['decoded_per_requested']:.2f}",
            f"{c.get('decoded_per_requested_no_plan', float('nan')):.2f}",
            f"{c['fetch_ms']:.1f}", f"{c['server_ms']:.1f}", f"{c['open_ms']:.1f}",
            f"{c['decode_ms']:.1f}", f"{c['model_ms']:.1f}",
            f"{total + c['server_ms']:.1f} ({total:.1f})",
        ))  # fmt: skip
    print()
    _table(rows)


if __name__ == "__main__":
    main()

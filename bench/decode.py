"""Decode benchmark: 10-step coarse-to-fine walks, local vs S3, whole vs ranged fetch, the
exact default vs decord (and torchcodec where installed), with and without ``plan``.

    .venv/bin/python bench/decode.py                          # both settings, ~3 min
    .venv/bin/python bench/decode.py --setting kinetics --videos 6
    .venv/bin/python bench/decode.py --videos 2 --repeats 1   # quick look

Settings (``--setting``): ``synthetic`` — the clips of before (H.264 with B-frames, 25 fps,
a keyframe every 1.6 s, 150-300 frames, 112-160 px, plus an open-GOP encode and a 2-min
video); ``kinetics`` — Kinetics-like clips from the synthetic corpus generator: 10 s at
30 fps, 340x256, a keyframe every 2-5 s.

Each video is opened once and asked for one frame per step, in Algorithm 1's order
(``frameexit.policy.coarse_to_fine``), as early exit does: the time per video includes
``open_video`` (fetch / frame table) and the 10 ``get`` calls. "frames/s" = 10 / that time
(median over videos x repeats, after one warm-up walk per video); "cpu ms" = this
process's CPU per video (the moto server's CPU is not in it: "srv ms" is, read from its
process); "dec/req" = frames the decoder output per frame asked for; kB@1 / kB@10: bytes
fetched from S3 after the first step (an exit at once) and after all ten. S3 is moto on
loopback (no network latency: remote numbers show request overhead and bytes, not a real
round trip). Every returned frame is compared with a sequential PyAV decode ("wrong").

Rows:
  decord (opt-in)            backend="decord": decord's own random access (not exact)
  exact (default)            backend="auto" = PyAV, frame table from the sample index
  exact, no plan             the same without ``plan`` (no frames kept for later steps)
  exact, fetch whole         S3: one GET of the whole object
  exact, fetch auto          S3: the default (ranges above data.decode.range_min_bytes)
  exact, fetch ranges        S3: header + the packets each step decodes
  torchcodec exact           torchcodec VideoDecoder(seek_mode="exact"), if installed
  sequential ...             decode every frame in order (reference throughput)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import av  # noqa: E402  (PyAV before decord: see frameexit.video)
import numpy as np  # noqa: E402

from frameexit.policy import coarse_to_fine  # noqa: E402
from frameexit.storage import upload_dir  # noqa: E402
from frameexit.testing.clips import decode_all, write_clip  # noqa: E402
from frameexit.testing.s3 import start_loopback_s3  # noqa: E402
from frameexit.video import open_video  # noqa: E402

STEPS = 10


def synthetic_videos(directory: str, count: int) -> tuple[list[str], list[str]]:
    """H.264 with B-frames, 25 fps, a keyframe every 40 frames (1.6 s), 150-300 frames,
    112-160 px; plus an open-GOP encode of the same content and a 2-minute video."""
    paths = []
    for k in range(count):
        n = 150 + (150 * k) // max(count - 1, 1)
        w, h = (160, 120) if k % 2 == 0 else (112, 112)
        paths.append(
            write_clip(
                os.path.join(directory, f"v{k}.mp4"), num_frames=n, width=w, height=h,
                options={"bf": "3", "g": "40", "preset": "veryfast"}, seed=k,
            )
        )  # fmt: skip
    open_gop = write_clip(
        os.path.join(directory, "open_gop.mp4"), num_frames=300, width=160, height=120,
        options={"x264-params": "open-gop=1:bframes=3:b-adapt=0:b-pyramid=none:keyint=40:"
                 "min-keyint=40:scenecut=0"},
    )  # fmt: skip
    long = write_clip(
        os.path.join(directory, "long_2min.mp4"), num_frames=3000, width=160, height=120,
        options={"bf": "3", "g": "40", "preset": "veryfast"},
    )  # fmt: skip
    return paths, [open_gop, long]


def kinetics_videos(directory: str, count: int) -> tuple[list[str], list[str]]:
    """Kinetics-like: 10 s at 30 fps, 340x256, a keyframe every 2-5 s (corpus generator)."""
    from frameexit.synthetic import generate_corpus

    generate_corpus(
        f"{directory}/kin", num_videos=count, num_classes=10, seed=0, image_size=None,
        width=340, height=256, min_frames=300, max_frames=300, fps=30.0,
        keyframe_interval_s=(2.0, 5.0), preset="veryfast", workers=os.cpu_count() or 1,
    )  # fmt: skip
    return sorted(str(p) for p in Path(directory, "kin", "videos").glob("*.mp4")), []


def reference(path: str) -> dict[int, np.ndarray]:
    """The walk's frames from a plain sequential PyAV decode (frame i = i-th output)."""
    with av.open(path) as container:
        wanted = set(coarse_to_fine(container.streams.video[0].frames, STEPS))
        return {
            i: f.to_ndarray(format="rgb24")
            for i, f in enumerate(container.decode(video=0))
            if i in wanted
        }


def _proc_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def walk(uri: str, ref: dict[int, np.ndarray], plan: bool, server: int | None, **kwargs) -> dict:
    """Open once, one ``get`` per step: times, wrong frames, requests and bytes fetched
    (after step 1 — an exit at once — and after all steps), backend used."""
    srv = _proc_cpu_s(server)
    start, cpu = time.perf_counter(), time.process_time()
    wrong, first_bytes = 0, 0
    with open_video(uri, **kwargs) as video:
        opened = time.perf_counter()
        steps = coarse_to_fine(video.num_frames, STEPS)
        if plan:
            video.plan(steps)
        for step, i in enumerate(steps):
            frame = video.get([i])[0]
            wrong += not np.array_equal(frame, ref[i])
            if step == 0:
                first_bytes = video.stats["bytes_fetched"]
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu
        stats = video.stats
    decoded = stats["frames_decoded"]
    return {
        "total": total, "cpu": cpu, "open": opened - start, "wrong": wrong,
        "requests": stats["requests"], "bytes": stats["bytes_fetched"], "bytes_1": first_bytes,
        "backend": stats["backend"], "server": _proc_cpu_s(server) - srv,
        "decoded": float("nan") if decoded is None else decoded / STEPS,
    }  # fmt: skip


def torchcodec_walk(path: str, ref: dict[int, np.ndarray], plan: bool, server, **kw) -> dict:
    """The same walk with torchcodec's exact mode (local files)."""
    from torchcodec.decoders import VideoDecoder

    start, cpu = time.perf_counter(), time.process_time()
    dec = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    opened = time.perf_counter()
    wrong = 0
    for i in coarse_to_fine(len(dec), STEPS):
        frame = dec.get_frame_at(i).data.numpy()
        wrong += not np.array_equal(frame, ref[i])
    return {
        "total": time.perf_counter() - start, "cpu": time.process_time() - cpu,
        "open": opened - start, "wrong": wrong, "requests": 0, "bytes": 0, "bytes_1": 0,
        "backend": "tc", "server": 0.0, "decoded": float("nan"),
    }  # fmt: skip


def sequential_rate(paths: list[str], backend: str) -> float:
    """Frames/s decoding every frame in order."""
    frames, start = 0, time.perf_counter()
    for path in paths:
        if backend == "decord":
            import decord

            vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            for i in range(0, len(vr), 32):
                frames += len(vr.get_batch(list(range(i, min(i + 32, len(vr))))).asnumpy())
        else:
            frames += len(decode_all(path))
    return frames / (time.perf_counter() - start)


def run_setting(setting: str, args, tmp: str, s3) -> None:
    make = synthetic_videos if setting == "synthetic" else kinetics_videos
    os.makedirs(os.path.join(tmp, setting))
    videos, extra = make(os.path.join(tmp, setting), args.videos)
    paths = videos + extra
    refs = {p: reference(p) for p in paths}
    sizes = [os.path.getsize(p) for p in videos]
    print(
        f"\n[{setting}] {len(videos)} videos, {statistics.mean(sizes) / 1e3:.0f} kB mean; "
        f"{STEPS}-step coarse-to-fine walk, {args.repeats} repeats, median per video"
    )
    prefix = f"{s3.create_bucket()}/{setting}"
    upload_dir(os.path.dirname(paths[0]), prefix, storage_options=s3.storage_options)
    remote = {p: f"{prefix}/{os.path.basename(p)}" for p in paths}
    so = {"storage_options": s3.storage_options}
    rows = [
        ("local", "decord (opt-in)", videos, False, True, {"backend": "decord"}),
        ("local", "exact (default)", videos, False, True, {}),
        ("local", "exact, no plan", videos, False, False, {}),
        ("s3", "decord (opt-in)", videos, True, True, {**so, "backend": "decord"}),
        ("s3", "exact, fetch whole", videos, True, True, {**so, "fetch": "whole"}),
        ("s3", "exact, fetch auto", videos, True, True, so),
        ("s3", "exact, fetch ranges", videos, True, True, {**so, "fetch": "ranges"}),
    ]
    if importlib.util.find_spec("torchcodec") is not None:
        rows.insert(3, ("local", "torchcodec exact", videos, False, True, {"tc": True}))
    for label, path in zip(("open-GOP video", "2-min video")[: len(extra)], extra, strict=True):
        rows += [
            ("local", f"{label}, decord", [path], False, True, {"backend": "decord"}),
            ("local", f"{label}, exact", [path], False, True, {}),
            ("s3", f"{label}, exact auto", [path], True, True, so),
        ]
    header = (
        f"{'where':6s} {'reader':26s} {'used':6s} {'frames/s':>9s} {'cpu ms':>7s} {'srv ms':>7s} "
        f"{'open ms':>8s} {'ms/step':>8s} {'dec/req':>7s} {'GETs':>5s} {'kB@1':>6s} "
        f"{'kB@10':>6s} {'of kB':>6s} {'wrong':>5s}"
    )
    print(header)
    print("-" * len(header))
    for where, label, group, is_remote, plan, kwargs in rows:
        fn = torchcodec_walk if kwargs.pop("tc", False) else walk
        server = s3.process.pid if is_remote else None
        for path in group:  # warm-up: imports, first-call costs, server caches
            fn(remote[path] if is_remote else path, refs[path], plan, server, **kwargs)
        runs = [
            fn(remote[path] if is_remote else path, refs[path], plan, server, **kwargs)
            for _ in range(args.repeats)
            for path in group
        ]
        t = statistics.median(r["total"] for r in runs)
        o = statistics.median(r["open"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        srv = statistics.median(r["server"] for r in runs)
        size = statistics.mean(os.path.getsize(p) for p in group) / 1e3
        if is_remote:
            io = (
                f"{statistics.mean(r['requests'] for r in runs):5.1f} "
                f"{statistics.mean(r['bytes_1'] for r in runs) / 1e3:6.0f} "
                f"{statistics.mean(r['bytes'] for r in runs) / 1e3:6.0f}"
            )
        else:
            io = f"{'-':>5s} {'-':>6s} {'-':>6s}"
        used = "/".join(sorted({r["backend"] for r in runs}))
        dec = statistics.mean(r["decoded"] for r in runs)
        print(
            f"{where:6s} {label:26s} {used:6s} {STEPS / t:9.0f} {cpu * 1e3:7.1f} "
            f"{srv * 1e3:7.1f} {o * 1e3:8.1f} {(t - o) / STEPS * 1e3:8.2f} {dec:7.1f} {io} "
            f"{size:6.0f} {sum(r['wrong'] for r in runs):5d}"
        )
    for backend in ("decord", "pyav"):
        print(f"sequential decode, {backend:6s}: {sequential_rate(videos, backend):7.0f} frames/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=["synthetic", "kinetics", "both"], default="both")
    parser.add_argument("--videos", type=int, default=4, help="videos per setting")
    parser.add_argument("--repeats", type=int, default=5, help="walks per video and row")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="fe-bench-decode-")
    settings = ["synthetic", "kinetics"] if args.setting == "both" else [args.setting]
    try:
        with start_loopback_s3() as s3:
            for setting in settings:
                run_setting(setting, args, tmp, s3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

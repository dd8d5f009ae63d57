"""Decode benchmark: 10-step coarse-to-fine walks, local vs S3, whole vs ranged fetch,
with and without the exactness safeguard; sequential decode as the reference.

    .venv/bin/python bench/decode.py                 # ~1-2 min on 2 cores
    .venv/bin/python bench/decode.py --videos 2 --repeats 1   # quick look

Each video is opened once and asked for one frame per step, in Algorithm 1's order
(``frameexit.policy.coarse_to_fine``), as early exit does: the time per video includes
``open_video`` (download / probe / index) and the 10 ``get`` calls. "frames/s" = 10 /
that time (median over videos x repeats, after one warm-up walk per video); "cpu ms" =
this process's CPU time per video (steadier than wall time on a shared machine; the moto
server's own CPU is not in it). kB@1 / kB@10:
bytes fetched from S3 after the first step (an exit at once) and after all ten. S3 is moto on loopback (no network latency: remote numbers here show the
request overhead and bytes, not a real S3 round trip). Every returned frame is compared
with a sequential PyAV decode ("wrong" column).

Rows:
  decord (no safeguard)      backend="decord": trusts decord's random access blindly
  auto (safeguard)           backend="auto": PyAV probe + open-GOP/container rule, then
                             decord where exact (all of these videos), else PyAV
  pyav exact                 backend="pyav": PyAV seek + pts-verified decode (the fallback)
  pyav exact, ranges Nk      fetch="ranges", N KiB blocks: header + needed GOPs only
  open-GOP video, auto       the same walk on an open-GOP encode: auto falls back to PyAV
  sequential ...             decode every frame in order (reference throughput)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import av  # noqa: E402  (PyAV before decord: see frameexit.video)
import numpy as np  # noqa: E402

from frameexit.policy import coarse_to_fine  # noqa: E402
from frameexit.storage import upload_dir  # noqa: E402
from frameexit.testing.clips import decode_all, write_clip  # noqa: E402
from frameexit.testing.s3 import start_loopback_s3  # noqa: E402
from frameexit.video import open_video  # noqa: E402

STEPS = 10


def make_videos(directory: str, count: int) -> list[str]:
    """H.264 with B-frames, 25 fps, a keyframe every 40 frames (1.6 s), 150-300 frames,
    112-160 px; plus one open-GOP encode (x264 open-gop) of the same content."""
    paths = []
    for k in range(count):
        n = 150 + (150 * k) // max(count - 1, 1)
        w, h = (160, 120) if k % 2 == 0 else (112, 112)
        paths.append(
            write_clip(
                os.path.join(directory, f"v{k}.mp4"),
                num_frames=n,
                width=w,
                height=h,
                options={"bf": "3", "g": "40", "preset": "veryfast"},
                seed=k,
            )
        )
    open_gop = write_clip(
        os.path.join(directory, "open_gop.mp4"),
        num_frames=300,
        width=160,
        height=120,
        options={
            "x264-params": "open-gop=1:bframes=3:b-adapt=0:b-pyramid=none:keyint=40:"
            "min-keyint=40:scenecut=0"
        },
    )
    long = write_clip(
        os.path.join(directory, "long_2min.mp4"),
        num_frames=3000,
        width=160,
        height=120,
        options={"bf": "3", "g": "40", "preset": "veryfast"},
    )
    return paths + [open_gop, long]


def reference(path: str) -> dict[int, np.ndarray]:
    """The walk's frames from a plain sequential PyAV decode (frame i = i-th output)."""
    with av.open(path) as container:
        wanted = set(coarse_to_fine(container.streams.video[0].frames, STEPS))
        return {
            i: f.to_ndarray(format="rgb24")
            for i, f in enumerate(container.decode(video=0))
            if i in wanted
        }


def walk(uri: str, ref: dict[int, np.ndarray], **kwargs) -> dict:
    """Open once, one ``get`` per step: times, wrong frames, requests and bytes fetched
    (after step 1 — an exit at once — and after all steps), backend used."""
    start, cpu = time.perf_counter(), time.process_time()
    wrong, first_bytes = 0, 0
    with open_video(uri, **kwargs) as video:
        opened = time.perf_counter()
        for step, i in enumerate(coarse_to_fine(video.num_frames, STEPS)):
            frame = video.get([i])[0]
            wrong += not np.array_equal(frame, ref[i])
            if step == 0:
                first_bytes = video.stats["bytes_fetched"]
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu
        stats = video.stats
    return {
        "total": total,
        "cpu": cpu,
        "open": opened - start,
        "wrong": wrong,
        "requests": stats["requests"],
        "bytes": stats["bytes_fetched"],
        "bytes_1": first_bytes,
        "backend": stats["backend"],
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4, help="closed-GOP videos")
    parser.add_argument("--repeats", type=int, default=5, help="walks per video and row")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="fe-bench-decode-")
    paths = make_videos(tmp, args.videos)
    closed, open_gop, long = paths[:-2], paths[-2], paths[-1]
    refs = {p: reference(p) for p in paths}
    sizes = [os.path.getsize(p) for p in closed]
    print(
        f"{len(closed)} H.264 videos (150-300 frames, 112-160 px, "
        f"{statistics.mean(sizes) / 1e3:.0f} kB mean, B-frames, keyframe every 1.6 s), "
        f"1 open-GOP encode, 1 long (2 min, {os.path.getsize(long) / 1e6:.1f} MB); "
        f"{STEPS}-step coarse-to-fine walk, {args.repeats} repeats, median per video"
    )

    with start_loopback_s3() as s3:
        bucket = s3.create_bucket()
        upload_dir(tmp, f"{bucket}/v", storage_options=s3.storage_options)
        remote = {p: f"{bucket}/v/{os.path.basename(p)}" for p in paths}
        so = {"storage_options": s3.storage_options}
        rows = [
            ("local", "decord (no safeguard)", closed, False, {"backend": "decord"}),
            ("local", "auto (safeguard)", closed, False, {"backend": "auto"}),
            ("local", "pyav exact", closed, False, {"backend": "pyav"}),
            ("local", "pyav exact, ranges", closed, False, {"fetch": "ranges"}),
            ("s3", "decord (no safeguard)", closed, True, {**so, "backend": "decord"}),
            ("s3", "auto (safeguard)", closed, True, {**so, "backend": "auto"}),
            ("s3", "pyav exact", closed, True, {**so, "backend": "pyav"}),
            (
                "s3",
                "pyav exact, ranges 64k",
                closed,
                True,
                {**so, "fetch": "ranges", "block_size": 65536},
            ),
            (
                "s3",
                "pyav exact, ranges 16k",
                closed,
                True,
                {**so, "fetch": "ranges", "block_size": 16384},
            ),
            ("local", "open-GOP video, decord", [open_gop], False, {"backend": "decord"}),
            ("local", "open-GOP video, auto", [open_gop], False, {"backend": "auto"}),
            ("s3", "open-GOP video, auto", [open_gop], True, {**so, "backend": "auto"}),
            ("s3", "2-min video, auto, whole", [long], True, {**so, "backend": "auto"}),
            (
                "s3",
                "2-min video, ranges 64k",
                [long],
                True,
                {**so, "fetch": "ranges", "block_size": 65536},
            ),
        ]
        header = (
            f"{'where':6s} {'reader':26s} {'used':6s} {'frames/s':>9s} {'ms/video':>9s} "
            f"{'cpu ms':>7s} {'open ms':>8s} {'ms/step':>8s} {'GETs':>5s} {'kB@1':>6s} {'kB@10':>6s} "
            f"{'of kB':>6s} {'wrong':>5s}"
        )
        print(header)
        print("-" * len(header))
        for where, label, videos, is_remote, kwargs in rows:
            for path in videos:  # warm-up: imports, first-call costs, server caches
                walk(remote[path] if is_remote else path, refs[path], **kwargs)
            runs = [
                walk(remote[path] if is_remote else path, refs[path], **kwargs)
                for _ in range(args.repeats)
                for path in videos
            ]
            t = statistics.median(r["total"] for r in runs)
            o = statistics.median(r["open"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            size = statistics.mean(os.path.getsize(p) for p in videos) / 1e3
            if is_remote:
                io = (
                    f"{statistics.mean(r['requests'] for r in runs):5.1f} "
                    f"{statistics.mean(r['bytes_1'] for r in runs) / 1e3:6.0f} "
                    f"{statistics.mean(r['bytes'] for r in runs) / 1e3:6.0f}"
                )
            else:
                io = f"{'-':>5s} {'-':>6s} {'-':>6s}"
            used = "/".join(sorted({r["backend"] for r in runs}))
            print(
                f"{where:6s} {label:26s} {used:6s} {STEPS / t:9.0f} {t * 1e3:9.1f} "
                f"{cpu * 1e3:7.1f} {o * 1e3:8.1f} {(t - o) / STEPS * 1e3:8.2f} {io} {size:6.0f} "
                f"{sum(r['wrong'] for r in runs):5d}"
            )
    for backend in ("decord", "pyav"):
        print(f"sequential decode, {backend:6s}: {sequential_rate(closed, backend):7.0f} frames/s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

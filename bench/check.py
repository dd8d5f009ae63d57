"""Benchmark: ``frameexit check`` throughput against the labeling job's, same corpus,
same machine, same Ray instance.

::

    .venv/bin/python bench/check.py                        # 512 synthetic videos, local + S3
    .venv/bin/python bench/check.py --where local --videos 256 --repeats 1   # quick look

Both jobs run through their entry points (``pipelines.check.main``,
``pipelines.label.main``) on one Ray instance, started by an untimed warm-up check of 4
videos (start-up not counted: both jobs would pay it alike), alternating check, label,
check, label ... into fresh outputs. ``check`` opens every video (container index,
frame count, metadata) and decodes its middle frame; labeling runs the early-exit model
(random tiny model, gates calibrated to exit ~``--exit-rate`` of the running videos per
step, as in ``bench/label.py``). Printed per place: videos/s of each job (median over
``--repeats``) and check ÷ label.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import frameexit.video  # noqa: E402,F401 - PyAV before decord (see frameexit.video)
from bench.label import CORPORA, build_checkpoint, make_corpus  # noqa: E402
from frameexit.config import load_config  # noqa: E402


def _write_manifest(paths: list[str], uri_of: dict[str, str], out: str) -> str:
    """A manifest of the corpus files (label from the generator's file order)."""
    import pandas as pd

    rows = [{"video": uri_of[p], "labels": [f"c{k % 10}"], "split": "train"}
            for k, p in enumerate(paths)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(out)
    return out


def timed(job: Any, argv: list[str]) -> tuple[float, dict[str, Any]]:
    began = time.perf_counter()
    summary = job(argv)
    return time.perf_counter() - began, summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="synthetic")
    parser.add_argument("--videos", type=int, default=512)
    parser.add_argument("--unique", type=int, default=128)
    parser.add_argument("--where", choices=["s3", "local", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--exit-rate", type=float, default=0.15)
    parser.add_argument("--calibration-videos", type=int, default=24)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import pipelines.check
    import pipelines.label
    from frameexit.storage import upload_dir
    from frameexit.testing.s3 import start_loopback_s3

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    tmp = tempfile.mkdtemp(prefix="fe-bench-check-")
    s3 = start_loopback_s3()
    try:
        paths = make_corpus(args, f"{tmp}/corpus")
        bucket = s3.create_bucket()
        options = s3.storage_options
        upload_dir(f"{tmp}/corpus/videos", f"{bucket}/videos", storage_options=options)
        common = [f"data.storage_options={json.dumps(options)}", "label.part_size=64"]
        model = [
            "model.backbone=tiny", "model.feature_dim=512", "model.num_classes=10",
            f"model.num_steps={args.steps}", f"model.image_size={args.image_size}",
        ]  # fmt: skip
        cfg = load_config(None, [*common, *model])
        checkpoint = f"{tmp}/model.pt"
        build_checkpoint(args, cfg, paths, checkpoint, {})
        # warm-up, not timed: the first job starts Ray; both jobs then share it
        warm = _write_manifest(paths[:4], {p: p for p in paths}, f"{tmp}/warm.parquet")
        pipelines.check.main(["--manifest", warm, "--output", f"{tmp}/out/warm",
                              "--no-progress", *common])  # fmt: skip

        places = ["local", "s3"] if args.where == "both" else [args.where]
        results: dict[str, Any] = {"args": vars(args), "places": {}}
        for place in places:
            uri_of = {
                p: (f"{bucket}/videos/{os.path.basename(p)}" if place == "s3" else p) for p in paths
            }
            manifest = _write_manifest(paths, uri_of, f"{tmp}/manifest-{place}.parquet")
            rates: dict[str, list[float]] = {"check": [], "label": []}
            for k in range(args.repeats):
                wall, summary = timed(pipelines.check.main, [
                    "--manifest", manifest, "--output", f"{tmp}/out/{place}/check-{k}",
                    "--no-progress", *common,
                ])  # fmt: skip
                assert summary["usable"] == args.videos, summary
                rates["check"].append(args.videos / wall)
                wall, summary = timed(pipelines.label.main, [
                    "--input", manifest, "--output", f"{tmp}/out/{place}/label-{k}",
                    "--checkpoint", checkpoint, "--no-progress", *common,
                ])  # fmt: skip
                assert summary["run"]["videos"] == args.videos, summary["run"]
                rates["label"].append(args.videos / wall)
                print(f"[{place}] repeat {k + 1}: check {rates['check'][-1]:.1f} videos/s, "
                      f"label {rates['label'][-1]:.1f} videos/s", flush=True)  # fmt: skip
            check, label = statistics.median(rates["check"]), statistics.median(rates["label"])
            results["places"][place] = {"check": check, "label": label, "ratio": check / label,
                                        "all": rates}  # fmt: skip

        print(
            f"\n{args.videos} {args.corpus} videos ({args.unique} distinct), {args.cores} "
            f"cores, median of {args.repeats}, Ray started once before the first job\n"
        )
        print("| place | check videos/s | label (early exit) videos/s | check ÷ label |")
        print("|---|---|---|---|")
        for place, r in results["places"].items():
            print(f"| {place} | {r['check']:.1f} | {r['label']:.1f} | {r['ratio']:.2f}× |")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return results
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        s3.stop()


if __name__ == "__main__":
    main()

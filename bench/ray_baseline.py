"""The baseline labeling job: Ray Data's batch-inference pattern from Ray's docs, as a user
would write it without this project. ``bench/label.py`` runs it on the same corpus, model
and cores as ``pipelines/label.py`` and compares videos/s.

::

    read_binary_files(videos) ──map (tasks): decord, T uniform frames (one sorted get_batch),
        resize/normalise──► map_batches(actor pool): the model on all T frames ──► write_parquet

What it does not do (what this project adds): exact frames (decord's random access,
``frameexit/video/decord_backend.py`` says where it is wrong), early exit (all T frames of
every video are decoded and run through the backbone), one row per input even for broken
files (a video decord cannot open fails its task).

Usable alone::

    .venv/bin/python bench/ray_baseline.py --input DIR_OR_S3_PREFIX --output URI \\
        --checkpoint URI [--storage-options JSON]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import frameexit.video  # noqa: E402,F401 - PyAV before decord (see frameexit.video)


def _filesystem(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """A pyarrow filesystem (fsspec-backed) and the path inside it, for Ray Data I/O."""
    import pyarrow.fs as pafs

    from frameexit.storage import url_to_fs

    fs, path = url_to_fs(uri, storage_options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _decode(row: dict[str, Any], *, num_steps: int, image_size: int, mean, std) -> dict:
    """Task body: the video's bytes → T uniform frames with decord → network input."""
    import decord

    from frameexit.policy import get_policy
    from frameexit.transforms import frames_to_tensor

    reader = decord.VideoReader(io.BytesIO(row["bytes"]), num_threads=1)
    indices = sorted(get_policy("uniform")(len(reader), num_steps))
    raw = reader.get_batch(indices).asnumpy()
    frames = frames_to_tensor(raw, image_size=image_size, mean=mean, std=std)
    return {"video": row["path"], "frames": frames.numpy()}


class _Classify:
    """Actor: the FrameExit network on all T frames of each video (no exit), top label."""

    def __init__(self, checkpoint: str, storage_options: dict[str, Any] | None) -> None:
        import torch

        from frameexit.checkpoint import load_model_checkpoint

        torch.set_num_threads(1)
        self.model, _ = load_model_checkpoint(checkpoint, storage_options=storage_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.stack(batch["frames"]))).logits[:, -1]
        scores = torch.softmax(logits.float(), dim=-1)
        best = scores.argmax(dim=-1)
        return {
            "video": batch["video"],
            "label_id": best.numpy(),
            "score": scores.max(dim=-1).values.numpy(),
        }


def run_baseline(
    input_uri: str,
    output_uri: str,
    checkpoint: str,
    *,
    num_steps: int,
    image_size: int,
    mean: Any,
    std: Any,
    storage_options: dict[str, Any] | None = None,
    actors: int = 1,
    batch_size: int = 8,
    num_cpus: int | None = None,
) -> dict[str, float]:
    """Label every video under ``input_uri`` (a directory or prefix); returns the video
    count and the wall time including Ray's start (``seconds``). Starts and shuts down its
    own local Ray instance."""
    import ray
    import ray.cloudpickle

    from frameexit.storage import url_to_fs

    # the task and actor classes travel by value: workers need not import bench/
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    fs, path = url_to_fs(input_uri, storage_options)
    videos = len(fs.find(path))
    began = time.perf_counter()
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=512 * 1024**2,
    )
    try:
        in_fs, in_path = _filesystem(input_uri, storage_options)
        out_fs, out_path = _filesystem(output_uri, storage_options)
        ds = ray.data.read_binary_files(in_path, filesystem=in_fs, include_paths=True)
        ds = ds.map(
            _decode,
            fn_kwargs=dict(num_steps=num_steps, image_size=image_size, mean=mean, std=std),
        )
        ds = ds.map_batches(
            _Classify,
            fn_constructor_args=(checkpoint, storage_options),
            batch_size=batch_size,
            concurrency=actors,
            num_cpus=1,
        )
        ds.write_parquet(out_path, filesystem=out_fs)
        finished = time.perf_counter()
    finally:
        ray.shutdown()
    return {
        "videos": videos,
        "seconds": finished - began,
        "videos_per_second": videos / (finished - began),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--storage-options", default="{}", help="JSON for fsspec")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    from frameexit.backbones import backbone_spec
    from frameexit.checkpoint import read_model_checkpoint

    options = json.loads(args.storage_options) or None
    _, cfg, _ = read_model_checkpoint(args.checkpoint, storage_options=options)
    spec = backbone_spec(cfg.model.backbone)
    out = run_baseline(
        args.input, args.output, args.checkpoint, num_steps=cfg.model.num_steps,
        image_size=cfg.model.image_size, mean=spec.mean, std=spec.std,
        storage_options=options, actors=args.actors, batch_size=args.batch_size,
    )  # fmt: skip
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

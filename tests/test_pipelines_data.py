"""Ray Data ingestion: manifest → decoded, transformed frames; bad videos skipped and listed."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from frameexit.config import config_from_dict
from pipelines.data import (
    DecodeVideos,
    collect_skipped,
    example_shape,
    load_split,
    object_store_budget,
    training_columns,
    video_dataset,
)

T, S = 4, 32


def _config(manifest: str, **data) -> object:
    return config_from_dict(
        {
            "model": {
                "backbone": "tiny",
                "num_classes": 3,
                "num_steps": T,
                "image_size": S,
                "feature_dim": 32,
            },
            "data": {"manifest": manifest, "batch_size": 4, **data},
        }
    )


def _with_broken_videos(corpus, folder: str, video_root: str | None = None) -> pd.DataFrame:
    """The tiny corpus manifest plus a missing video and a text file posing as a video."""
    table = corpus.table
    fake = os.path.join(folder, "not_a_video.mp4")
    with open(fake, "w") as handle:
        handle.write("this is not an mp4 file\n")
    extra = table.iloc[:2].copy()
    extra["video"] = [os.path.join(folder, "missing.mp4"), fake]
    extra["split"] = "train"
    return pd.concat([table, extra], ignore_index=True)


def test_decode_batch_shapes_augmentation_and_skips(tiny_corpus, tmp_path) -> None:
    manifest = str(tmp_path / "manifest.parquet")
    _with_broken_videos(tiny_corpus, str(tmp_path)).to_parquet(manifest, index=False)
    cfg = _config(manifest)
    rows = load_split(cfg, "train")
    assert len(rows) == 8  # 6 train videos + 2 broken ones
    skip_dir = str(tmp_path / "skipped")
    out = DecodeVideos(cfg, "train", train=True, skip_dir=skip_dir)(rows)
    assert out["frames"].shape == (6, *example_shape(cfg)) == (6, T, 3, S, S)
    assert out["frames"].dtype == np.float16
    assert np.isfinite(out["frames"]).all() and abs(float(out["frames"].mean())) < 3
    assert out["target"].dtype == np.int64 and set(out["target"]) <= {0, 1, 2}
    eval_out = DecodeVideos(cfg, "train", train=False)(rows)
    again = DecodeVideos(cfg, "train", train=False)(rows)
    np.testing.assert_array_equal(eval_out["frames"], again["frames"])  # no augmentation
    table = collect_skipped(skip_dir, str(tmp_path / "skipped_videos.parquet"))
    assert len(table) == 2
    assert set(table["kind"]) <= {"missing", "not_video", "unreadable", "empty", "truncated"}
    assert table["count"].tolist() == [1, 1]


@pytest.mark.ray
@pytest.mark.s3
def test_ingestion_streams_from_local_and_s3(
    ray_cluster, tiny_corpus, moto_s3, s3_upload, tmp_path
):
    """The same manifest from local disk and from s3:// gives the same decoded stream."""
    local_manifest = str(tmp_path / "manifest.parquet")
    table = _with_broken_videos(tiny_corpus, str(tmp_path))
    table.to_parquet(local_manifest, index=False)

    videos = s3_upload(os.path.join(tiny_corpus.root, "videos"), "videos")
    bucket = videos.rsplit("/", 1)[0]
    options = moto_s3.storage_options
    s3_table = table.copy()
    s3_table["video"] = [f"{videos}/{os.path.basename(v)}" for v in s3_table["video"]]
    with moto_s3.filesystem().open(f"{bucket}/manifest.parquet", "wb") as handle:
        s3_table.to_parquet(handle, index=False)

    results = {}
    for name, manifest, storage_options in [
        ("local", local_manifest, {}),
        ("s3", f"{bucket}/manifest.parquet", options),
    ]:
        cfg = _config(manifest, storage_options=storage_options, augment=False)
        skip_dir = str(tmp_path / f"skipped-{name}")
        ds = training_columns(video_dataset(cfg, "train", train=True, skip_dir=skip_dir))
        targets, count = [], 0
        for batch in ds.iter_torch_batches(batch_size=4):
            assert tuple(batch["frames"].shape[1:]) == (T, 3, S, S)
            count += batch["frames"].shape[0]
            targets += batch["target"].tolist()
        skipped = collect_skipped(skip_dir, str(tmp_path / f"skipped-{name}.parquet"))
        results[name] = (count, sorted(targets), len(skipped))
        assert object_store_budget(cfg) >= 256 * 1024**2
    assert results["local"] == results["s3"] == (6, sorted(results["local"][1]), 2)


def test_random_policy_is_per_video_per_epoch_and_reproducible(tiny_corpus, tmp_path) -> None:
    """The random policy draws per video and per epoch from train.seed; augmentation too."""
    manifest = str(tmp_path / "manifest.parquet")
    table = tiny_corpus.table.copy()
    table["split"] = "train"
    table.to_parquet(manifest, index=False)
    cfg = _config(manifest, augment=True)
    cfg.model.policy = "random"
    rows = load_split(cfg, "train")

    def frames(epoch: int, seed: int = 0) -> np.ndarray:
        cfg.train.seed = seed
        return DecodeVideos(cfg, "train", train=True)(rows.assign(epoch=epoch))["frames"]

    first, again = frames(0), frames(0)
    np.testing.assert_array_equal(first, again)  # reproducible
    assert not np.array_equal(first, frames(1))  # every epoch draws anew
    assert not np.array_equal(first, frames(0, seed=1))  # train.seed decides
    from frameexit.policy import random_policy, video_seed

    # videos of the same length get different orders (the seed is per video)
    orders = {
        tuple(random_policy(100, T, seed=video_seed(0, f"{i}:v{i}.mp4", 0))) for i in range(8)
    }
    assert len(orders) > 1


@pytest.mark.ray
def test_epoch_permutation_mixes_a_class_sorted_manifest(ray_cluster, tiny_corpus, tmp_path):
    """Row-level shuffling: batches of a class-sorted manifest hold several classes, the
    order differs by epoch, is the same for the same (seed, epoch), and is the order a
    shuffled manifest of the same videos gets."""
    from pipelines.data import permute_rows, set_epoch, start_epoch_clock

    table = tiny_corpus.table.copy()
    table["split"] = "train"
    table = table.sort_values("labels", key=lambda c: c.map(lambda v: v[0]), kind="stable")
    manifest = str(tmp_path / "sorted.parquet")
    table.to_parquet(manifest, index=False)
    cfg = _config(manifest, augment=False)
    rows = load_split(cfg, "train")
    assert list(rows["label_ids"].map(lambda v: v[0])) == sorted(
        rows["label_ids"].map(lambda v: v[0])
    )
    epoch0 = permute_rows(rows, seed=0, clock=None)
    assert sorted(epoch0["row"]) == sorted(rows["row"]) and (epoch0["epoch"] == 0).all()
    classes = epoch0["label_ids"].map(lambda v: v[0]).tolist()
    runs = sum(a != b for a, b in zip(classes, classes[1:], strict=False))
    assert runs >= len(classes) // 3  # the sorted order has 2 changes of class for 3 classes
    shuffled = rows.sample(frac=1.0, random_state=3)
    same = permute_rows(shuffled, seed=0, clock=None)
    assert list(same["video"]) == list(epoch0["video"])  # manifest order does not matter

    clock = "frameexit-epoch-test-permutation"
    actor = start_epoch_clock(clock)
    try:
        set_epoch(clock, 1)
        epoch1 = permute_rows(rows, seed=0, clock=clock)
        assert (epoch1["epoch"] == 1).all()
        assert list(epoch1["row"]) != list(epoch0["row"])
        assert list(permute_rows(rows, seed=0, clock=clock)["row"]) == list(epoch1["row"])
        ds = training_columns(video_dataset(cfg, "train", train=True, clock=clock))
        seen = [int(t) for batch in ds.iter_torch_batches(batch_size=4) for t in batch["target"]]
        assert sorted(seen) == sorted(rows["label_ids"].map(lambda v: v[0]))
    finally:
        import ray

        ray.kill(actor)

"""The stage-2 feature cache: the stage-1 model run once over every video of a split.

::

    video_dataset(split, train=False) ─► map_batches(FeatureExtractor)  Ray Data actors
        per video: z_1..z_T [T, D], logits [T, K], ℓ_t [T]  (or, steps_only, every step's
        logits and exit probabilities: evaluation of a trained model)
    ─► {run}/features/{split}/*.parquet + _SUCCESS {model_sha256}   (reused on resume when
       the stage-1 model is the same)

Stage 2 (``pipelines.stages.run_stage2``) and the sweeps' β trials train gates on it; the
backbone never runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from frameexit.config import Config
from frameexit.storage import (
    exists,
    join_uri,
    list_files,
    pyarrow_filesystem,
    read_bytes,
    remove,
    write_text,
)
from pipelines.common import RunPaths, ensure_ray, shared, unshared, uri_options
from pipelines.data import collect_skipped, video_dataset

log = logging.getLogger("frameexit.pipelines")


class FeatureExtractor:
    """Ray Data actor: decoded frames → z_1..z_T, per-step logits and losses (the stage-2
    feature cache), or with ``steps_only`` just every step's logits and exit
    probabilities (evaluation of a trained model: a few numbers per video, not T × D)."""

    def __init__(
        self,
        model_uri: str,
        storage_options: Any,
        use_gpu: bool,
        steps_only: bool = False,
    ) -> None:
        import torch

        from frameexit.checkpoint import load_model_checkpoint

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model, self.cfg = load_model_checkpoint(
            model_uri, storage_options=unshared(storage_options) or None, device=self.device
        )
        self.steps_only = steps_only

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        from frameexit.losses import per_step_losses

        with torch.no_grad():
            frames = torch.from_numpy(np.array(batch["frames"])).to(self.device, torch.float32)
            target = torch.from_numpy(np.array(batch["target"])).to(self.device)
            out = self.model(frames)
            losses = per_step_losses(out.logits.float(), target, self.cfg.model.multi_label)
        target_np = np.asarray(batch["target"])
        if self.steps_only:
            logits, probs, first = self.model.step_outputs(out.features)
            result = {
                "video": batch["video"],
                "row": batch["row"],
                "view": batch["view"],
                "target": target_np,
                "logits": logits.float().cpu().numpy(),
                "gate_probs": probs.float().cpu().numpy(),
            }
            if first is not None:
                result["first_exits"] = first.cpu().numpy()
            return result
        if self.cfg.model.multi_label:
            label_ids = [np.flatnonzero(row).astype(np.int32) for row in target_np]
        else:
            label_ids = [np.asarray([t], dtype=np.int32) for t in target_np]
        return {
            "video": batch["video"],
            "row": batch["row"],
            "label_ids": _object_column(label_ids),
            "target": target_np,
            "num_frames": batch["num_frames"],
            "features": out.features.float().cpu().numpy(),
            "logits": out.logits.float().cpu().numpy(),
            "step_losses": losses.float().cpu().numpy(),
        }


def _object_column(items: list) -> Any:
    import numpy as np

    column = np.empty(len(items), dtype=object)
    column[:] = items
    return column


def build_feature_cache(
    cfg: Config, model_uri: str, splits: list[str] | tuple[str, ...], *, resume: bool = False
) -> dict[str, str]:
    """Run the stage-1 model once over every video of ``splits`` (Ray Data batch inference)
    and write ``{run}/features/{split}/*.parquet``; returns ``{split: uri}``.

    Per video: ``video, row, label_ids, target, num_frames, features [T, D]`` (pooled
    z_1..z_T), ``logits [T, K]``, ``step_losses [T]``. A split whose ``_SUCCESS`` marker
    exists is reused when ``resume``.
    """
    import ray.data

    ensure_ray(cfg)
    paths = RunPaths(cfg)
    model_hash = file_sha256(model_uri, uri_options(cfg, model_uri))
    out: dict[str, str] = {}
    # one reference for every split's actor pool, held until all of them are done
    model_options = shared(uri_options(cfg, model_uri))
    for split in splits:
        uri = paths.features(split)
        marker = join_uri(uri, "_SUCCESS")
        if resume and exists(marker, storage_options=paths.options):
            built_from = json.loads(read_bytes(marker, storage_options=paths.options))
            if built_from.get("model_sha256") == model_hash:
                log.info("feature cache %s: reusing %s", split, uri)
                out[split] = uri
                continue
            log.info("feature cache %s: built from another stage-1 model; rebuilding", split)
        began = time.perf_counter()
        ds = video_dataset(cfg, split, train=False, skip_dir=paths.skipped_parts)
        ds = ds.map_batches(
            FeatureExtractor,
            fn_constructor_kwargs={
                "model_uri": model_uri,
                "storage_options": model_options,
                "use_gpu": cfg.train.use_gpu,
            },
            batch_size=cfg.data.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cfg.train.num_workers)),
            num_cpus=cfg.train.cpus_per_worker,
            num_gpus=1 if cfg.train.use_gpu else 0,
        )
        remove(uri, recursive=True, storage_options=paths.options)
        storage_fs, storage_path = pyarrow_filesystem(uri, paths.options)
        ds.write_parquet(storage_path, filesystem=storage_fs)
        # files, not rows: rows are counted by whoever reads the cache
        count = len(list_files(uri, suffixes=[".parquet"], storage_options=paths.options))
        record = {
            "split": split,
            "model": model_uri,
            "model_sha256": model_hash,
            "files": int(count),
        }
        write_text(marker, json.dumps(record), storage_options=paths.options)
        log.info("feature cache %s: %s (%.0f s)", split, uri, time.perf_counter() - began)
        out[split] = uri
    finish_skipped(cfg)
    return out


def finish_skipped(cfg: Config):
    """Gather the run's skipped-video logs into one table (and warn how many)."""
    paths = RunPaths(cfg)
    table = collect_skipped(paths.skipped_parts, paths.skipped, paths.options)
    if len(table):
        log.warning("%d videos skipped (failed to decode): %s", len(table), paths.skipped)
    return table


def file_sha256(uri: str, options: dict[str, Any]) -> str:
    """SHA-256 of the object at ``uri``."""
    return hashlib.sha256(read_bytes(uri, storage_options=options)).hexdigest()


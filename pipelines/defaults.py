"""The embedded defaults of the entry points: the default config and the synthetic corpus.

``python pipelines/train.py`` (and ``tuning/sweep.py``) with no ``data.manifest`` train on
a synthetic corpus that is generated once under ``$FRAMEEXIT_DATA/synthetic-default``
(default: ``data/`` in the repository) and reused while its recorded spec matches.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from frameexit.config import Config
from frameexit.storage import exists, join_uri, read_bytes, write_text

log = logging.getLogger("frameexit.pipelines")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "synthetic.yaml"
# The embedded default corpus (data.manifest empty): generated once, then reused.
# 1000 videos, 500 train / 250 val / 250 test: validation calibrates the operating point
# (Learn-then-Test needs a few hundred videos for a 5 % bound), and a test figure rests
# on 250 videos, each printed with its paired-bootstrap 90 % interval (at 90 test videos
# one video moved a figure by 1.1 points)
DEFAULT_CORPUS = {
    "num_videos": 1000,
    "num_classes": 10,
    "seed": 0,
    "splits": {"train": 0.5, "val": 0.25, "test": 0.25},
}


def default_corpus(cfg: Config) -> str:
    """Manifest URI of the default synthetic corpus (generated on first use)."""
    from frameexit.synthetic import generate_corpus

    root = os.environ.get("FRAMEEXIT_DATA", str(ROOT / "data"))
    out = join_uri(os.path.abspath(root), "synthetic-default")
    spec = {**DEFAULT_CORPUS, "num_classes": cfg.model.num_classes}
    marker = join_uri(out, "_CORPUS")
    if exists(marker):
        recorded, manifest = read_bytes(marker).decode().split("\n", 1)
        if recorded == repr(spec) and exists(manifest.strip()):
            log.info("reusing the synthetic corpus at %s", out)
            return manifest.strip()
    log.info("generating the synthetic corpus %s at %s", spec, out)
    began = time.perf_counter()
    manifest = generate_corpus(out, **spec, workers=os.cpu_count() or 1, progress=True)
    write_text(marker, f"{spec!r}\n{manifest}")
    log.info("corpus ready in %.0f s: %s", time.perf_counter() - began, manifest)
    return manifest

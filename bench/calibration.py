"""Benchmark: what early exit costs a labeling user, with and without calibration.

    .venv/bin/python bench/calibration.py --checkpoint runs/synthetic/checkpoints/stage2.pt

Given a trained checkpoint (by default the main job's), on two held-out corpora of the
same classes, generated here with seeds the training never saw::

    same   800 videos, the training corpus's difficulty mix (another seed)
    hard   800 videos, every video `hard` (short evidence): harder than training

each labeled through the product's entry point (``pipelines.label.main``):

    all T        --calibrate ALL   every video with all T steps, every step's exit score
                                   and label kept (the all-T reference and the re-splits)
    shipped      no flag           the checkpoint's operating point (chosen on the
                                   training run's validation split)
    calibrated   --calibrate 200 --max-disagreement 0.05   (hard corpus only)

Printed per corpus and mode: top-1 against the manifest's labels and Δ against all T
with a paired-bootstrap 90 % interval, the share of labels that differ from all T, mean
steps and the steps ratio. Then the guarantee itself, from the all-T run's per-step
outputs: over ``--resplits`` random calibration/test splits (200 calibration videos
each), the checkpoint's family is calibrated by Learn-then-Test on one part and the
realized disagreement measured on the other; reported: how often it exceeds the bound
(target ≤ δ) and the mean steps. Everything lands in ``--out`` (``calibration.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from frameexit.checkpoint import (
    operating_point_of,  # noqa: E402
    read_model_checkpoint,  # noqa: E402
)
from frameexit.evaluation import paired_interval  # noqa: E402
from frameexit.operating_point import calibrate, step_losses  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPORA = {
    "same": {"seed": 101, "difficulty_mix": None},
    "hard": {"seed": 202, "difficulty_mix": {"hard": 1.0}},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs/synthetic/checkpoints/stage2.pt"))
    parser.add_argument("--videos", type=int, default=800)
    parser.add_argument("--calibrate", type=int, default=200)
    parser.add_argument("--max-disagreement", type=float, default=0.05)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--resplits", type=int, default=500)
    parser.add_argument("--corpora", nargs="*", default=list(CORPORA))
    parser.add_argument("--out", default=str(ROOT / "data/bench-calibration"))
    return parser.parse_args(argv)


def make_corpus(name: str, args: argparse.Namespace, num_classes: int) -> str:
    from frameexit.synthetic import generate_corpus

    out = Path(args.out) / f"corpus-{name}-{args.videos}"
    manifest = out / "manifest.parquet"
    if manifest.exists():
        return str(manifest)
    spec = CORPORA[name]
    began = time.perf_counter()
    uri = generate_corpus(
        str(out), num_videos=args.videos, num_classes=num_classes, seed=spec["seed"],
        difficulty_mix=spec["difficulty_mix"], splits={"test": 1.0}, workers=2,
    )  # fmt: skip
    print(f"corpus {name}: {args.videos} videos in {time.perf_counter() - began:.0f} s")
    return uri


def label(manifest: str, out: Path, checkpoint: str, extra: list[str]) -> pd.DataFrame:
    """One labeling run through the entry point; its rows joined with the truth."""
    from pipelines.label import main

    if not (out / "_summary.json").exists():
        main(["--input", manifest, "--output", str(out), "--checkpoint", checkpoint,
              "--no-progress", *extra])  # fmt: skip
    rows = pd.read_parquet(out)
    truth = pd.read_parquet(manifest)[["video", "labels"]]
    truth = truth.assign(truth=truth["labels"].map(lambda names: names[0]))[["video", "truth"]]
    return rows.merge(truth, on="video", how="left")


def compare(rows: pd.DataFrame, full: pd.DataFrame, steps: int) -> dict:
    """Accuracy and cost of ``rows`` against the all-T rows of the same videos."""
    a = rows[rows["status"] == "ok"].set_index("input_id")
    b = full[full["status"] == "ok"].set_index("input_id").loc[a.index]
    right, right_full = (a["label"] == a["truth"]).to_numpy(), (b["label"] == b["truth"]).to_numpy()
    early = ~a["calibration"].fillna(False).to_numpy()
    low, high = paired_interval(right, right_full)
    return {
        "videos": int(len(a)),
        "top1": float(right.mean()),
        "top1_all_t": float(right_full.mean()),
        "delta": float(right.mean() - right_full.mean()),
        "delta_ci90": [low, high],
        "disagreement": float((a["label"] != b["label"]).mean()),
        "disagreement_early_rows": float((a["label"] != b["label"])[early].mean())
        if early.any()
        else float("nan"),
        "early_rows": int(early.sum()),
        "mean_steps": float(a["exit_step"].mean()),
        "steps_ratio": float(steps / a["exit_step"].mean()),
    }


def resplits(full: pd.DataFrame, family: np.ndarray, args: argparse.Namespace, score: str):
    """The guarantee over random calibration/test splits of the all-T rows."""
    ok = full[(full["status"] == "ok") & full["calibration"]]
    scores = np.stack(ok["step_scores"].map(np.asarray).to_numpy()).astype(np.float64)
    codes = np.array([[tuple(sorted(s)) for s in per] for per in ok["step_labels"]], dtype=object)
    losses = step_losses(codes, risk="disagreement")
    rng = np.random.default_rng(0)
    n, violations, realized, steps, fallbacks = len(ok), 0, [], [], 0
    for _ in range(args.resplits):
        order = rng.permutation(n)
        cal, test = order[: args.calibrate], order[args.calibrate :]
        point = calibrate(
            family, scores[cal], losses[cal], score=score, risk="disagreement",
            bound=args.max_disagreement, delta=args.delta,
        )  # fmt: skip
        fallbacks += point.member == 0
        exit_at = point.exit_steps(scores[test])
        risk = float(losses[test, exit_at - 1].mean())
        realized.append(risk)
        steps.append(float(exit_at.mean()))
        violations += risk > args.max_disagreement
    return {
        "resplits": args.resplits,
        "calibration_videos": args.calibrate,
        "test_videos": n - args.calibrate,
        "violation_rate": violations / args.resplits,
        "delta": args.delta,
        "bound": args.max_disagreement,
        "mean_realized_disagreement": float(np.mean(realized)),
        "p90_realized_disagreement": float(np.quantile(realized, 0.9)),
        "mean_steps": float(np.mean(steps)),
        "fallbacks": int(fallbacks),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, cfg, extra = read_model_checkpoint(args.checkpoint)
    stored = operating_point_of(extra)
    if stored is None or stored.family is None:
        raise SystemExit(f"{args.checkpoint} carries no calibrated operating point")
    steps = cfg.model.num_steps
    family = np.asarray(stored.family)
    result: dict = {"checkpoint": args.checkpoint, "shipped": stored.describe(), "corpora": {}}
    for name in args.corpora:
        manifest = make_corpus(name, args, cfg.model.num_classes)
        tag = f"{name}-{Path(args.checkpoint).stem}"
        full = label(manifest, out / f"labels-{tag}-all", args.checkpoint,
                     ["--calibrate", str(args.videos * 2)])  # fmt: skip
        shipped = label(manifest, out / f"labels-{tag}-shipped", args.checkpoint, [])
        entry = {
            "shipped": compare(shipped, full, steps),
            "guarantee": resplits(full, family, args, stored.score),
        }
        if name == "hard":
            calibrated = label(
                manifest, out / f"labels-{tag}-calibrated", args.checkpoint,
                ["--calibrate", str(args.calibrate), "--max-disagreement",
                 str(args.max_disagreement)],
            )  # fmt: skip
            entry["calibrated"] = compare(calibrated, full, steps)
        result["corpora"][name] = entry
    print_table(result)
    (out / "calibration.json").write_text(json.dumps(result, indent=1))
    return result


def print_table(result: dict) -> None:
    print(f"\nshipped operating point: {result['shipped']}")
    header = f"{'corpus':<6} {'mode':<10} {'videos':>6} {'top1':>6} {'all-T':>6} " \
             f"{'Δ [90% CI]':>20} {'differs':>8} {'steps':>6} {'ratio':>6}"  # fmt: skip
    print(header)
    for name, entry in result["corpora"].items():
        for mode in ("shipped", "calibrated"):
            if mode not in entry:
                continue
            m = entry[mode]
            low, high = m["delta_ci90"]
            differs = m["disagreement_early_rows"] if mode == "calibrated" else m["disagreement"]
            print(
                f"{name:<6} {mode:<10} {m['videos']:>6} {100 * m['top1']:6.1f} "
                f"{100 * m['top1_all_t']:6.1f} {100 * m['delta']:+6.1f} "
                f"[{100 * low:+5.1f}, {100 * high:+5.1f}] {100 * differs:7.1f}% "
                f"{m['mean_steps']:6.2f} {m['steps_ratio']:5.2f}x"
            )
    print("\nguarantee over random calibration/test re-splits (checkpoint's family):")
    for name, entry in result["corpora"].items():
        g = entry["guarantee"]
        print(
            f"{name:<6} {g['resplits']} splits of {g['calibration_videos']}/{g['test_videos']}: "
            f"disagreement > {g['bound']:g} in {100 * g['violation_rate']:.1f}% "
            f"(δ = {g['delta']:g}); realized mean {100 * g['mean_realized_disagreement']:.2f}%, "
            f"p90 {100 * g['p90_realized_disagreement']:.2f}%; mean steps {g['mean_steps']:.2f}; "
            f"fallbacks {g['fallbacks']}"
        )


if __name__ == "__main__":
    main()

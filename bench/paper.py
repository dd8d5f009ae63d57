"""The paper's tables, reproduced on the synthetic benchmark corpus, next to the paper's numbers.

    .venv/bin/python bench/paper.py                       # ~25 min on 2 CPU cores
    .venv/bin/python bench/paper.py --reuse-sweep DIR     # tables again, sweep not rerun

Corpus: 800 videos, 10 classes — 4 single-cue and 6 complementary (``frameexit.synthetic``:
cues in separate frames, so feature pooling has something to combine), split train/val/
test 0.45/0.15/0.4 (360/120/320: the tables are on test, so it is large). Selection (β,
exit threshold τ) on val, every figure on test::

    product sweep  tuning.sweep.main: T ∈ {4, 8, 10, 16} × 5 β, Ray Tune → Ray Train stage 1
                   once per T (asserted from its records) → gates per β → val + test τ curves
                   ─► T ablation (Table 6), β curve (Fig. 6, beta_curve.png)
    in process     bench/common.py: the step functions of frameexit.training, T = 10
                   coarse-to-fine + max pooling, main β by val ─► main result, equal frames
                   sequential / random × 5 seeds / uniform policies ─► policy ablation
                   mean / LSTM / attention pooling, prediction averaging ─► pooling ablation

GFLOPs are the tiny backbone's (a 64-px CNN), so compare ratios (× vs w/o exit) with the
paper's ResNet-50 figures, not absolute values. Outputs in ``--out`` (default
``data/bench-paper/run-<time>``): ``paper.json``, ``paper.parquet`` (every table row),
``beta_curve.png``, the sweep's own folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

if __package__ in (None, ""):  # run as a script: bench/ and the repository importable
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import (  # noqa: E402
    ROOT,
    PredictionAveraging,
    Row,
    accuracy,
    averaged_probs,
    bench_corpus,
    cache_name,
    choose_beta,
    decode_policies,
    fixed,
    frameexit_row,
    model_config,
    pooled_outputs,
    seeded_random,
    train_gates,
    train_stage1,
)
from paper_tables import (  # noqa: E402
    PAPER,
    Table,
    beta_curve_png,
    check_targets,
    sweep_tables,
)

from frameexit.exits import DEFAULT_THRESHOLDS, exit_scores, exit_steps, threshold_sweep  # noqa: E402
from frameexit.flops import step_gflops  # noqa: E402
from frameexit.model import build_model  # noqa: E402
from frameexit.operating_point import choose_operating_point  # noqa: E402
from frameexit.policy import coarse_to_fine, sequential, uniform  # noqa: E402

FINE_THRESHOLDS = sorted({*DEFAULT_THRESHOLDS, *np.round(np.arange(0.025, 1.0, 0.025), 3)})
SPLITS = {"train": 0.45, "val": 0.15, "test": 0.4}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=800)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--complementary", type=int, default=6, help="complementary classes")
    parser.add_argument("--steps", type=int, default=10, help="T of the in-process tables")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=12, help="stage-1 epochs (both parts)")
    parser.add_argument("--gate-epochs", type=int, default=30)
    parser.add_argument(
        "--sweep-gate-epochs", type=int, default=15,
        help="stage-2 epochs of the sweep (its batches are half as big: as many steps)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--betas", type=float, nargs="+",
        default=[1e-3, 3e-3, 1e-2, 2e-2, 3e-2, 4e-2, 5e-2, 7e-2, 1e-1],
        help="β grid of the in-process model (the main β is chosen on val)",
    )  # fmt: skip
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument(
        "--max-disagreement", type=float, default=0.05,
        help="risk bound of the calibrated operating points (Learn-then-Test on val)",
    )  # fmt: skip
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--sweep-steps", type=int, nargs="+", default=[4, 8, 10, 16])
    parser.add_argument(
        "--sweep-betas", type=float, nargs="+", default=[3e-3, 1e-2, 2e-2, 4e-2, 1e-1]
    )
    parser.add_argument("--reuse-sweep", help="read this finished sweep instead of running one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=os.environ.get("FRAMEEXIT_DATA", str(ROOT / "data")))
    parser.add_argument("--out", help="output folder (default: {data}/bench-paper/run-<time>)")
    return parser.parse_args(argv)


# --- the product's sweep (T ablation, β curve) ------------------------------------------


def sweep_config(args: argparse.Namespace, manifest: Path, out: Path) -> Path:
    """The sweep's YAML: the in-process recipe on Ray (2 Train workers, so half the batch
    per worker), validation every 3 epochs, no per-trial plots."""
    import yaml

    config = {
        "model": {**vars(model_config(args)), "pretrained": None},
        "data": {"manifest": str(manifest), "batch_size": args.batch_size // 2},
        "train": {
            "storage": str(out / "runs"),
            "name": "paper",
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "seed": args.seed,
            "val_every": 3,
            "tracking": [],
            "stage1": {
                "epochs": args.epochs, "lr": args.lr,
                "milestones": [max(1, int(args.epochs * 0.75))],
            },
            "stage2": {
                "epochs": args.sweep_gate_epochs, "lr": args.lr,
                "milestones": [max(1, int(args.sweep_gate_epochs * 0.7))],
            },
        },
        "sweep": {"eval_plots": False, "seed": args.seed},
    }  # fmt: skip
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_sweep(args: argparse.Namespace, manifest: Path, out: Path) -> tuple[Path, float, str]:
    """Run the sweep as a user does (``python tuning/sweep.py``, its own process: the Ray
    instance it starts and its memory are gone when it returns); returns (its folder,
    wall seconds, command)."""
    root = out / "sweep"
    argv = [
        "--config", str(sweep_config(args, manifest, out)), "--storage", str(root),
        "--num-steps", *map(str, args.sweep_steps), "--betas", *map(str, args.sweep_betas),
    ]  # fmt: skip
    command = "python tuning/sweep.py " + shlex.join(argv)
    print(f"\n== sweep (Ray Tune): {command}", flush=True)
    began = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "tuning" / "sweep.py"), *argv], check=True)
    wall = time.perf_counter() - began
    return root, wall, command


def stage1_runs(root: Path) -> dict[str, int]:
    """Finished stage-1 executions per unit, counted from the sweep's event records."""
    runs: dict[str, int] = {}
    for path in sorted((root / "records" / "events").glob("stage1-*.json")):
        event = json.loads(path.read_text())
        if event.get("status") == "done":
            runs[event["key"]] = runs.get(event["key"], 0) + 1
    return runs


# --- the in-process models -------------------------------------------------------------


class Models:
    """Stage 1 of each ablation model on its policy's frames, its pooled outputs per split."""

    def __init__(self, args: argparse.Namespace, data: dict, cost: float) -> None:
        self.args, self.data, self.cost = args, data, cost
        self.y = {split: data[split]["label"] for split in ("train", "val", "test")}

    def train(self, policy: str, pooling: str = "max") -> dict:
        began = time.perf_counter()
        print(f"stage 1: {policy} policy + {pooling} pooling", flush=True)
        model = train_stage1(
            build_model(model_config(self.args, pooling=pooling)),
            self.data["train"][policy], self.y["train"], self.args, quiet=True,
        )  # fmt: skip
        out = {"model": model}
        for split in ("train", "val", "test"):
            out[split] = pooled_outputs(model, self.data[split][policy], self.y[split], self.args)
        print(f"  ({time.perf_counter() - began:.0f} s)", flush=True)
        return out

    def gated(self, trained: dict, beta: float, split: str = "test") -> tuple[Row, object]:
        z_tr, _, l_tr = trained["train"]
        gated = train_gates(trained["model"], z_tr, l_tr, beta, self.args)
        z, logits, _ = trained[split]
        return frameexit_row("", gated, z, logits, self.y[split], self.cost)[0], gated

    def full(self, trained: dict, split: str = "test") -> float:
        return accuracy(trained[split][1][:, -1], self.y[split])


def oracle_frames(logits: torch.Tensor, labels: np.ndarray, target: float) -> float:
    """The fewest mean frames any exit rule over these classifiers f_1..f_T can spend and
    still reach top-1 ``target``: a video is right only if it exits at or after its first
    correct step, so take the videos whose first correct step is earliest, and let the
    rest exit at step 1."""
    correct = logits.argmax(-1).numpy() == labels[:, None]  # [N, T]
    first = np.sort(correct.argmax(1)[correct.any(1)] + 1)
    needed = math.ceil(target * len(labels) - 1e-9)
    return float((first[:needed].sum() + (len(labels) - needed)) / len(labels))


@torch.no_grad()
def gate_probs(gated, trained: dict) -> dict[str, torch.Tensor]:
    """Exit probabilities [N, T] of a gated model on the val and test features."""
    return {split: gated.step_outputs(trained[split][0])[1] for split in ("val", "test")}


@torch.no_grad()
def calibrated_rows(
    headline: Table, main: dict, gated, y: dict, cost: float, full: float,
    paper_curve: pd.DataFrame, args: argparse.Namespace,
) -> None:  # fmt: skip
    """The product's operating points: per exit score, the shape-free threshold family
    (one λ for every step), Learn-then-Test on val (disagreement with all T <= --max-disagreement at
    1 - --delta), reported on test; beside each, the fewest test frames of its own family
    within 1 point of w/o exit *chosen on test* (optimistic) and the paper's rule (gate
    τ curve of the same gates, on test) at the calibrated point's accuracy."""
    outputs = {}
    for split in ("train", "val", "test"):
        z, logits, _ = main[split]
        outputs[split] = {
            "logits": logits.numpy(),
            "gate_probs": gated.step_outputs(z)[1].numpy(),
            "target": y[split],
        }
    test = outputs["test"]
    rows = np.arange(len(y["test"]))
    T = args.steps
    for score in ("confidence", "gate"):
        point = choose_operating_point(
            score=score, risk="disagreement", bound=args.max_disagreement, delta=args.delta,
            family_size=200, family="constant", calibration=outputs["val"],
            multi_label=False, calibrated_on="val",
        )  # fmt: skip
        scores = exit_scores(score, test["logits"], test["gate_probs"])
        steps = point.exit_steps(scores)
        top1 = float((test["logits"][rows, steps - 1].argmax(-1) == y["test"]).mean())
        best = math.inf
        for thresholds in np.asarray(point.family):
            member = exit_steps(scores, thresholds)
            right = test["logits"][rows, member - 1].argmax(-1) == y["test"]
            if right.mean() >= full - 0.01 - 1e-12:
                best = min(best, float(member.mean()))
        reach = paper_curve[paper_curve["accuracy"] >= top1 - 1e-12]
        paper_frames = float(reach["mean_steps"].min()) if len(reach) else math.nan
        frames = float(steps.mean())
        headline.add(
            f"FrameExit (calibrated {score}: differs <= {args.max_disagreement:g} at "
            f"δ={args.delta:g}, on val)",
            top1, frames, frames * cost, saving=T / frames, best_on_test_frames=best,
            paper_frames_at_equal_top1=paper_frames, fallback=point.fallback or "",
        )  # fmt: skip
        print(f"calibrated {score}: {point.describe()}; test {100 * top1:.1f} at {frames:.2f} "
              f"frames; its family on test within 1 point: {best:.2f} frames; the paper's rule "
              f"at this top-1: {paper_frames:.2f} frames", flush=True)  # fmt: skip


def in_process_tables(args: argparse.Namespace, data: dict, cost: float) -> list[Table]:
    models = Models(args, data, cost)
    T, y = args.steps, models.y
    main = models.train("c2f")
    val_rows, test_rows, curves = {}, {}, {}
    for beta in args.betas:
        row, gated = models.gated(main, beta, "val")
        val_rows[beta] = row
        test_rows[beta] = frameexit_row("", gated, *main["test"][:2], y["test"], cost)[0]
        curves[beta] = {  # post-hoc τ curves of this β's gates, for the equal-frames table
            split: threshold_sweep(main[split][1], probs, y[split], cost, FINE_THRESHOLDS)
            for split, probs in gate_probs(gated, main).items()
        }
    beta = choose_beta(val_rows, models.full(main, "val"))
    fe, full = test_rows[beta], models.full(main)
    print(f"main β = {beta:g} (chosen on val: w/o exit {100 * models.full(main, 'val'):.1f}, "
          + ", ".join(f"β={b:g} {100 * r.top1:.1f}@{r.frames:.2f}" for b, r in val_rows.items())
          + ")")  # fmt: skip

    headline = Table(
        "main", f"FrameExit vs w/o exit (T = {T}, coarse-to-fine, max pooling, β = {beta:g})"
    )
    headline.add("w/o exit", full, T, T * cost, **PAPER["main"]["w/o exit"])
    headline.add(f"FrameExit (paper: gate, τ = 0.5, β = {beta:g})", fe.top1, fe.frames, fe.gflops,
                 saving=T * cost / fe.gflops, **PAPER["main"]["FrameExit"])  # fmt: skip
    steps_top1 = [accuracy(main["test"][1][:, t], y["test"]) for t in range(T)]
    print("f_t top-1 on test, t = 1..T: " + " ".join(f"{100 * a:.1f}" for a in steps_top1))
    bound = oracle_frames(main["test"][1], y["test"], full)
    headline.add("exit oracle: fewest frames at w/o exit top-1", full, bound, bound * cost,
                 saving=T / bound)  # fmt: skip
    gated_main = train_gates(main["model"], main["train"][0], main["train"][2], beta, args)
    calibrated_rows(headline, main, gated_main, y, cost, full, curves[beta]["test"], args)

    policy = Table("policy", f"sampling policy (FrameExit at β = {beta:g}; w/o exit = {T} frames)")

    def policy_row(name: str, key: str) -> None:
        trained = models.train(key)
        row = models.gated(trained, beta)[0]
        policy.add(name, row.top1, row.frames, row.gflops, noexit=models.full(trained),
                   saving=T * cost / row.gflops, **PAPER["policy"][name])  # fmt: skip

    policy_row("sequential", "seq")
    randoms = []
    for seed in range(args.random_seeds):
        trained = models.train(f"random{seed}")
        randoms.append((models.gated(trained, beta)[0], models.full(trained)))
    tops = np.array([r.top1 for r, _ in randoms])
    gflops = float(np.mean([r.gflops for r, _ in randoms]))
    policy.add(
        f"random (mean ± std, {len(randoms)} seeds)", float(tops.mean()),
        float(np.mean([r.frames for r, _ in randoms])), gflops,
        noexit=float(np.mean([n for _, n in randoms])), std=float(tops.std(ddof=1)),
        saving=T * cost / gflops, **PAPER["policy"]["random"],
    )  # fmt: skip
    policy_row("uniform", "uniform")
    policy.add("coarse-to-fine", fe.top1, fe.frames, fe.gflops, noexit=full,
               saving=T * cost / fe.gflops, **PAPER["policy"]["coarse-to-fine"])  # fmt: skip

    pooling = Table(
        "pooling", f"accumulated pooling (w/o exit = all {T} frames; FrameExit β = {beta:g})"
    )
    pooling.add("max", fe.top1, fe.frames, fe.gflops, noexit=full, saving=T * cost / fe.gflops,
                **PAPER["pooling"]["max"])  # fmt: skip
    for name in ("mean", "lstm", "attention"):
        trained = models.train("c2f", name)
        row = models.gated(trained, beta)[0]
        pooling.add(name, row.top1, row.frames, row.gflops, noexit=models.full(trained),
                    saving=T * cost / row.gflops)  # fmt: skip
    print("stage 1: prediction averaging (per-frame classifier)", flush=True)
    averaging = train_stage1(
        PredictionAveraging(model_config(args)), data["train"]["c2f"], y["train"], args,
        averaging=True, quiet=True,
    )  # fmt: skip
    probs = averaged_probs(averaging, data["test"]["c2f"], args)
    pooling.add("prediction averaging", math.nan, T, T * cost, noexit=accuracy(probs[:, -1], y["test"]),
                **PAPER["pooling"]["prediction averaging"])  # fmt: skip

    equal = Table(
        "equal_frames", "FrameExit vs a fixed budget at equal mean frames (first K frames, f_K)"
    )
    points = pd.concat(
        [c["val"].assign(beta=b, test_accuracy=c["test"]["accuracy"],
                         test_frames=c["test"]["mean_steps"]) for b, c in curves.items()]
    )  # fmt: skip
    fixed_budget = [accuracy(main["test"][1][:, k - 1], y["test"]) for k in range(1, T + 1)]
    for k in (3, 4, 6, 7):
        near = points.assign(gap=(points["mean_steps"] - k).abs())
        pick = near.sort_values(["gap", "accuracy"], ascending=[True, False]).iloc[0]
        frames = float(pick["test_frames"])
        lo = min(max(int(math.floor(frames)), 1), T)
        hi = min(lo + 1, T)
        matched = fixed_budget[lo - 1] + (frames - lo) * (
            fixed_budget[hi - 1] - fixed_budget[lo - 1]
        )
        equal.add(f"{k} frames", float(pick["test_accuracy"]), frames, frames * cost,
                  fixed=fixed_budget[k - 1], fixed_matched=matched, beta=float(pick["beta"]),
                  threshold=float(pick["threshold"]), **PAPER["equal_frames"][k])  # fmt: skip
    return [headline, policy, pooling, equal]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = "python bench/paper.py " + shlex.join(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    out = Path(args.out or Path(args.data) / "bench-paper" / time.strftime("run-%Y%m%dT%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    manifest = bench_corpus(
        args.data, videos=args.videos, classes=args.classes, seed=args.seed,
        complementary=args.complementary, image_size=args.image_size, splits=SPLITS,
    )  # fmt: skip

    if args.reuse_sweep:
        sweep_root, sweep_wall, sweep_command = Path(args.reuse_sweep), math.nan, "(reused)"
    else:
        sweep_root, sweep_wall, sweep_command = run_sweep(args, manifest, out)
    points = pd.read_parquet(sweep_root / "points.parquet")
    summary = json.loads((sweep_root / "summary.json").read_text())
    runs = stage1_runs(sweep_root)

    table = pd.read_parquet(manifest)
    T = args.steps
    policies = {
        "c2f": fixed(coarse_to_fine), "seq": fixed(sequential), "uniform": fixed(uniform),
        **{f"random{s}": seeded_random(args.seed + s) for s in range(args.random_seeds)},
    }  # fmt: skip
    frames_cache = Path(args.data) / cache_name(
        "bench-paper-frames", {"corpus": str(manifest), "T": T, "policies": sorted(policies)}
    )
    data = decode_policies(table, T, policies, frames_cache)
    cost = step_gflops(build_model(model_config(args)), args.image_size).total
    print(
        f"\ntrain {len(data['train']['label'])} / val {len(data['val']['label'])} / test "
        f"{len(data['test']['label'])} videos, {args.classes} classes ({args.complementary} "
        f"complementary), {args.image_size} px, {cost:.4f} GFLOPs per step",
        flush=True,
    )
    tables = in_process_tables(args, data, cost) + sweep_tables(points)

    header = f"command: {command}   (seed {args.seed})"
    for t in tables:
        t.print(header if t.source == "in_process" else f"{header}\nsweep: {sweep_command}")
    targets = check_targets(tables, summary, runs, sweep_wall, args.sweep_steps)
    print("\ntargets:")
    for name, (met, detail) in targets.items():
        print(f"  [{'met' if met else 'MISSED'}] {name}: {detail}")
    beta_curve_png(points, out / "beta_curve.png", title=f"β curve (test) — {command}")
    seconds = time.perf_counter() - began
    record = {
        "command": command,
        "seed": args.seed,
        "sweep_command": sweep_command,
        "sweep_root": str(sweep_root),
        "sweep_wall_seconds": sweep_wall,
        "sweep_summary": summary,
        "stage1_runs": runs,
        "tables": {t.name: t.rows for t in tables},
        "targets": {k: {"met": bool(m), "detail": d} for k, (m, d) in targets.items()},
        "seconds": seconds,
    }
    (out / "paper.json").write_text(json.dumps(record, indent=1, default=float))
    pd.DataFrame([{"table": t.name, **r} for t in tables for r in t.rows]).to_parquet(
        out / "paper.parquet"
    )
    print(f"\n{seconds:.0f} s in all; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

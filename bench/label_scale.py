"""Does labeling stay bounded as the corpus grows, and do decode threads use an actor's CPUs?

    python bench/label_scale.py                      # 10k and 100k inputs, then the actor check
    python bench/label_scale.py --sizes 2000 20000   # quicker
    python bench/label_scale.py --skip-scale --skip-actors --prefill 100000 1000000 \
        --json out.json                              # resume over a prefilled output

Inputs are cheap on purpose: N symbolic links to a few tiny synthetic clips (32 px, 8-12
frames), labeled by the tiny model with T = 2, so the job is bookkeeping-bound and the
driver's own costs show. Each measurement runs the labeling entry point
(``pipelines/label.py``) in a fresh process, so its peak RSS is the driver's alone:

* a full run of N inputs: wall time, driver peak RSS;
* the same command again on the completed output (resume): the bookkeeping time (list and
  read the committed parts, plan, compact, summarise: nothing to label), its peak RSS.

Goal: driver peak RSS ≤ 1.2× from the smallest to the largest N, resume ≤ 10 s at 100k.

``--prefill N...``: sizes where labeling every input is too slow here. The output is
filled beforehand with the project's own part writer (rows as a run writes them; the
table says so), then the real entry point resumes on an input of N rows with ``--left``
rows to label; measured: driver peak RSS and the resume's wall time, split into the
summary's ``phase_seconds`` (inputs, read_committed, plan, label, compact, summary).

Then one GPU-less throughput check on real-size clips (256×192): one actor with 2 CPUs and
2 decode threads vs two 1-CPU actors, same 960 inputs, alternated twice (goal: ≥ 0.9× the
two actors' mean steady rate; ``--skip-scale`` runs only this check).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = ["model.backbone=tiny", "model.feature_dim=32", "model.num_classes=4",
         "model.image_size=32", "model.gate_hidden=8"]  # fmt: skip


def child(argv: list[str]) -> None:
    """Run the labeling entry point in this process; print its summary and peak RSS."""
    import io
    from contextlib import redirect_stdout

    import pipelines.label

    began = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        summary = pipelines.label.main(argv)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "seconds": time.perf_counter() - began,
        "peak_rss_mb": peak_kb / 1024,
        "summary": summary,
    }
    print("RESULT " + json.dumps(out, default=str), flush=True)


def run_child(argv: list[str]) -> dict:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--", *argv],
        capture_output=True, text=True, env=env, timeout=7200,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def checkpoint(path: str, steps: int) -> str:
    from frameexit.checkpoint import save_model_checkpoint
    from frameexit.config import load_config
    from frameexit.model import build_model

    cfg = load_config(None, [*MODEL, f"model.num_steps={steps}"])
    save_model_checkpoint(build_model(cfg.model), cfg, path)
    return path


def scale(args: argparse.Namespace, work: Path) -> list[dict]:
    from frameexit.synthetic import generate_corpus

    clips = work / "clips"
    generate_corpus(str(clips), num_videos=16, num_classes=4, image_size=32, min_frames=8,
                    max_frames=12, preset="ultrafast", workers=args.cores)  # fmt: skip
    sources = sorted((clips / "videos").glob("*.mp4"))
    model = checkpoint(str(work / "tiny-T2.pt"), 2)
    rows = []
    for n in args.sizes:
        inputs = work / f"inputs-{n}"
        inputs.mkdir()
        for i in range(n):
            os.symlink(sources[i % len(sources)], inputs / f"v{i:07d}.mp4")
        out = work / f"labels-{n}"
        argv = ["--input", str(inputs), "--output", str(out), "--checkpoint", model,
                "--no-progress", "label.batch_size=64", "label.part_size=4096",
                f"label.concurrency={args.cores}", "label.cpus_per_actor=1"]  # fmt: skip
        full = run_child(argv)
        again = run_child(argv)
        s = full["summary"]
        rows.append(
            {
                "inputs": n,
                "complete": s["complete"] and again["summary"]["complete"],
                "label_seconds": full["seconds"],
                "videos_per_second": s["run"]["videos_per_second"],
                "driver_peak_rss_mb": full["peak_rss_mb"],
                "resume_seconds": again["seconds"],
                "resume_peak_rss_mb": again["peak_rss_mb"],
                "resume_labeled": again["summary"]["run"]["videos"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def prefilled(args: argparse.Namespace, work: Path) -> list[dict]:
    """Resume at sizes where labeling every input is too slow here. For each N:

    1. a real first run on the first 16 rows of a manifest creates the output's records
       (fingerprint, config) as any run does;
    2. the manifest grows to N rows (16 clips, each repeated: every repeat is its own
       entry), and all but ``--left`` rows get committed rows written with the project's
       own part writer, in parts of ``label.part_size`` — rows as a run writes them
       (status ``ok``, one label, exit step 1);
    3. the real entry point runs again on it (measured): it reads the N inputs and the
       committed parts, plans, labels the ``--left`` rows, compacts and summarises.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from frameexit.synthetic import generate_corpus
    from pipelines.labeling import (
        OUTPUT_SCHEMA,
        PartWriter,
        list_parts,
        read_committed,
        read_inputs,
    )

    clips = work / "prefill-clips"
    generate_corpus(str(clips), num_videos=16, num_classes=4, image_size=32, min_frames=8,
                    max_frames=12, preset="ultrafast", workers=args.cores)  # fmt: skip
    sources = [str(p) for p in sorted((clips / "videos").glob("*.mp4"))]
    model = checkpoint(str(work / "prefill-T2.pt"), 2)
    rows = []
    for n in args.prefill:
        manifest = work / f"prefill-{n}.parquet"
        out = work / f"prefill-labels-{n}"
        argv = ["--input", str(manifest), "--output", str(out), "--checkpoint", model,
                "--no-progress", "label.batch_size=64", f"label.concurrency={args.cores}",
                "label.cpus_per_actor=1"]  # fmt: skip
        videos = pa.array([sources[i % len(sources)] for i in range(n)], pa.string())
        pq.write_table(pa.table({"video": videos.slice(0, 16)}), manifest)
        run_child(argv)  # 1. the output's records, the real way
        pq.write_table(pa.table({"video": videos}), manifest)  # 2. N rows
        began = time.perf_counter()
        inputs = read_inputs(str(manifest)).videos
        done = read_committed(str(out)).ids()
        fill = inputs.slice(0, n - args.left)
        fill = fill.filter(pc.invert(pc.is_in(fill.column("input_id"), value_set=done)))
        k = fill.num_rows
        table = pa.table(
            {
                "row": fill.column("row"),
                "input_id": fill.column("input_id"),
                "video": fill.column("video"),
                "start": fill.column("start"),
                "end": fill.column("end"),
                "status": pa.array(["ok"] * k),
                "retryable": pa.array([False] * k),
                "label": pa.array(["class_0"] * k),
                "labels": pa.array([["class_0"]] * k, pa.list_(pa.string())),
                "label_ids": pa.array([[0]] * k, pa.list_(pa.int32())),
                "scores": pa.array([[0.9]] * k, pa.list_(pa.float32())),
                "exit_step": pa.array([1] * k, pa.int32()),
                "frames_decoded": pa.array([1] * k, pa.int32()),
                "num_frames": pa.array([10] * k, pa.int32()),
                "gflops": pa.array([0.01] * k),
                "attempts": pa.array([1] * k, pa.int32()),
                "run_id": pa.array(["prefill"] * k),
                "calibration": pa.array([False] * k),
            }  # fmt: skip
        )
        table = table.cast(pa.schema([OUTPUT_SCHEMA.field(c) for c in table.column_names]))
        missing = [f for f in OUTPUT_SCHEMA if f.name not in table.column_names]
        for f in missing:
            table = table.append_column(f, pa.nulls(k, f.type))
        writer = PartWriter(str(out), {}, args.part_size)
        writer.add(table.select(OUTPUT_SCHEMA.names))
        writer.flush()
        filled = time.perf_counter() - began
        parts = len(list_parts(str(out)))
        again = run_child([*argv, f"label.part_size={args.part_size}"])  # 3. measured
        summary = again["summary"]
        rows.append(
            {
                "inputs": n,
                "prefilled_rows": k + 16,
                "parts": parts,
                "prefill_seconds": filled,
                "complete": summary["complete"],
                "labeled": summary["run"]["videos"],
                "driver_peak_rss_mb": again["peak_rss_mb"],
                "resume_seconds": again["seconds"],
                "phase_seconds": summary.get("phase_seconds", {}),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _prefill_table(rows: list[dict]) -> None:
    if not rows:
        return
    names = ["inputs", "read_committed", "plan", "label", "compact", "summary"]
    print(f"\n{'inputs':>9} {'parts':>6} {'labeled':>7} {'driver peak RSS MB':>19} "
          f"{'resume s':>9} " + " ".join(f"{n:>14}" for n in names))  # fmt: skip
    for r in rows:
        phases = r["phase_seconds"]
        print(f"{r['inputs']:>9} {r['parts']:>6} {r['labeled']:>7} "
              f"{r['driver_peak_rss_mb']:>19.0f} {r['resume_seconds']:>9.1f} "
              + " ".join(f"{phases.get(n, float('nan')):>14.2f}" for n in names))  # fmt: skip
    print("rows before the run: committed with the project's part writer (see --help); "
          "'inputs' is reading the manifest and deriving ids")  # fmt: skip


def actors(args: argparse.Namespace, work: Path) -> list[dict]:
    """The two setups alternated ``--actor-repeats`` times (A B A B ...: drift on a shared
    machine hits both), each over ``--actor-inputs`` links to ``--actor-videos`` clips."""
    from frameexit.synthetic import generate_corpus

    generate_corpus(str(work / "real"), num_videos=args.actor_videos, num_classes=4,
                    image_size=None, width=256, height=192, preset="veryfast",
                    workers=args.cores)  # fmt: skip
    sources = sorted((work / "real" / "videos").glob("*.mp4"))
    inputs = work / "actor-inputs"
    inputs.mkdir()
    for i in range(args.actor_inputs):
        os.symlink(sources[i % len(sources)], inputs / f"v{i:06d}.mp4")
    model = checkpoint(str(work / "tiny-T10.pt"), 10)
    setups = (
        ("two 1-CPU actors", ["label.concurrency=2", "label.cpus_per_actor=1",
                              "--decode-threads", "2"]),
        ("one 2-CPU actor, 2 decode threads", ["label.concurrency=1", "label.cpus_per_actor=2",
                                               "--decode-threads", "2"]),
        ("  same, step t+1 decoded ahead", ["label.concurrency=1", "label.cpus_per_actor=2",
                                           "label.prefetch_next_step=true",
                                           "--decode-threads", "2"]),
    )  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name, _ in setups}
    whole: dict[str, list[float]] = {name: [] for name, _ in setups}  # start-up counted
    for repeat in range(args.actor_repeats):
        for name, extra in setups:
            out = work / f"actors-{len(rates[name])}-{name.split()[0]}"
            argv = ["--input", str(inputs), "--output", str(out), "--checkpoint", model,
                    "--no-progress", "--no-exit", "label.batch_size=8", *extra]  # fmt: skip
            run = run_child(argv)["summary"]["run"]
            rates[name].append(run["steady_videos_per_second"])
            whole[name].append(run["videos_per_second"])
            print(json.dumps({"setup": name, "repeat": repeat,
                              "steady_videos_per_second": rates[name][-1],
                              "videos_per_second": run["videos_per_second"]}), flush=True)  # fmt: skip
    return [
        {
            "setup": name,
            "steady_videos_per_second": sum(r) / len(r),
            "repeats": r,
            "videos_per_second": sum(whole[name]) / len(whole[name]),
        }  # fmt: skip
        for name, r in rates.items()
    ]


def _scale_table(rows: list[dict]) -> float:
    if not rows:
        return float("nan")
    print(f"\n{'inputs':>8} {'label s':>8} {'videos/s':>9} {'driver peak RSS MB':>19} "
          f"{'resume s':>9} {'resume RSS MB':>14}")  # fmt: skip
    for r in rows:
        print(f"{r['inputs']:>8} {r['label_seconds']:>8.1f} {r['videos_per_second']:>9.1f} "
              f"{r['driver_peak_rss_mb']:>19.0f} {r['resume_seconds']:>9.2f} "
              f"{r['resume_peak_rss_mb']:>14.0f}")  # fmt: skip
    growth = rows[-1]["driver_peak_rss_mb"] / rows[0]["driver_peak_rss_mb"]
    print(f"driver peak RSS {rows[-1]['inputs']} / {rows[0]['inputs']} inputs: {growth:.2f}x "
          f"(goal <= 1.2x); resume at {rows[-1]['inputs']}: {rows[-1]['resume_seconds']:.1f} s "
          "(goal <= 10 s)")  # fmt: skip
    return growth


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--actor-videos", type=int, default=96, help="distinct clips")
    parser.add_argument("--actor-inputs", type=int, default=960, help="inputs (links)")
    parser.add_argument("--actor-repeats", type=int, default=2)
    parser.add_argument("--skip-scale", action="store_true", help="only the actor check")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-actors", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--prefill",
        type=int,
        nargs="*",
        default=[],
        help="also resume at these sizes with a prefilled output",
    )
    parser.add_argument("--left", type=int, default=10, help="rows a prefilled resume labels")
    parser.add_argument("--part-size", type=int, default=256, help="rows per prefilled part")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fe-label-scale-") as tmp:
        work = Path(tmp)
        rows = [] if args.skip_scale else scale(args, work)
        filled = prefilled(args, work) if args.prefill else []
        checks = [] if args.skip_actors else actors(args, work)
    growth = _scale_table(rows)
    _prefill_table(filled)
    result = {"scale": rows, "rss_growth": growth, "prefilled": filled, "actors": checks}
    if checks:
        ratio = checks[1]["steady_videos_per_second"] / checks[0]["steady_videos_per_second"]
        result["one_2cpu_actor_over_two_1cpu_actors"] = ratio
        for c in checks:
            runs = ", ".join(f"{r:.1f}" for r in c["repeats"])
            print(f"{c['setup']:<36} {c['steady_videos_per_second']:.1f} videos/s (steady; {runs}),"
                  f" {c['videos_per_second']:.1f} with start-up")  # fmt: skip
        overall = checks[1]["videos_per_second"] / checks[0]["videos_per_second"]
        result["one_2cpu_actor_over_two_1cpu_actors_with_startup"] = overall
        print(f"one 2-CPU actor / two 1-CPU actors: {ratio:.2f}x steady (goal >= 0.9x), "
              f"{overall:.2f}x with start-up")  # fmt: skip
        if len(checks) > 2:
            ahead = checks[2]["steady_videos_per_second"] / checks[0]["steady_videos_per_second"]
            result["decoded_ahead_over_two_1cpu_actors"] = ahead
            print(f"  with step t+1 decoded ahead: {ahead:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[sys.argv.index("--") + 1 :])
    else:
        main(sys.argv[1:])

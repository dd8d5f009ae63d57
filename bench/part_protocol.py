"""How many seeded schedules does the part protocol survive? (``pipelines.labeling.simulation``)

    python bench/part_protocol.py                       # 20,000 schedules on all cores
    python bench/part_protocol.py --schedules 200000 --first-seed 1000000 --json out.json

Each schedule plays two to four labeling runs (and compaction-only runs) on one output with
an input that may change between them, interleaved by a seeded scheduler, with crashes
before any write or delete of commit and compaction and lease takeovers while the old
holder is alive; after every step it checks that no committed winner was lost, and after a
clean final run that the output holds exactly one row per current input. A violation stops
the run with its seed and trace (replay: ``Simulation(seed, dir).run()``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.labeling.simulation import run_schedules  # noqa: E402


def _chunk(span: tuple[int, int]) -> dict[str, int]:
    first, count = span
    root = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return run_schedules(count, first_seed=first, root=root)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=20000)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the totals here")
    args = parser.parse_args(argv)
    size = max(1, min(500, args.schedules // max(1, args.workers)))
    spans = [
        (args.first_seed + start, min(size, args.schedules - start))
        for start in range(0, args.schedules, size)
    ]
    began = time.perf_counter()
    totals: dict[str, float] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for counts in pool.map(_chunk, spans):
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
    totals["seconds"] = round(time.perf_counter() - began, 1)
    totals["seeds"] = f"{args.first_seed}..{args.first_seed + args.schedules - 1}"
    print(f"{'schedules':>10} {'steps':>8} {'crashes':>8} {'takeovers':>9} "
          f"{'fenced':>7} {'checks':>8} {'seconds':>8}  violations")  # fmt: skip
    print(f"{totals['schedules']:>10} {totals['steps']:>8} {totals['crashes']:>8} "
          f"{totals['takeovers']:>9} {totals['fenced']:>7} {totals['checks']:>8} "
          f"{totals['seconds']:>8}  0 (seeds {totals['seeds']})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(totals, indent=1))
    return totals


if __name__ == "__main__":
    main()

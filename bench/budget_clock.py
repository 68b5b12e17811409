#!/usr/bin/env python3
"""Is a CPU-time budget steadier than a wall-time one on a shared CPU? (a measurement, not a test)

Runs the baseline train.py on the cpu profile through python/supervise.py (unsandboxed, with
python/tests/supervised_run.py), one run after another with seeds 100, 101, ..., scores each
hand-over with evaluate.py, and compares the budget's two clocks (supervise.py `budget_clock`):
  wall   seconds from the first batch, as on GPUs
  cpu    CPU seconds of the trainer's process tree from the first batch, read from /proc
under each load (bench/load_stalls.py: `none`; `yes`, one busy process per core in this script's
session; `yes-apart`, the same as separate jobs, each in a session of its own) and OpenMP setting
(`one-thread`: OMP_NUM_THREADS=1; `default`: a thread per core).

Usage: python/.venv/bin/python bench/budget_clock.py [--runs 4] [--cells none/wall/one-thread,...] [--label L]
Writes bench/results-budget-clock-<hostname>[-L].json: per cell, every run's val_bpb, steps and times,
and the mean and sample standard deviation of val_bpb and steps.
"""

import argparse
import json
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time

from load_stalls import SETTINGS, start_load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python", "tests"))
from supervised_run import TRAIN_PY, evaluate, prepare_data, run_supervised  # noqa: E402

CELLS = ("none/wall/one-thread,none/cpu/one-thread,yes/wall/one-thread,yes/cpu/one-thread,"
         "yes/wall/default,yes/cpu/default")


def one_run(data_dir, workdir, env, clock, seed):
    report, log, handover, wall = run_supervised(TRAIN_PY, data_dir, workdir, seed=seed, env=env,
                                                 budget_clock=clock, timeout=600)
    steps = re.search(r"^num_steps:\s+(\d+)", log, re.M)
    row = {"seed": seed, "outcome": report["outcome"], "steps": int(steps.group(1)) if steps else None,
           "training_wall_seconds": report["training_seconds"], "budget_used_seconds": report["budget_used_seconds"],
           "cpu_seconds": report["cpu_seconds"], "val_bpb": None}
    if report["outcome"] == "handed_over":
        row["val_bpb"] = evaluate(handover, data_dir)["val_bpb"]
    return row


def spread(values):
    values = [v for v in values if v is not None]
    return {"mean": round(statistics.mean(values), 5) if values else None,
            "sd": round(statistics.stdev(values), 5) if len(values) > 1 else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4, help="runs per cell")
    parser.add_argument("--cells", default=CELLS, help="load/clock/setting, comma separated")
    parser.add_argument("--label", default="", help="added to the results file's name")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="budget-clock-")
    data_dir = prepare_data("cpu", os.path.join(work, "data"))
    results = []
    for cell in args.cells.split(","):
        load, clock, setting = cell.split("/")
        env = SETTINGS[setting]
        load_procs = start_load(load, {**os.environ, **env})
        try:
            time.sleep(1.0)
            runs = [one_run(data_dir, tempfile.mkdtemp(dir=work), env, clock, 100 + i) for i in range(args.runs)]
        finally:
            for p in load_procs:
                p.kill()
                p.wait()
        row = {"load": load, "clock": clock, "setting": setting, "runs": runs,
               "not_handed_over": sum(r["outcome"] != "handed_over" for r in runs),
               "val_bpb": spread([r["val_bpb"] for r in runs]), "steps": spread([r["steps"] for r in runs]),
               "median_training_wall_seconds": statistics.median(r["training_wall_seconds"] or 0 for r in runs)}
        results.append(row)
        print(f"{load:5s} {clock:5s} {setting:11s} val_bpb {row['val_bpb']['mean']} sd {row['val_bpb']['sd']} | "
              f"steps {row['steps']['mean']} sd {row['steps']['sd']} | wall {row['median_training_wall_seconds']:.1f} s | "
              f"not handed over {row['not_handed_over']}/{len(runs)}", flush=True)
    out = os.path.join(ROOT, "bench", f"results-budget-clock-{socket.gethostname()}{'-' + args.label if args.label else ''}.json")
    with open(out, "w") as f:
        json.dump({"host": socket.gethostname(), "machine": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "runs_per_cell": args.runs, "results": results}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

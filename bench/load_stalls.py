#!/usr/bin/env python3
"""Do smoke runs keep their budget on a loaded machine? (a measurement script, not a test)

Runs the baseline train.py on the smoke profile through python/supervise.py (unsandboxed, with
python/tests/supervised_run.py, as the end-to-end tests do), one run after another, while a
competing process loads the cores, for each OpenMP setting. Records each run's outcome, training seconds and its slowest
step after the first, read from the log's progress lines (every step slower than LOG_INTERVAL_S
is printed; the faster ones are not, so the figure is a lower bound once steps are that fast).

Loads:
  torch   another PyTorch process doing matrix products on the same OpenMP setting, as the other
          test lane's training runs do
  yes     two `yes` processes, one per core of this machine (issue 15's loaded run), in this
          script's session
  yes-apart  the same, each in a session of its own (separate jobs, as the kernel's autogroups
          see them)
Settings:
  default       OpenMP as PyTorch starts it: one thread per core, waiting threads spin a while
  passive       OMP_WAIT_POLICY=PASSIVE: waiting threads sleep at once
  one-thread    OMP_NUM_THREADS=1

Usage: python/.venv/bin/python bench/load_stalls.py [--runs 6] [--loads torch,yes,none]
Writes bench/results-load-stalls-<hostname>.json.
"""

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python", "tests"))
from supervised_run import PYTHON, TRAIN_PY, prepare_data, run_supervised  # noqa: E402

SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
}
COMPETITOR = ("import torch, time\n"
              "a = torch.randn(256, 256)\n"
              "while True:\n"
              "    for _ in range(20): a = torch.tanh(a @ a.T / 16)\n"
              "    time.sleep(0.002)\n")


def start_load(load, env):
    if load == "none":
        return []
    if load in ("yes", "yes-apart"):
        # "yes-apart": each in a session of its own, as separate jobs are; with the kernel's
        # autogroups, CPU time is shared between sessions first, so `yes` processes in this
        # script's session compete only with it and the supervisor, not with the trainer (setsid)
        return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, start_new_session=load == "yes-apart")
                for _ in range(os.cpu_count() or 2)]
    return [subprocess.Popen([PYTHON, "-c", COMPETITOR], env=env)]


def smoke_run(data_dir, workdir, env, seed):
    report, log, _, _ = run_supervised(TRAIN_PY, data_dir, workdir, seed=seed, env=env, timeout=300)
    steps = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"^step\s+(\d+) .*\| dt: (\d+)ms", log, re.M)]
    return {"outcome": report["outcome"], "training_seconds": report["training_seconds"],
            "steps": steps[-1][0] if steps else 0,
            "slowest_step_ms": max((dt for step, dt in steps if step > 1), default=None)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6, help="smoke runs per load and setting")
    parser.add_argument("--loads", default="torch,yes,none")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="load-stalls-")
    data_dir = os.path.join(work, "data")
    prepare_data("smoke", data_dir)
    results = []
    for load in args.loads.split(","):
        for name in args.settings.split(","):
            env = SETTINGS[name]
            load_procs = start_load(load, {**os.environ, **env})
            try:
                time.sleep(1.0)  # the competitor's torch import
                runs = [smoke_run(data_dir, tempfile.mkdtemp(dir=work), env, seed=100 + i) for i in range(args.runs)]
            finally:
                for p in load_procs:
                    p.kill()
                    p.wait()
            over = sum(r["outcome"] != "handed_over" for r in runs)
            row = {"load": load, "setting": name, "runs": runs, "not_handed_over": over,
                   "median_steps": statistics.median(r["steps"] for r in runs),
                   "median_training_seconds": statistics.median(r["training_seconds"] or 0 for r in runs),
                   "worst_step_ms": max((r["slowest_step_ms"] or 0) for r in runs)}
            results.append(row)
            print(f"{load:6s} {name:11s} not handed over {over}/{len(runs)} | median steps {row['median_steps']} | "
                  f"median training {row['median_training_seconds']:.2f} s | worst step {row['worst_step_ms']} ms",
                  flush=True)
    out = os.path.join(ROOT, "bench", f"results-load-stalls-{socket.gethostname()}.json")
    with open(out, "w") as f:
        json.dump({"host": socket.gethostname(), "machine": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "results": results}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

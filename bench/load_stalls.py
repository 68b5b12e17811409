#!/usr/bin/env python3
"""Do smoke runs keep their budget on a loaded machine? (a measurement script, not a test)

Runs the baseline train.py on the smoke profile through python/supervise.py (unsandboxed, as
python/tests/test_train_e2e.py does), one run after another, while a competing process loads the
cores, for each OpenMP setting. Records each run's outcome, training seconds and its slowest
step after the first, read from the log's progress lines (every step slower than LOG_INTERVAL_S
is printed; the faster ones are not, so the figure is a lower bound once steps are that fast).

Loads:
  torch   another PyTorch process doing matrix products on the same OpenMP setting, as the other
          test lane's training runs do
  yes     two `yes` processes, one per core of this machine (issue 15's loaded run)
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
PYTHON_DIR = os.path.join(ROOT, "python")
PYTHON = sys.executable
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
    if load == "yes":
        return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(os.cpu_count() or 2)]
    return [subprocess.Popen([PYTHON, "-c", COMPETITOR], env=env)]


def smoke_run(data_dir, workdir, env, seed):
    with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
        c = json.load(f)["constants"]
    scratch = os.path.join(workdir, "scratch")
    os.makedirs(scratch, exist_ok=True)
    trainer_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch, "PYTHONPATH": PYTHON_DIR,
                   "AUTORESEARCH_DATA_DIR": data_dir, "AUTORESEARCH_SEED": str(seed),
                   "PYTHONDONTWRITEBYTECODE": "1", **env}
    spec = {"trainer_argv": [PYTHON, "-u", os.path.join(PYTHON_DIR, "train.py")], "trainer_env": trainer_env,
            "log_path": os.path.join(workdir, "run.log"), "data_dir": data_dir, "scratch_host": scratch,
            "handover_dir": os.path.join(workdir, "handover"), "seed": seed,
            "time_budget": c["TIME_BUDGET"], "budget_slack": c["BUDGET_SLACK"],
            "startup_allowance": c["STARTUP_ALLOWANCE"], "export_allowance": c["EXPORT_ALLOWANCE"],
            "max_batch_tokens": 1 << 24}
    spec_path = os.path.join(workdir, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    proc = subprocess.run([PYTHON, os.path.join(PYTHON_DIR, "supervise.py"), "--spec", spec_path],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    with open(spec["log_path"], encoding="utf-8") as f:
        log = f.read()
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
    subprocess.run([PYTHON, os.path.join(PYTHON_DIR, "prepare_data.py"), "--profile", "smoke", "--data-dir", data_dir],
                   check=True, capture_output=True)
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

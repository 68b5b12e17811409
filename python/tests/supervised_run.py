"""One training run as the server makes it, without the sandbox: supervise.py with a spec built
from the data's manifest, and evaluate.py on what was handed over. For the end-to-end tests and
the benchmarks under bench/ that measure runs.
"""

import json
import os
import subprocess
import sys
import time

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPARE_DATA_PY = os.path.join(PYTHON_DIR, "prepare_data.py")
SUPERVISE_PY = os.path.join(PYTHON_DIR, "supervise.py")
EVALUATE_PY = os.path.join(PYTHON_DIR, "evaluate.py")
TRAIN_PY = os.path.join(PYTHON_DIR, "train.py")
PYTHON = sys.executable
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")   # passed on to runs, as the server does


def prepare_data(profile, data_dir, timeout=900):
    proc = subprocess.run([PYTHON, PREPARE_DATA_PY, "--profile", profile, "--data-dir", data_dir],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return data_dir


def constants(data_dir):
    with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)["constants"]


def run_supervised(script, data_dir, workdir, seed=42, env=None, budget_clock=None, time_budget=None, timeout=600):
    """Runs a train.py through supervise.py, unsandboxed. env: variables for the trainer beyond
    PATH, HOME and the harness's (default: this process's thread settings); time_budget: instead
    of the profile's TIME_BUDGET. Returns (report, log text, handover dir, wall seconds)."""
    c = constants(data_dir)
    workdir = str(workdir)
    scratch = os.path.join(workdir, "scratch")
    os.makedirs(scratch, exist_ok=True)
    if env is None:
        env = {k: os.environ[k] for k in THREAD_VARS if k in os.environ}
    spec = {
        "trainer_argv": [PYTHON, "-u", script],
        "trainer_env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch,
                        "PYTHONPATH": PYTHON_DIR, "AUTORESEARCH_DATA_DIR": data_dir,
                        "AUTORESEARCH_SEED": str(seed), "PYTHONDONTWRITEBYTECODE": "1", **env},
        "log_path": os.path.join(workdir, "run.log"),
        "data_dir": data_dir,
        "scratch_host": scratch,
        "handover_dir": os.path.join(workdir, "handover"),
        "seed": seed,
        "time_budget": time_budget or c["TIME_BUDGET"], "budget_slack": c["BUDGET_SLACK"],
        "startup_allowance": c["STARTUP_ALLOWANCE"], "export_allowance": c["EXPORT_ALLOWANCE"],
        "max_batch_tokens": 1 << 24,
    }
    if budget_clock is not None:
        spec["budget_clock"] = budget_clock
    spec_path = os.path.join(workdir, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    t0 = time.time()
    proc = subprocess.run([PYTHON, SUPERVISE_PY, "--spec", spec_path], capture_output=True, text=True,
                          timeout=timeout)
    wall = time.time() - t0
    with open(spec["log_path"], encoding="utf-8") as f:
        log = f.read()
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), log, spec["handover_dir"], wall


def evaluate(handover, data_dir, timeout=600):
    """Scores a hand-over with evaluate.py as the protocol says (the result on fd 3); None when
    evaluate.py is absent."""
    if not os.path.exists(EVALUATE_PY):
        return None
    r, w = os.pipe()
    proc = subprocess.Popen([PYTHON, EVALUATE_PY, "--model", os.path.join(handover, "model.pt"),
                             "--weights", os.path.join(handover, "weights.pt"), "--data-dir", data_dir,
                             "--seed", "1"], pass_fds=(w, 3), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: os.dup2(w, 3))
    os.close(w)
    with os.fdopen(r, "rb") as f:
        result = f.read()
    proc.communicate(timeout=timeout)
    return json.loads(result)

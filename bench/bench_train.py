#!/usr/bin/env python3
"""Benchmark of the baseline python/train.py (a measurement script, not a test).

Prepares data for a profile (or reuses --data-dir), runs the unmodified train.py as the server
would, and records what the run reports:
  every device : whole-run wall time, training tokens/s, val_bpb, steps
  CUDA         : MFU, start-up seconds (total minus training), peak VRAM
The result goes to bench/results-train-<hostname>.json, naming the machine.

Usage:
  python/.venv/bin/python bench/bench_train.py                       # cpu profile here, gpu where CUDA is
  python3 bench/bench_train.py --profile gpu --data-dir /data/gpu --runs 2
"""

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_DIR = os.path.join(ROOT, "python")
PROGRESS_RE = re.compile(r"^step\s+(\d+)\s+\(\s*([\d.]+)%\)\s*\|\s*loss:\s*(\S+).*tok/s:\s*([\d,]+)")


def machine_info(python):
    probe = ("import json, torch; c = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
             "'cuda': c, 'gpu': torch.cuda.get_device_name(0) if c else None, "
             "'gpu_count': torch.cuda.device_count() if c else 0, 'torch_threads': torch.get_num_threads()}))")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    except OSError:
        pass
    info.update({"hostname": socket.gethostname(), "platform": platform.platform(),
                 "cpu": cpu_model, "cpu_count": os.cpu_count(), "python": python,
                 "python_version": subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                                  capture_output=True, text=True).stdout.strip()})
    return info


def prepare(python, profile, data_dir):
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
            if json.load(f).get("profile") == profile:
                return 0.0
    t0 = time.time()
    subprocess.run([python, os.path.join(PYTHON_DIR, "prepare.py"), "--profile", profile, "--data-dir", data_dir],
                   check=True)
    return time.time() - t0


def run_once(python, data_dir, workdir):
    nonce = uuid.uuid4().hex
    result_path = os.path.join(workdir, f"result-{nonce}.json")
    env = dict(os.environ, AUTORESEARCH_DATA_DIR=data_dir, AUTORESEARCH_RESULT_PATH=result_path,
               AUTORESEARCH_RUN_NONCE=nonce)
    t0 = time.time()
    proc = subprocess.run([python, os.path.join(PYTHON_DIR, "train.py")], cwd=PYTHON_DIR, env=env,
                          capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"train.py failed with exit code {proc.returncode}")
    summary = {}
    for line in proc.stdout.split("\n---\n")[-1].splitlines():
        m = re.match(r"^(\w+):\s+(\S+)\s*$", line)
        if m:
            summary[m.group(1)] = float(m.group(2))
    with open(result_path, encoding="utf-8") as f:
        record = json.load(f)
    os.remove(result_path)
    step_rates = [float(m.group(4).replace(",", "")) for m in map(PROGRESS_RE.match, proc.stdout.splitlines()) if m]
    header = next((line for line in proc.stdout.splitlines() if line.startswith("device:")), "")
    training = summary["training_seconds"]
    # total_tokens_M is printed with one decimal: count tokens from the steps and the header's batch
    batch = re.search(r"= (\d+) tokens", header)
    tokens = summary["num_steps"] * int(batch.group(1)) if batch else summary["total_tokens_M"] * 1e6
    return {
        "wall_seconds": round(wall, 2),
        "val_bpb": record["val_bpb"],
        "training_seconds": training,
        "total_seconds": summary["total_seconds"],
        "startup_and_eval_seconds": round(summary["total_seconds"] - training, 2),
        "eval_seconds": record["eval_seconds"],
        "tokens_per_second": round(tokens / training) if training else 0,
        "median_step_tokens_per_second": sorted(step_rates)[len(step_rates) // 2] if step_rates else None,
        "mfu_percent": summary["mfu_percent"],
        "peak_vram_mb": summary["peak_vram_mb"],
        "num_steps": int(summary["num_steps"]),
        "num_params_M": summary["num_params_M"],
        "depth": int(summary["depth"]),
        "device": record["device"],
        "config": header,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["cpu", "gpu", "smoke"], help="default: gpu with CUDA, else cpu")
    parser.add_argument("--data-dir", help="prepared data (prepared here if missing); default: a temp dir")
    parser.add_argument("--runs", type=int, default=1, help="repeat the run (all runs are recorded)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with torch")
    parser.add_argument("--out", help="default: bench/results-train-<hostname>.json")
    args = parser.parse_args()

    info = machine_info(args.python)
    profile = args.profile or ("gpu" if info["cuda"] else "cpu")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data_dir = os.path.abspath(args.data_dir or os.path.join(tmp, f"data-{profile}"))
        prepare_seconds = prepare(args.python, profile, data_dir)
        runs = []
        for i in range(args.runs):
            run = run_once(args.python, data_dir, tmp)
            runs.append(run)
            print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v}" for k, v in run.items() if k != "config"),
                  flush=True)

    result = {
        "benchmark": "train.py baseline",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "profile": profile,
        "prepare_seconds": round(prepare_seconds, 1),
        "runs": runs,
    }
    out = args.out or os.path.join(ROOT, "bench", f"results-train-{socket.gethostname()}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

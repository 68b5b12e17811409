#!/usr/bin/env python3
"""Does torch.compile pay within the cpu profile's budget? (a measurement script, not a test)

Builds the cpu profile's model and optimizers from train.py's own definitions, then alternates
rounds of eager and compiled training steps on random tokens (same shapes as train.py: DEVICE_BATCH
x SEQ_LEN, GRAD_ACCUM micro-batches per step), so that both see the same machine load. Records the
compile time (the first compiled step, start-up in a real run) and the median step time of each
mode; the verdict compares the steps each would fit into TIME_BUDGET.

Usage: python/.venv/bin/python bench/cpu_compile.py [--rounds 4] [--steps 10]
Writes bench/results-cpu-compile-<hostname>.json.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "python"), os.path.join(ROOT, "python", "tests")]
from train_definitions import model_definitions  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="steps per round and mode")
    args = parser.parse_args()

    ns = model_definitions("cpu", {})
    B, T, V = ns["DEVICE_BATCH"], ns["SEQ_LEN"], ns["VOCAB_SIZE"]
    accum = ns["TOTAL_BATCH"] // (B * T)
    torch.manual_seed(0)
    models = {"eager": ns["GPT"]()}
    models["compiled"] = ns["GPT"]()
    models["compiled"].load_state_dict(models["eager"].state_dict())
    runners = {"eager": models["eager"], "compiled": torch.compile(models["compiled"], dynamic=False)}
    optimizers = {mode: ns["build_optimizers"](m) for mode, m in models.items()}
    gen = torch.Generator().manual_seed(1)

    def step(mode):
        t0 = time.perf_counter()
        for _ in range(accum):
            rows = torch.randint(0, V, (B, T + 1), generator=gen)
            loss = runners[mode](rows[:, :-1], rows[:, 1:])
            (loss / accum).backward()
        for opt in optimizers[mode]:
            opt.step()
        models[mode].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    compile_seconds = step("compiled")   # traces and compiles: start-up time in a real run
    step("eager")
    times = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        for mode in ("eager", "compiled"):
            times[mode] += [step(mode) for _ in range(args.steps)]

    budget = ns["TIME_BUDGET"]
    median = {mode: statistics.median(ts) for mode, ts in times.items()}
    result = {
        "benchmark": "torch.compile on the cpu profile (train.py's model and optimizers, random tokens)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{socket.gethostname()} ({os.cpu_count()} x {platform.processor() or 'cpu'})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {"batch": B, "seq_len": T, "grad_accum": accum, "depth": ns["DEPTH"], "dim": ns["MODEL_DIM"]},
        "compile_seconds": round(compile_seconds, 2),
        "median_step_seconds": {mode: round(v, 4) for mode, v in median.items()},
        "compiled_speedup": round(median["eager"] / median["compiled"], 3),
        "steps_in_budget": {mode: int(budget / v) for mode, v in median.items()},
        "time_budget": budget,
    }
    out = os.path.join(ROOT, "bench", f"results-cpu-compile-{socket.gethostname()}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

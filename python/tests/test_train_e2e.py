"""End-to-end tests of the baseline train.py against the real harness (python/prepare.py).

Run: /usr/bin/python3 -m pytest -q python/tests
- cpu profile: the unmodified train.py trains for the full 20 s budget on the embedded corpus;
  its printed summary must match the harness's result record and beat the uniform baseline.
- smoke profile: a clean run, and patched copies that diverge must stop with a FAIL line.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

pytest.importorskip("torch")

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPARE_PY = os.path.join(PYTHON_DIR, "prepare.py")
TRAIN_PY = os.path.join(PYTHON_DIR, "train.py")

SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth"]
RECORD_KEYS = ["schema", "val_bpb", "eval_tokens", "eval_bytes", "eval_seconds", "process_seconds",
               "nonce", "profile", "hashes", "device", "torch_version"]
# the same pattern the server uses (src/core/runner.ts) to follow progress
PROGRESS_RE = re.compile(r"^step\s+(\d+)\s+\(\s*([\d.]+)%\)\s*\|\s*loss:\s*([-+\d.eE]+|nan|inf)")
RUN_TIMEOUT_S = 600   # generous: the machine may be shared with other test runs


def prepare_data(profile, data_dir):
    proc = subprocess.run([sys.executable, PREPARE_PY, "--profile", profile, "--data-dir", data_dir],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return data_dir


@pytest.fixture(scope="module")
def cpu_data(tmp_path_factory):
    return prepare_data("cpu", str(tmp_path_factory.mktemp("data-cpu")))


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    return prepare_data("smoke", str(tmp_path_factory.mktemp("data-smoke")))


def run_train(script, data_dir, workdir):
    """Runs a train.py like the server does; returns (completed process, result path, nonce, seconds)."""
    nonce = uuid.uuid4().hex
    result_path = os.path.join(str(workdir), "result.json")
    env = dict(os.environ)
    env.update({
        "AUTORESEARCH_DATA_DIR": data_dir,
        "AUTORESEARCH_RESULT_PATH": result_path,
        "AUTORESEARCH_RUN_NONCE": nonce,
        "PYTHONPATH": PYTHON_DIR,   # `from prepare import ...` for copies outside python/
    })
    t0 = time.time()
    proc = subprocess.run([sys.executable, script], cwd=str(workdir), env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return proc, result_path, nonce, time.time() - t0


def parse_summary(stdout):
    """The block after the last '---' line: list of (key, value text) in printed order."""
    lines = stdout.splitlines()
    assert "---" in lines, "no summary block:\n" + stdout[-3000:]
    start = len(lines) - 1 - lines[::-1].index("---")
    pairs = []
    for line in lines[start + 1:]:
        m = re.match(r"^(\w+):\s+(\S+)\s*$", line)
        assert m, f"malformed summary line {line!r}"
        pairs.append((m.group(1), m.group(2)))
    return pairs


def patched_copy(tmp_path, replacements):
    src = open(TRAIN_PY, encoding="utf-8").read()
    for old, new in replacements:
        assert src.count(old) == 1, f"anchor {old!r} not found exactly once in train.py"
        src = src.replace(old, new)
    path = tmp_path / "train.py"
    path.write_text(src, encoding="utf-8")
    return str(path)


def test_baseline_cpu_profile(cpu_data, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc, result_path, nonce, wall = run_train(TRAIN_PY, cpu_data, workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert os.listdir(str(workdir)) == ["result.json"], "train.py must not write files"

    # progress lines: parseable by the server, budget share rising to 100 %
    progress = [PROGRESS_RE.match(line) for line in proc.stdout.splitlines()]
    progress = [(int(m.group(1)), float(m.group(2)), float(m.group(3))) for m in progress if m]
    assert len(progress) >= 5
    steps = [p[0] for p in progress]
    shares = [p[1] for p in progress]
    assert steps == sorted(steps) and shares == sorted(shares)
    assert shares[-1] == 100.0
    assert all(math.isfinite(p[2]) for p in progress)

    # summary block: every key, in order, numeric
    summary = parse_summary(proc.stdout)
    assert [k for k, _ in summary] == SUMMARY_KEYS
    values = {k: float(v) for k, v in summary}
    assert values["depth"] >= 1 and values["num_steps"] == steps[-1]
    assert 20.0 <= values["training_seconds"] < 20.0 + 15.0
    assert values["total_seconds"] > values["training_seconds"]
    assert values["mfu_percent"] == 0.0 and values["peak_vram_mb"] == 0.0   # CPU

    # the trusted result record agrees with the printed summary
    with open(result_path, encoding="utf-8") as f:
        record = json.load(f)
    for key in RECORD_KEYS:
        assert key in record, f"result record lacks {key}"
    assert record["nonce"] == nonce
    assert record["profile"] == "cpu"
    assert f"{record['val_bpb']:.6f}" == dict(summary)["val_bpb"]

    # it learned: far below a uniform distribution over the vocabulary
    with open(os.path.join(cpu_data, "manifest.json"), encoding="utf-8") as f:
        vocab = json.load(f)["constants"]["VOCAB_SIZE"]
    uniform_bpb = math.log2(vocab) * record["eval_tokens"] / record["eval_bytes"]
    assert record["val_bpb"] < 0.8 * uniform_bpb, (record["val_bpb"], uniform_bpb)

    # total_tokens_M has one decimal: count tokens from the steps and the batch in the header line
    batch = re.search(r"= (\d+) tokens", proc.stdout)
    tokens = values["num_steps"] * int(batch.group(1)) if batch else values["total_tokens_M"] * 1e6
    print(f"\n[bench] cpu baseline: wall {wall:.1f} s, training {values['training_seconds']:.1f} s, "
          f"{tokens / values['training_seconds']:,.0f} tok/s, {int(values['num_steps'])} steps, "
          f"val_bpb {record['val_bpb']:.4f} (uniform {uniform_bpb:.3f})")


def test_smoke_profile_runs_clean(smoke_data, tmp_path):
    proc, result_path, nonce, wall = run_train(TRAIN_PY, smoke_data, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [k for k, _ in parse_summary(proc.stdout)] == SUMMARY_KEYS
    with open(result_path, encoding="utf-8") as f:
        assert json.load(f)["nonce"] == nonce
    print(f"\n[bench] smoke baseline: wall {wall:.1f} s")


@pytest.mark.parametrize("name, replacements", [
    ("injected nan", [("loss = train_model(x, y)", "loss = train_model(x, y) * (float('nan') if step == 3 else 1.0)")]),
    ("huge learning rate", [("EMBED_LR = 0.6 ", "EMBED_LR = 1e4 "), ("HEAD_LR = 0.016 ", "HEAD_LR = 1e4 "),
                            ("SCALAR_LR = 0.04 ", "SCALAR_LR = 1e4 ")]),
])
def test_divergence_stops_with_fail(smoke_data, tmp_path, name, replacements):
    script = patched_copy(tmp_path, replacements)
    proc, result_path, _, _ = run_train(script, smoke_data, tmp_path)
    assert proc.returncode != 0, f"{name}: a diverging run must exit non-zero\n" + proc.stdout[-2000:]
    fail = [line for line in proc.stdout.splitlines() if line.startswith("FAIL: loss is ")]
    assert len(fail) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "lower the learning rate" in fail[0]
    assert not os.path.exists(result_path), "a diverged run must not be evaluated"
    assert "\n---\n" not in proc.stdout

"""Tests of the trusted supervisor (python/supervise.py) with real trainer processes, no mocks.

Each test writes a small trainer script, runs `supervise.py --spec spec.json` on a smoke data
directory prepared once with prepare_data.py, and checks the one-line JSON report, the files in
the hand-over folder and the log. Trainers are plain `python3 -u script` (unsandboxed) except
where the sandbox is the point (bwrap, when it works here).

Run: cd python && .venv/bin/python -m pytest tests/test_supervise.py -x -q
"""

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPERVISE_PY = os.path.join(PYTHON_DIR, "supervise.py")
PREPARE_DATA_PY = os.path.join(PYTHON_DIR, "prepare_data.py")
PYTHON = sys.executable  # the interpreter pytest runs under: the one the server would pick (test/python-tests.sh)
BWRAP = shutil.which("bwrap")

# A trainer that speaks the channel protocol by hand (no prepare.py, no torch): fast to start.
RAW = '''
import os, socket, sys, time, json, io, zipfile
sock = socket.socket(fileno=int(os.environ["AUTORESEARCH_CHANNEL_FD"]))
rf = sock.makefile("rb")
def ask(line, payload=b""):
    sock.sendall(line.encode() + b"\\n" + payload)
    return rf.readline().decode().strip()
def batch(b, t):
    a = ask(f"batch {b} {t}")
    if a.startswith("ok "):
        data = rf.read(int(a.split()[1]))
        assert len(data) == b * (t + 1) * 4
    return a
def archive(code=False):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"not really a pickle")
        if code:
            z.writestr("archive/code/__torch__.py", b"")
    return buf.getvalue()
'''


def write_corpus(folder, n_docs=40, chars=2000, seed=0):
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "en", "the", "and", "ion", "ver", "st", "pla", "mo", "qu", "ed"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    weights = [1.0 / (k + 1) for k in range(len(words))]
    os.makedirs(folder, exist_ok=True)
    for i in range(n_docs):
        text = " ".join(rng.choices(words, weights, k=chars // 5))
        with open(os.path.join(folder, f"doc{i:03d}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    return folder


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    corpus = write_corpus(str(tmp_path_factory.mktemp("corpus")))
    data = str(tmp_path_factory.mktemp("smoke"))
    proc = subprocess.run([PYTHON, PREPARE_DATA_PY, "--profile", "smoke", "--data-dir", data, "--corpus", corpus],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return data


def manifest(data_dir):
    with open(os.path.join(data_dir, "manifest.json")) as f:
        return json.load(f)


class Run:
    def __init__(self, report, returncode, stderr, log, handover):
        self.report, self.returncode, self.stderr, self.log, self.handover = report, returncode, stderr, log, handover


def trainer_spec(tmp_path, data_dir, script, argv_prefix=(), env=None, launcher=(), **spec):
    """Writes script as the trainer; returns the spec that runs it: `argv_prefix` before
    `python3 -u`, `launcher` between that and the script."""
    path = tmp_path / "trainer.py"
    path.write_text(textwrap.dedent(script), encoding="utf-8")
    env_all = {"PATH": "/usr/bin:/bin", "PYTHONPATH": PYTHON_DIR, "AUTORESEARCH_DATA_DIR": data_dir,
               "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env_all.update(env or {})
    full = {
        "trainer_argv": [*argv_prefix, PYTHON, "-u", *launcher, str(path)],
        "trainer_env": env_all,
        "log_path": str(tmp_path / "run.log"),
        "data_dir": data_dir,
        "scratch_host": str(tmp_path),
        "handover_dir": str(tmp_path / "handover"),
        "seed": 42, "time_budget": 1.0, "budget_slack": 0.2,
        "startup_allowance": 20, "export_allowance": 20,
        "max_batch_tokens": 1 << 16,
    }
    full.update(spec)
    return full


def supervise(tmp_path, data_dir, script, argv_prefix=(), env=None, timeout=60, **spec):
    """Writes script, runs supervise.py on it, returns a Run."""
    full = trainer_spec(tmp_path, data_dir, script, argv_prefix, env, **spec)
    (tmp_path / "spec.json").write_text(json.dumps(full))
    proc = subprocess.run([PYTHON, SUPERVISE_PY, "--spec", str(tmp_path / "spec.json")],
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    log = (tmp_path / "run.log").read_text() if (tmp_path / "run.log").exists() else ""
    return Run(json.loads(lines[0]), proc.returncode, proc.stderr, log, str(tmp_path / "handover"))


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def gone(pid, wait=3.0):
    """True once pid is no longer a live process (absent or a zombie)."""
    end = time.time() + wait
    while time.time() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def processes_running(marker):
    """Live pids whose command line contains marker."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state not in ("Z", "X"):
            found.append(int(name))
    return found


def bwrap_works():
    if not BWRAP:
        return False
    proc = subprocess.run([BWRAP, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--dev", "/dev",
                           "--proc", "/proc", "--", "/bin/true"], capture_output=True, timeout=30)
    return proc.returncode == 0


# A writable temporary folder, as the server's sandbox gives (a private /tmp): torch 2.x's optimizers
# import torch._dynamo, which needs one. /var/tmp here, since the test's files live under /tmp.
SANDBOX = ["--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev",
           "--proc", "/proc", "--tmpfs", "/var/tmp", "--"]
needs_bwrap = pytest.mark.skipif(not bwrap_works(), reason="bubblewrap is not available here")

HONEST = '''
import torch
import prepare
from prepare import make_dataloader, budget_used, finish_training, VOCAB_SIZE

class Bigram(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB_SIZE, VOCAB_SIZE)
        self.register_buffer("scale", torch.ones(1))
    def forward(self, idx):
        return self.emb(idx) * self.scale

torch.manual_seed(prepare.SEED)
model = Bigram()
opt = torch.optim.SGD(model.parameters(), lr=0.5)
assert budget_used() == 0.0
loader = make_dataloader(4, 16, "cpu")
steps = 0
while budget_used() < 0.5:
    x, y = next(loader)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert (x[:, 1:] == y[:, :-1]).all()
    loss = torch.nn.functional.cross_entropy(model(x).view(-1, VOCAB_SIZE), y.view(-1))
    opt.zero_grad(); loss.backward(); opt.step()
    steps += 1
torch.save(model.state_dict(), "expected.pt")
print("steps", steps, flush=True)
finish_training(model)
print("after finish_training", flush=True)
time.sleep(30)
'''


# ---------------------------------------------------------------------------------------------
# The honest path
# ---------------------------------------------------------------------------------------------

def test_honest_handover_writes_weights_and_model_with_measured_times(tmp_path, smoke_data):
    torch = pytest.importorskip("torch")
    run = supervise(tmp_path, smoke_data, "import time\n" + HONEST, scratch_host=str(tmp_path))
    r = run.report
    assert r["outcome"] == "handed_over", (r, run.log[-3000:], run.stderr)
    assert r["reason"] is None and run.returncode == 0
    assert 0 < r["startup_seconds"] < 20
    assert 0.5 <= r["training_seconds"] <= 1.2
    assert 0 <= r["export_seconds"] < 20
    assert r["batches_served"] > 0 and r["tokens_served"] == r["batches_served"] * 4 * 17
    assert r["cpu_seconds"] > 0.3
    assert r["signal"] == "SIGKILL" and r["exit_code"] is None     # killed at `model`
    weights, model = os.path.join(run.handover, "weights.pt"), os.path.join(run.handover, "model.pt")
    assert sorted(os.listdir(run.handover)) == ["model.pt", "weights.pt"]
    assert r["weights_sha256"] == sha(weights) and r["model_sha256"] == sha(model)
    assert "after finish_training" not in run.log

    # the weights are the trained ones (parameters and buffers), the model runs at the traced shape
    got = torch.load(weights)
    expected = torch.load(str(tmp_path / "expected.pt"))
    assert set(got) == {"emb.weight", "scale"}
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    man = manifest(smoke_data)
    program = torch.jit.load(model)
    x = torch.randint(0, man["tokenizer"]["bos_id"], (man["constants"]["EVAL_BATCH"], man["constants"]["MAX_SEQ_LEN"]))
    logits = program(x)
    assert logits.shape == (x.shape[0], x.shape[1], man["constants"]["VOCAB_SIZE"])
    assert torch.equal(logits, got["emb.weight"][x])


def test_protocol_by_hand_clock_batches_after_handover_and_hashes(tmp_path, smoke_data):
    script = RAW + '''
answers = {}
answers["clock0"] = ask("clock")
answers["batch"] = batch(2, 8)
time.sleep(0.2)
answers["clock1"] = ask("clock")
w = archive()
answers["handover"] = ask(f"handover {len(w)}", w)
answers["late_batch"] = ask("batch 2 8")
c1 = ask("clock"); time.sleep(0.2); c2 = ask("clock")
answers["frozen"] = c1 == c2
print(json.dumps(answers), flush=True)
m = archive(code=True)
ask(f"model {len(m)}", m)
time.sleep(30)
'''
    run = supervise(tmp_path, smoke_data, script)
    r = run.report
    assert r["outcome"] == "handed_over", (r, run.log)
    answers = json.loads([l for l in run.log.splitlines() if l.startswith("{")][0])
    assert answers["clock0"] == "clock 0.000000 1.000000"
    assert answers["batch"] == f"ok {2 * 9 * 4}"
    assert 0.2 <= float(answers["clock1"].split()[1]) < 1.0
    assert answers["handover"] == "ok"
    assert answers["late_batch"].startswith("err") and "handed over" in answers["late_batch"]
    assert answers["frozen"] is True
    assert 0.2 <= r["training_seconds"] < 1.0 and r["batches_served"] == 1 and r["tokens_served"] == 18
    assert r["weights_sha256"] == sha(os.path.join(run.handover, "weights.pt"))
    assert r["model_sha256"] == sha(os.path.join(run.handover, "model.pt"))


def test_the_seed_sets_the_data_order(tmp_path, smoke_data):
    script = RAW + '''
import hashlib
a = ask("batch 4 16"); data = rf.read(int(a.split()[1]))
print("rows", hashlib.sha256(data).hexdigest(), flush=True)
'''
    digests = []
    for i, seed in enumerate((1, 1, 2)):
        d = tmp_path / f"s{i}"
        d.mkdir()
        run = supervise(d, smoke_data, script, seed=seed)
        assert run.report["outcome"] == "exited"
        digests.append([l for l in run.log.splitlines() if l.startswith("rows ")][0])
    assert digests[0] == digests[1] != digests[2]


# ---------------------------------------------------------------------------------------------
# Over budget: killed near the allowance, whatever the trainer does
# ---------------------------------------------------------------------------------------------

def test_training_past_the_budget_is_killed_near_budget_plus_slack(tmp_path, smoke_data):
    script = RAW + '''
while True:
    batch(4, 16)
'''
    t0 = time.time()
    run = supervise(tmp_path, smoke_data, script)
    wall = time.time() - t0
    r = run.report
    assert r["outcome"] == "over_budget" and "training" in r["reason"], r
    assert 1.2 <= r["training_seconds"] <= 2.0
    assert r["signal"] == "SIGKILL" and r["weights_sha256"] is None and r["model_sha256"] is None
    assert r["batches_served"] > 10
    assert wall < 10


def test_a_trainer_that_stops_talking_mid_handover_is_killed_at_the_deadline(tmp_path, smoke_data):
    script = RAW + '''
batch(1, 8)
sock.sendall(b"handover 1000\\n" + b"x" * 10)
time.sleep(60)
'''
    run = supervise(tmp_path, smoke_data, script)
    r = run.report
    assert r["outcome"] == "over_budget" and "training" in r["reason"], r
    assert 1.2 <= r["training_seconds"] <= 2.0
    assert os.listdir(run.handover) == []          # no partial file left


def test_a_trainer_that_does_not_read_its_batches_is_killed_at_the_deadline(tmp_path, smoke_data):
    script = RAW + '''
for _ in range(200):
    sock.sendall(b"batch 1000 64\\n")
time.sleep(60)
'''
    run = supervise(tmp_path, smoke_data, script, max_batch_tokens=1 << 20)
    r = run.report
    assert r["outcome"] == "over_budget" and "training" in r["reason"], r
    assert 1.2 <= r["training_seconds"] <= 2.0


def test_a_trainer_that_never_asks_for_a_batch_is_over_budget_at_startup(tmp_path, smoke_data):
    run = supervise(tmp_path, smoke_data, "import time\ntime.sleep(60)\n", startup_allowance=1.0)
    r = run.report
    assert r["outcome"] == "over_budget" and "startup" in r["reason"], r
    assert 1.0 <= r["startup_seconds"] <= 1.8
    assert r["training_seconds"] is None and r["batches_served"] == 0


def test_a_slow_export_is_over_budget(tmp_path, smoke_data):
    script = RAW + '''
batch(1, 8)
w = archive()
ask(f"handover {len(w)}", w)
time.sleep(60)
'''
    run = supervise(tmp_path, smoke_data, script, export_allowance=0.5)
    r = run.report
    assert r["outcome"] == "over_budget" and "export" in r["reason"], r
    assert 0.5 <= r["export_seconds"] <= 1.3
    assert r["weights_sha256"] == sha(os.path.join(run.handover, "weights.pt")) and r["model_sha256"] is None


# ---------------------------------------------------------------------------------------------
# Crashes and bad requests
# ---------------------------------------------------------------------------------------------

def test_crash_before_handover_is_exited_with_the_exit_code(tmp_path, smoke_data):
    script = RAW + '''
batch(2, 8)
t = time.process_time()
while time.process_time() - t < 0.6:
    pass
raise RuntimeError("boom in the trainer")
'''
    run = supervise(tmp_path, smoke_data, script, time_budget=20)
    r = run.report
    assert r["outcome"] == "exited" and "exit code 1" in r["reason"], r
    assert r["exit_code"] == 1 and r["signal"] is None
    assert "boom in the trainer" in run.log
    assert r["cpu_seconds"] >= 0.5


def test_bad_requests_get_err_lines_and_the_run_goes_on(tmp_path, smoke_data):
    script = RAW + '''
out = []
for line in ["batch 100000 64", "batch 4 65", "batch -1 5", "batch 0 5", "batch 1.5 2",
             "batch 99999999999 1", "batch 4", "batch 4 16 extra", "hello", "clock now", "x" * 1000]:
    out.append(ask(line))
out.append(batch(4, 64))
print(json.dumps(out), flush=True)
'''
    run = supervise(tmp_path, smoke_data, script)
    answers = json.loads([l for l in run.log.splitlines() if l.startswith("[")][0])
    assert all(a.startswith("err ") for a in answers[:-1]), answers
    assert "tokens" in answers[0] and "MAX_SEQ_LEN" in answers[1] and "too long" in answers[10]
    assert answers[8] == answers[9] == "err unknown request"
    assert answers[-1] == f"ok {4 * 65 * 4}"
    assert run.report["outcome"] == "exited" and run.report["exit_code"] == 0


@pytest.mark.parametrize("payload, reason", [
    ('sock.sendall(b"handover 10\\n" + b"0123456789")', "not a torch archive"),
    ('sock.sendall(b"handover 99999999999999\\n")', "malformed"),
    ('sock.sendall(b"handover %d\\n" % (5 << 30))', "payload of"),
    ('sock.sendall(b"handover -5\\n")', "malformed"),
    ('m = archive(code=True); sock.sendall(b"model %d\\n" % len(m) + m)', "before the weights"),
    ('w = archive(); ask(f"handover {len(w)}", w); sock.sendall(b"model 5\\nabcde")', "not a torch archive"),
    ('w = archive(); ask(f"handover {len(w)}", w); sock.sendall(b"model %d\\n" % len(w) + w)', "not a TorchScript"),
])
def test_malformed_handover_or_model_is_killed_with_error(tmp_path, smoke_data, payload, reason):
    script = RAW + f'''
batch(1, 8)
{payload}
time.sleep(60)
'''
    run = supervise(tmp_path, smoke_data, script)
    r = run.report
    assert r["outcome"] == "error" and reason in r["reason"], r
    assert r["signal"] == "SIGKILL" and r["model_sha256"] is None
    assert not [n for n in os.listdir(run.handover) if n.endswith(".part") or n == "model.pt"]


def test_handover_before_any_batch_is_an_error(tmp_path, smoke_data):
    script = RAW + '''
w = archive()
sock.sendall(f"handover {len(w)}\\n".encode() + w)
time.sleep(60)
'''
    r = supervise(tmp_path, smoke_data, script).report
    assert r["outcome"] == "error" and "before the first training batch" in r["reason"], r


def test_closing_the_channel_without_exiting_is_an_error(tmp_path, smoke_data):
    script = RAW + '''
batch(1, 8)
rf.close(); sock.close()
time.sleep(120)
'''
    r = supervise(tmp_path, smoke_data, script, time_budget=60).report
    assert r["outcome"] == "error" and "closed the harness channel" in r["reason"], r


# ---------------------------------------------------------------------------------------------
# The CPU clock (budget_clock "cpu"): CPU seconds of the trainer's process tree, not wall seconds
# ---------------------------------------------------------------------------------------------

SPIN = '''
def spin(cpu_seconds):
    """Burns this process's CPU time, however long the machine makes that take."""
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass
def used():
    return float(ask("clock").split()[1])
'''


def test_the_cpu_clock_counts_cpu_seconds_not_wall_seconds(tmp_path, smoke_data):
    # 2.5 s asleep after the first batch is past the whole limit (2.2 s) in wall time, and next to
    # nothing by the CPU clock; the run then spends part of its budget's CPU time and hands over
    # (the wall guard, 8.8 s, leaves room for a loaded machine)
    script = RAW + SPIN + '''
batch(2, 8)
time.sleep(2.5)
asleep = used()
spin(0.6)
print(json.dumps({"asleep": asleep, "after_spin": used()}), flush=True)
w = archive()
ask(f"handover {len(w)}", w)
m = archive(code=True)
ask(f"model {len(m)}", m)
time.sleep(30)
'''
    run = supervise(tmp_path, smoke_data, script, budget_clock="cpu", time_budget=2.0, budget_slack=0.2)
    r = run.report
    assert r["outcome"] == "handed_over", (r, run.log)
    clock = json.loads([l for l in run.log.splitlines() if l.startswith("{")][0])
    # /proc counts in ticks (10 ms here) at both ends of the reading: 0.6 s of spinning may read 0.59
    assert clock["asleep"] < 0.3, clock
    assert 0.55 <= clock["after_spin"] <= 2.2, clock
    assert r["budget_clock"] == "cpu" and clock["after_spin"] <= r["budget_used_seconds"] <= 2.2
    assert r["training_seconds"] > 2.5      # wall seconds, past what the wall clock would allow


def test_the_cpu_clock_counts_the_trainers_child_processes(tmp_path, smoke_data):
    # a child still running and one that has ended (its time counts in the trainer that reaped it)
    script = RAW + SPIN + '''
import subprocess
batch(2, 8)
child = "import time, sys\\nend = time.process_time() + 0.4\\nwhile time.process_time() < end: pass\\nopen(sys.argv[1], 'w').close()\\ntime.sleep(float(sys.argv[2]))"
running = subprocess.Popen([sys.executable, "-c", child, "running.flag", "30"])
while not os.path.exists("running.flag"):
    time.sleep(0.01)
time.sleep(0.3)      # the supervisor scans for new processes every 0.25 s
while_running = used()
subprocess.run([sys.executable, "-c", child, "ended.flag", "0"], check=True)
after_ended = used()
print(json.dumps({"while_running": while_running, "after_ended": after_ended}), flush=True)
running.kill()
time.sleep(30)
'''
    run = supervise(tmp_path, smoke_data, script, budget_clock="cpu", time_budget=5.0, budget_slack=0.2)
    clock = json.loads([l for l in run.log.splitlines() if l.startswith("{")][0])
    assert clock["while_running"] >= 0.35, clock        # 0.4 s, less a few /proc ticks
    assert clock["after_ended"] >= clock["while_running"] + 0.35, clock


def test_a_run_past_its_cpu_budget_is_over_budget_in_cpu_seconds(tmp_path, smoke_data):
    script = RAW + SPIN + '''
while True:
    batch(2, 8)
    spin(0.05)
'''
    run = supervise(tmp_path, smoke_data, script, budget_clock="cpu")
    r = run.report
    assert r["outcome"] == "over_budget" and r["signal"] == "SIGKILL" and r["weights_sha256"] is None, r
    if r["budget_used_seconds"] > 1.2:
        assert "CPU s" in r["reason"] and "of CPU time" in r["reason"], r
    else:
        # a machine loaded past four runnable processes per core gives the spinner under a quarter
        # of a core: the wall guard (4 x 1.2 s) stops it first, and says so
        assert "wall time" in r["reason"] and r["training_seconds"] >= 4 * 1.2, r


def test_a_sleeping_run_on_the_cpu_clock_ends_at_its_wall_guard(tmp_path, smoke_data):
    script = RAW + '''
batch(2, 8)
time.sleep(60)
'''
    run = supervise(tmp_path, smoke_data, script, budget_clock="cpu", time_budget=0.5, budget_slack=0.0)
    r = run.report
    assert r["outcome"] == "over_budget" and "wall time" in r["reason"], r
    assert r["training_seconds"] >= 4 * 0.5 and r["budget_used_seconds"] < 0.5


def test_an_unknown_budget_clock_is_a_spec_error(tmp_path, smoke_data):
    full = trainer_spec(tmp_path, smoke_data, RAW, budget_clock="gpu")
    (tmp_path / "spec.json").write_text(json.dumps(full))
    proc = subprocess.run([PYTHON, SUPERVISE_PY, "--spec", str(tmp_path / "spec.json")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "budget_clock must be one of wall, cpu" in json.loads(proc.stdout)["reason"]


def test_a_bad_spec_is_a_json_error_line(tmp_path, smoke_data):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"trainer_argv": [], "data_dir": smoke_data}))
    proc = subprocess.run([PYTHON, SUPERVISE_PY, "--spec", str(spec)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["outcome"] == "error" and "trainer_argv" in report["reason"]


# ---------------------------------------------------------------------------------------------
# Processes: nothing the trainer started outlives the run
# ---------------------------------------------------------------------------------------------

def test_children_in_the_trainers_group_are_killed(tmp_path, smoke_data):
    script = RAW + '''
batch(1, 8)
pid = os.fork()
if pid == 0:
    time.sleep(120)
    os._exit(0)
print("child", pid, flush=True)
time.sleep(120)
'''
    run = supervise(tmp_path, smoke_data, script, time_budget=0.5, budget_slack=0.0)
    assert run.report["outcome"] == "over_budget"
    child = int([l for l in run.log.splitlines() if l.startswith("child ")][0].split()[1])
    assert gone(child)


# The daemon burns CPU and prints the CPU time it has used (to the run log, through the trainer's
# stdout); the trainer itself only sleeps, so that what the report counts beyond a few hundredths
# of a second is the daemon's.
DAEMON = RAW + '''
batch(1, 8)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        t = time.time()
        last = t
        while time.time() - t < 120:      # a daemon that burns CPU
            if time.time() - last >= 0.02:
                last = time.time()
                print(f"daemon cpu: {time.process_time():.3f}", flush=True)
        os._exit(0)
    os._exit(0)
while True:
    time.sleep(1)
'''


def test_setsid_daemon_escapes_the_group_kill_when_unsandboxed(tmp_path, smoke_data):
    """Documents the limit: without the sandbox's pid namespace a double fork outlives the run."""
    run = supervise(tmp_path, smoke_data, DAEMON, time_budget=0.5, budget_slack=0.0)
    marker = str(tmp_path / "trainer.py")
    try:
        assert run.report["outcome"] == "over_budget"
        assert processes_running(marker), "expected the unsandboxed daemon to survive"
    finally:
        for pid in processes_running(marker):
            os.kill(pid, 9)


@needs_bwrap
def test_setsid_daemon_dies_with_the_sandbox(tmp_path, smoke_data):
    run = supervise(tmp_path, smoke_data, DAEMON, argv_prefix=[BWRAP, *SANDBOX], time_budget=1.0, budget_slack=0.0)
    marker = str(tmp_path / "trainer.py")
    try:
        r = run.report
        assert r["outcome"] == "over_budget" and r["signal"] == "SIGKILL", (r, run.log, run.stderr)
        assert r["batches_served"] == 1
        end = time.time() + 5
        while processes_running(marker) and time.time() < end:
            time.sleep(0.1)
        assert not processes_running(marker), "a process of the sandbox outlived the run"
        # The daemon's CPU time is counted (sampled from /proc, last just before the kill): at
        # least what it last printed, less the few milliseconds between that sample and the kill.
        # Two busy processes on the two cores still leave it about half a core in the budget's second.
        daemon_cpu = max(float(v) for v in re.findall(r"^daemon cpu: ([\d.]+)$", run.log, re.M))
        assert daemon_cpu >= 0.25, run.log[-2000:]
        assert r["cpu_seconds"] >= daemon_cpu - 0.05, (r, daemon_cpu)
    finally:
        for pid in processes_running(marker):
            os.kill(pid, 9)


@needs_bwrap
def test_sandboxed_honest_trainer_hands_over(tmp_path, smoke_data):
    pytest.importorskip("torch")
    run = supervise(tmp_path, smoke_data, "import time\n" + HONEST.replace('"expected.pt"', '"/dev/null"'),
                    argv_prefix=[BWRAP, *SANDBOX])
    r = run.report
    assert r["outcome"] == "handed_over", (r, run.log[-3000:], run.stderr)
    assert r["model_sha256"] == sha(os.path.join(run.handover, "model.pt"))


def test_trusted_modules_import_neither_torch_nor_agent_code():
    code = ("import sys; import supervise, batches, prepare_data; "
            "print(sorted(m for m in ('torch', 'train') if m in sys.modules))")
    proc = subprocess.run([PYTHON, "-c", code], cwd=PYTHON_DIR, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": PYTHON_DIR})
    assert proc.stdout.strip() == "[]", proc.stderr


# ---------------------------------------------------------------------------------------------
# Compile cache snapshot: the sandbox's cache folder as it was before the first batch
# ---------------------------------------------------------------------------------------------
# Writes the cache the way a trainer could, hostile parts included, then takes one batch and
# writes more: links to host files (absolute links would resolve on the host from /proc/PID/root),
# a fifo (which would block a reader), and a file written once data has been served.
CACHE_WRITER = RAW + """
import os
cache = "/var/tmp/compile-cache"
os.makedirs(cache + "/inductor/ab", exist_ok=True)
with open(cache + "/inductor/ab/kernel.py", "w") as f:
    f.write("compiled before the first batch")
os.symlink(os.environ["HOST_SECRET"], cache + "/inductor/secret-link")
os.symlink(os.path.dirname(os.environ["HOST_SECRET"]), cache + "/host-folder-link")
os.mkfifo(cache + "/trap")
print(batch(2, 8), flush=True)
with open(cache + "/inductor/after-data.bin", "w") as f:
    f.write("weights trained on data")
time.sleep(30)
"""


def cache_spec(tmp_path):
    return {"compile_cache": "/var/tmp/compile-cache", "compile_snapshot": str(tmp_path / "snapshot")}


@needs_bwrap
def test_the_compile_snapshot_holds_what_was_written_before_the_first_batch_and_no_link_or_fifo(tmp_path, smoke_data):
    secret = tmp_path / "secret" / "val.bin"
    secret.parent.mkdir()
    secret.write_text("host-only data")
    run = supervise(tmp_path, smoke_data, CACHE_WRITER, argv_prefix=[BWRAP, *SANDBOX], env={"HOST_SECRET": str(secret)},
                    time_budget=0.5, budget_slack=0.0, **cache_spec(tmp_path))
    assert run.report["outcome"] == "over_budget" and run.report["batches_served"] == 1, (run.report, run.log, run.stderr)
    snapshot = tmp_path / "snapshot"
    files = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*"))
    assert files == ["inductor", "inductor/ab", "inductor/ab/kernel.py"], (files, run.stderr)
    assert (snapshot / "inductor/ab/kernel.py").read_text() == "compiled before the first batch"
    assert not any(p.is_symlink() for p in snapshot.rglob("*"))
    assert "compile cache: 1 files" in run.stderr and "kept as they were before the first batch" in run.stderr


@needs_bwrap
def test_a_cache_folder_that_is_a_link_is_not_followed_out_of_the_sandbox(tmp_path, smoke_data):
    host = tmp_path / "host-folder"
    host.mkdir()
    (host / "val.bin").write_text("host-only data")
    script = RAW + """
import os
os.symlink(os.environ["HOST_FOLDER"], "/var/tmp/compile-cache")
print(batch(2, 8), flush=True)
time.sleep(30)
"""
    run = supervise(tmp_path, smoke_data, script, argv_prefix=[BWRAP, *SANDBOX], env={"HOST_FOLDER": str(host)},
                    time_budget=0.5, budget_slack=0.0, **cache_spec(tmp_path))
    assert run.report["batches_served"] == 1, (run.report, run.log, run.stderr)
    assert not (tmp_path / "snapshot").exists()
    assert "compile cache: not kept (the sandbox's /var/tmp/compile-cache could not be opened" in run.stderr


@needs_bwrap
def test_no_snapshot_when_nothing_was_compiled_and_none_over_the_caps(tmp_path, smoke_data, monkeypatch):
    (tmp_path / "snapshot").mkdir()   # a stale one from an earlier attempt of the run goes
    run = supervise(tmp_path, smoke_data, RAW + "print(batch(2, 8), flush=True)\ntime.sleep(30)\n",
                    argv_prefix=[BWRAP, *SANDBOX], time_budget=0.5, budget_slack=0.0, **cache_spec(tmp_path))
    assert run.report["batches_served"] == 1, (run.report, run.log, run.stderr)
    assert not (tmp_path / "snapshot").exists()
    assert "compile cache: nothing to keep" in run.stderr

    import supervise as supervisor_module
    src = tmp_path / "many"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_text("x" * 100)
    monkeypatch.setattr(supervisor_module, "SNAPSHOT_MAX_ENTRIES", 4)
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(supervisor_module.SnapshotTooLarge, match="more than 4 files and folders"):
            supervisor_module._copy_tree(fd, str(tmp_path / "copy"), [0, 0, 0])
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Pre-started trainers (--standby, prestart.py)
# ---------------------------------------------------------------------------------------------
PRESTART_PY = os.path.join(PYTHON_DIR, "prestart.py")


def standby(tmp_path, data_dir, script, **spec):
    """Starts `supervise.py --standby` on a prestart.py trainer; returns (process, spec dict)."""
    full = trainer_spec(tmp_path, data_dir, script, launcher=[PRESTART_PY], **spec)
    (tmp_path / "standby.json").write_text(json.dumps(full))
    proc = subprocess.Popen([PYTHON, SUPERVISE_PY, "--spec", str(tmp_path / "standby.json"), "--standby"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, full


def test_a_prestarted_trainer_is_ready_then_runs_on_go_with_the_runs_seed_and_startup_counted_from_go(tmp_path, smoke_data):
    pytest.importorskip("torch")
    script = "import os, time\nprint('seed', os.environ['AUTORESEARCH_SEED'], flush=True)\n" + HONEST
    started = time.monotonic()
    proc, spec = standby(tmp_path, smoke_data, script)
    # Ready once the trainer has imported torch: the run's start-up is counted from `go`, after it.
    deadline = started + 60
    while not (tmp_path / "ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.02)
    import_seconds = time.monotonic() - started
    run_spec = dict(spec, seed=7, handover_dir=str(tmp_path / "run-handover"))
    (tmp_path / "spec.json").write_text(json.dumps(run_spec))
    out, err = proc.communicate(f"go {tmp_path / 'spec.json'}\n".encode(), timeout=60)
    report = json.loads(out.decode().strip())
    log = (tmp_path / "run.log").read_text()
    assert report["outcome"] == "handed_over", (report, log[-3000:], err.decode())
    assert report["startup_seconds"] < import_seconds
    assert "seed 7\n" in log
    assert sorted(os.listdir(tmp_path / "run-handover")) == ["model.pt", "weights.pt"]


def test_a_standby_without_a_run_ends_its_trainer_and_reports_nothing(tmp_path, smoke_data):
    proc, _ = standby(tmp_path, smoke_data, "print('agent code ran', flush=True)\n")
    out, _ = proc.communicate(b"", timeout=60)   # stdin closes: the server stopped, or the slot went away
    assert proc.returncode == 3 and out == b""
    assert processes_running(str(tmp_path / "trainer.py")) == []
    assert "agent code ran" not in (tmp_path / "run.log").read_text()


def test_a_run_spec_for_another_trainer_is_refused(tmp_path, smoke_data):
    proc, spec = standby(tmp_path, smoke_data, "print('agent code ran', flush=True)\n")
    other = dict(spec, trainer_argv=[PYTHON, "-u", str(tmp_path / "other.py")])
    (tmp_path / "spec.json").write_text(json.dumps(other))
    out, _ = proc.communicate(f"go {tmp_path / 'spec.json'}\n".encode(), timeout=60)
    report = json.loads(out.decode().strip())
    assert proc.returncode == 2 and report["outcome"] == "error"
    assert "differs from the pre-started trainer's" in report["reason"]
    assert processes_running(str(tmp_path / "trainer.py")) == []
    assert "agent code ran" not in (tmp_path / "run.log").read_text()

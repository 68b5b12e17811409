"""
The trusted supervisor of one training run (docs/run-protocol.md, phase 1).

    python3 supervise.py --spec R/spec.json

It starts the trainer (`trainer_argv`, usually bwrap ... -- python3 train.py) in a new session with
one end of a socketpair on its fd 3, serves it training batches and the clock over that channel,
measures the budget itself with a monotonic clock, writes the handed-over weights and exported
model to `handover_dir`, and kills the trainer when it is done, when it exceeds an allowance, or
when it breaks the protocol. Then it prints one JSON line (the report) on stdout; its own log
lines go to stderr, the trainer's output to `log_path`.

Times: startup = spawn -> first `batch` request (<= startup_allowance); training = first batch ->
the last byte of the `handover` payload (<= time_budget + budget_slack); export = handover -> the
last byte of the `model` payload (<= export_allowance). A trainer that stops talking is still
killed on time: the loop never blocks longer than POLL_S.

The budget's clock (`budget_clock`): "wall" (the default) counts monotonic seconds from the first
batch; "cpu" counts the CPU seconds of the trainer's process tree since the first batch, read from
/proc, so that a run on a shared CPU gets the same work whatever else the machine is doing. With
the CPU clock, training also ends at CPU_CLOCK_WALL_FACTOR times the limit in wall seconds: a
trainer that sleeps uses no CPU.

Pre-started (`--standby`): the trainer (prestart.py, which imports torch, says `ready`, and
waits) is started before the run is known; the supervisor marks it ready with the file `ready`
beside the standby's spec, then waits for one line `go PATH` on its stdin, reads the run's spec
from PATH (its trainer_argv must be the one already started), sends the trainer `go` with the
run's seed, and supervises as usual, with startup measured from that moment. Stdin closing
first, or the trainer ending while it waits, ends the standby without a report (exit 3).

Compile cache (`compile_cache`, `compile_snapshot`; sandboxed runs only): the trainer's compiler
caches live in its sandbox's private /tmp, seeded from the workspace's cache. Just before the first
batch is served, while the trainer has seen no training data, the supervisor copies that folder,
read through the sandbox's root in /proc and never following a link, to `compile_snapshot` on the
host. Only that copy can become the cache of later runs (the server promotes it when the run's
commit becomes the head): what the trainer writes once it has data never leaves its sandbox.

Killing: SIGKILL to the trainer's process group. Sandboxed, that is bwrap's group, and bwrap's
--die-with-parent and --unshare-pid end everything inside. Unsandboxed, a process that left the
group (setsid, a double fork) survives: only the sandbox's pid namespace stops it.

This file never imports agent code or torch (numpy only): the payloads are written as bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import stat as stat_mod
import subprocess
import sys
import time
import zipfile

import numpy as np

from batches import TrainRows, open_tokens

MAX_LINE = 256                 # bytes of one request line
MAX_WEIGHTS_BYTES = 4 << 30    # handover payload cap
MAX_MODEL_BYTES = 4 << 30      # model payload cap
MAX_ROW_LENGTHS = 16           # distinct sequence lengths a trainer may ask for
MAX_PREFETCHED = 8             # batch shapes packed ahead while the trainer computes
POLL_S = 0.05                  # longest wait between checks of the deadlines and the trainer
PROC_POLL_S = 1.0              # how often the trainer's process tree is sampled for CPU time
TREE_SCAN_S = 0.25             # CPU clock: how often /proc is scanned for new processes of the tree
CPU_CLOCK_WALL_FACTOR = 4.0    # CPU clock: wall seconds of training allowed per second of the limit
BUDGET_CLOCKS = ("wall", "cpu")
EOF_GRACE_S = 10.0             # channel closed: time for the trainer to exit before it is killed
                               # (interpreter teardown after the socket closes took over 2 s on a loaded 2-core machine)
REAP_TIMEOUT_S = 30.0          # after SIGKILL (a process in the GPU driver may take a moment)
EXIT_NO_RUN = 3                # --standby ended without a run (stdin closed, or the trainer died waiting)

SNAPSHOT_MAX_BYTES = 2 << 30  # compile cache snapshot caps: beyond either, no snapshot is kept
SNAPSHOT_MAX_ENTRIES = 20000   # files and folders
SNAPSHOT_MAX_DEPTH = 16

BATCH_RE = re.compile(rb"batch ([1-9][0-9]{0,9}) ([1-9][0-9]{0,9})")
PAYLOAD_RE = re.compile(rb"(handover|model) ([0-9]{1,13})")


def log(message: str) -> None:
    sys.stderr.write(f"supervise: {message}\n")
    sys.stderr.flush()


class SpecError(ValueError):
    pass


class Stop(Exception):
    """Ends the run: outcome and reason for the report."""

    def __init__(self, outcome: str, reason: str = None):
        super().__init__(reason or outcome)
        self.outcome, self.reason = outcome, reason


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------

def _number(spec, key, minimum=0.0, allow_zero=False):
    v = spec.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or v < minimum or (v == 0 and not allow_zero):
        raise SpecError(f"spec: {key} must be a {'non-negative' if allow_zero else 'positive'} number, got {v!r}")
    return float(v)


def load_spec(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            spec = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise SpecError(f"cannot read the spec {path}: {e}") from None
    if not isinstance(spec, dict):
        raise SpecError("spec: not a JSON object")
    argv = spec.get("trainer_argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise SpecError("spec: trainer_argv must be a non-empty list of strings")
    env = spec.get("trainer_env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpecError("spec: trainer_env must map strings to strings")
    for key in ("log_path", "data_dir", "handover_dir"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise SpecError(f"spec: {key} must be a path")
    if spec.get("scratch_host") is not None and not isinstance(spec["scratch_host"], str):
        raise SpecError("spec: scratch_host must be a path or null")
    seed = spec.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"spec: seed must be a non-negative integer, got {seed!r}")
    clock = spec.get("budget_clock", "wall")
    if clock not in BUDGET_CLOCKS:
        raise SpecError(f"spec: budget_clock must be one of {', '.join(BUDGET_CLOCKS)}, got {clock!r}")
    mbt = spec.get("max_batch_tokens", 1 << 24)
    if isinstance(mbt, bool) or not isinstance(mbt, int) or mbt < 1:
        raise SpecError(f"spec: max_batch_tokens must be a positive integer, got {mbt!r}")
    cache = {key: spec.get(key) for key in ("compile_cache", "compile_snapshot")}
    for key, value in cache.items():
        if value is not None and (not isinstance(value, str) or not os.path.isabs(value)):
            raise SpecError(f"spec: {key} must be an absolute path or null")
    return {
        **cache,
        "trainer_argv": argv, "trainer_env": dict(env), "log_path": spec["log_path"],
        "data_dir": spec["data_dir"], "scratch_host": spec.get("scratch_host"),
        "handover_dir": spec["handover_dir"], "seed": seed, "max_batch_tokens": mbt, "budget_clock": clock,
        "time_budget": _number(spec, "time_budget"),
        "budget_slack": _number(spec, "budget_slack", allow_zero=True),
        "startup_allowance": _number(spec, "startup_allowance"),
        "export_allowance": _number(spec, "export_allowance"),
    }


# ---------------------------------------------------------------------------------------------
# CPU time of the trainer's processes
# ---------------------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int):
    """(ppid, starttime, cpu seconds of the process itself, cpu seconds of the children it reaped),
    or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        rest = stat[stat.rindex(b")") + 2:].split()
        return (int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / _TICK,
                (int(rest[13]) + int(rest[14])) / _TICK)
    except (OSError, ValueError, IndexError):
        return None


def _proc_table() -> dict:
    """pid -> _proc_stat(pid) for every visible process."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    table = {}
    for name in names:
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat is not None:
                table[int(name)] = stat
    return table


def _descendants(table: dict, root: int) -> list:
    children = {}
    for pid, stat in table.items():
        children.setdefault(stat[0], []).append(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


class CpuMeter:
    """getrusage(RUSAGE_CHILDREN) covers the trainer and what it waited for. Processes it did not
    wait for (the sandbox's inner processes after bwrap is killed, orphans) are sampled from /proc
    every PROC_POLL_S and once more just before the kill; short-lived ones between samples whose
    parent was not the trainer itself may be missed. An estimate, for the report."""

    def __init__(self):
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.base = r.ru_utime + r.ru_stime
        self.root = None
        self.seen = {}          # (pid, starttime) -> (ppid, cpu)
        self.alive = set()
        self.last = 0.0
        self.before = 0.0

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.root is None or (not force and now - self.last < PROC_POLL_S):
            return
        self.last = now
        table = _proc_table()
        alive = set()
        for pid in _descendants(table, self.root):
            ppid, start, cpu, _ = table[pid]
            self.seen[(pid, start)] = (ppid, cpu)
            alive.add((pid, start))
        self.alive = alive

    def mark(self) -> None:
        """From now on: what the trainer used before (a pre-started interpreter's imports) is not counted."""
        self.sample(force=True)
        self.before = self.total()

    def total(self) -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = r.ru_utime + r.ru_stime - self.base
        # processes still alive at the last sample were not waited for by the trainer; dead ones
        # whose parent was the trainer are already in its rusage
        extra = sum(cpu for key, (ppid, cpu) in self.seen.items() if key in self.alive or ppid != self.root)
        return round(own + extra - self.before, 3)


class CpuClock:
    """CPU seconds of a process tree, for the budget's CPU clock: for every process of the tree
    that is alive, its own time and that of the children it reaped (a child that ended counts in
    its parent; one that ended orphaned counts in the sandbox's init, which reaps it). /proc is
    scanned for new members every TREE_SCAN_S; in between, only the members' stat files are read,
    so a new process counts, all of it, from the next scan on. Unsandboxed, a process that leaves
    the tree (a double fork) is not counted: the sandbox's pid namespace keeps everything in it."""

    def __init__(self, root: int):
        self.root = root
        self.scan()

    def scan(self) -> None:
        table = _proc_table()
        # pid -> starttime (a pid reused by another process later does not count)
        self.members = {pid: table[pid][1] for pid in [self.root, *_descendants(table, self.root)] if pid in table}
        self.scanned = time.monotonic()

    def seconds(self) -> float:
        if time.monotonic() - self.scanned >= TREE_SCAN_S:
            self.scan()
        total = 0.0
        for pid, start in self.members.items():
            stat = _proc_stat(pid)
            if stat is not None and stat[1] == start:
                total += stat[2] + stat[3]
        return total


# ---------------------------------------------------------------------------------------------
# The supervisor
# ---------------------------------------------------------------------------------------------

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_archive(path: str, what: str, needs_code: bool) -> None:
    """torch.save and torch.jit.save both write zip archives with a data.pkl; TorchScript also has code/."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise Stop("error", f"the {what} payload is not a torch archive ({e})") from None
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise Stop("error", f"the {what} payload is not a torch archive (no data.pkl)")
    if needs_code and not any("/code/" in n for n in names):
        raise Stop("error", f"the {what} payload is not a TorchScript archive (no code/)")


# ---------------------------------------------------------------------------------------------
# Compile cache snapshot: the sandbox's cache folder as it is before any training data
# ---------------------------------------------------------------------------------------------
class SnapshotTooLarge(Exception):
    pass


def _sandbox_root(bwrap_pid: int) -> str:
    """The root of bwrap's sandbox: bwrap's first child there is its own init (not the trainer's
    code), and /proc/PID/root of it is the sandbox's file system."""
    try:
        with open(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children") as f:
            children = f.read().split()
    except OSError:
        children = [str(pid) for pid, stat in _proc_table().items() if stat[0] == bwrap_pid]
    if not children:
        raise OSError("the sandbox has no process")
    return f"/proc/{min(children, key=int)}/root"


def _open_inside(root: str, path: str) -> int:
    """A directory fd of `path` inside `root`, refusing a link at every step: an absolute link
    would otherwise resolve against the supervisor's file system, not the sandbox's."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in [p for p in path.split("/") if p]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        return fd
    except BaseException:
        os.close(fd)
        raise


def _copy_tree(src_fd: int, dest: str, taken: list, depth: int = 0) -> None:
    """Copies the regular files and folders under src_fd to dest; links, devices, fifos and
    sockets are left out. taken = [files, bytes, entries], checked against the caps as it goes."""
    if depth > SNAPSHOT_MAX_DEPTH:
        raise SnapshotTooLarge(f"folders nested deeper than {SNAPSHOT_MAX_DEPTH}")
    os.mkdir(dest, 0o755)
    for name in os.listdir(src_fd):
        taken[2] += 1
        if taken[2] > SNAPSHOT_MAX_ENTRIES:
            raise SnapshotTooLarge(f"more than {SNAPSHOT_MAX_ENTRIES} files and folders")
        st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if stat_mod.S_ISDIR(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_fd)
            try:
                _copy_tree(fd, os.path.join(dest, name), taken, depth + 1)
            finally:
                os.close(fd)
        elif stat_mod.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=src_fd)
            try:
                if not stat_mod.S_ISREG(os.fstat(fd).st_mode):   # swapped since the stat
                    continue
                taken[0] += 1
                with open(os.path.join(dest, name), "xb") as out:
                    while chunk := os.read(fd, 1 << 20):
                        taken[1] += len(chunk)
                        if taken[1] > SNAPSHOT_MAX_BYTES:
                            raise SnapshotTooLarge(f"more than {SNAPSHOT_MAX_BYTES >> 20} MiB")
                        out.write(chunk)
            finally:
                os.close(fd)


def snapshot_compile_cache(bwrap_pid: int, inner: str, dest: str) -> str:
    """Copies the sandbox's folder `inner` to `dest` (replacing what is there); returns what was
    done, for the log. Nothing is kept when the folder is missing, empty or over a cap."""
    for stale in (dest, dest + ".part"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        src = _open_inside(_sandbox_root(bwrap_pid), inner)
    except FileNotFoundError:
        return "compile cache: nothing to keep (the trainer compiled nothing)"
    except OSError as e:
        return f"compile cache: not kept (the sandbox's {inner} could not be opened: {e.strerror or e})"
    taken = [0, 0, 0]
    try:
        _copy_tree(src, dest + ".part", taken)
        if taken[0] == 0:
            shutil.rmtree(dest + ".part")
            return "compile cache: nothing to keep (the trainer compiled nothing)"
        os.replace(dest + ".part", dest)
        return f"compile cache: {taken[0]} files ({taken[1] / 2**20:.1f} MiB) kept as they were before the first batch"
    except (OSError, SnapshotTooLarge) as e:
        shutil.rmtree(dest + ".part", ignore_errors=True)
        return f"compile cache: not kept ({e})"
    finally:
        os.close(src)


def start_trainer(spec: dict):
    """Starts the trainer in a new session with the channel on its fd 3; returns (process, our end
    of the channel, its CPU meter)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child_fd = child.fileno()
    env = dict(spec["trainer_env"])
    env["AUTORESEARCH_CHANNEL_FD"] = "3"
    env.setdefault("AUTORESEARCH_SEED", str(spec["seed"]))

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def in_child():
        # Runs in the child after setsid, with stdout/stderr already on the log: the channel
        # goes to fd 3, and inheritable descriptors we got from our own parent are not passed
        # on (the others are close-on-exec, including subprocess's own error pipe).
        if prctl is not None:
            prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG: die with the supervisor
        os.dup2(child_fd, 3)
        os.set_inheritable(3, True)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if fd > 3 and os.get_inheritable(fd):
                    os.close(fd)
            except OSError:
                pass

    with open(spec["log_path"], "ab") as logf:
        cpu = CpuMeter()
        proc = subprocess.Popen(spec["trainer_argv"], env=env, stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=logf, close_fds=False,
                                cwd=spec["scratch_host"] or None,
                                start_new_session=True, preexec_fn=in_child)
    child.close()
    cpu.root = proc.pid
    parent.setblocking(False)
    log(f"trainer started (pid {proc.pid}): {' '.join(spec['trainer_argv'])}")
    return proc, parent, cpu


class Standby:
    """A trainer started before its run is known (prestart.py in its trainer_argv): it says
    `ready` on the channel once torch is imported (this then creates the file `ready_path`, which
    the server waits for before it hands the standby a run, and so before it moves its folder),
    then waits for `go`; this waits on stdin for the run's spec."""

    def __init__(self, spec: dict, ready_path: str):
        self.spec = spec
        self.ready_path = ready_path
        self.proc, self.sock, self.cpu = start_trainer(spec)

    def wait_for_go(self, stdin_fd: int = 0):
        """The spec path from the line `go PATH`, or None when stdin closes or the trainer ends first."""
        line = bytearray()
        said = bytearray()       # what the trainer said on the channel: `ready\n` and nothing more
        while True:
            watched = [stdin_fd] if len(said) >= len(b"ready\n") else [stdin_fd, self.sock]
            readable, _, _ = select.select(watched, [], [], POLL_S * 10)
            if self.proc.poll() is not None:
                log(f"the pre-started trainer ended while waiting (exit {self.proc.returncode}); the log says why")
                return None
            if self.sock in readable:
                try:
                    said += self.sock.recv(len(b"ready\n") - len(said))
                except (BlockingIOError, InterruptedError):
                    pass
                if said == b"ready\n":
                    with open(self.ready_path, "wb"):
                        pass
                elif not b"ready\n".startswith(bytes(said)):
                    log(f"the pre-started trainer said {bytes(said)!r} instead of `ready`")
                    return None
            if stdin_fd not in readable:
                continue
            chunk = os.read(stdin_fd, 4096)
            if not chunk:
                return None
            line += chunk
            if b"\n" in line or len(line) > 4 * MAX_LINE:
                break
        word, _, path = bytes(line).split(b"\n", 1)[0].partition(b" ")
        if word != b"go" or not path:
            log(f"expected `go SPEC` on stdin, got {bytes(line[:80])!r}")
            return None
        return os.fsdecode(path)

    def end(self) -> None:
        if self.proc.returncode is not None:
            return      # already reaped: its pid, and so its group id, may be someone else's now
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass


class Supervisor:
    def __init__(self, spec: dict):
        self.spec = spec
        data_dir = spec["data_dir"]
        with open(os.path.join(data_dir, "manifest.json"), "rb") as f:
            manifest = json.loads(f.read())
        self.max_seq_len = int(manifest["constants"]["MAX_SEQ_LEN"])
        vocab = int(manifest["tokenizer"]["vocab_size"])
        tokens = open_tokens(os.path.join(data_dir, "train.bin"), vocab)
        self.rows = TrainRows(tokens, manifest["tokenizer"]["bos_id"], spec["seed"])
        if self.rows.documents == 0:
            raise SpecError(f"{data_dir}/train.bin holds no documents; prepare the data again")
        self.budget = spec["time_budget"]
        self.limit = spec["time_budget"] + spec["budget_slack"]
        self.cpu_clock = None        # the CPU clock's reader, from the first batch on
        self.cpu_at_first = 0.0
        self.cpu_used = 0.0
        self.used_at_handover = None
        self.handover_dir = spec["handover_dir"]
        os.makedirs(self.handover_dir, exist_ok=True)
        for name in ("weights.pt", "model.pt", "weights.pt.part", "model.pt.part"):
            try:
                os.remove(os.path.join(self.handover_dir, name))
            except FileNotFoundError:
                pass
        self.t_spawn = self.t_first = self.t_handover = self.t_model = None
        self.batches = self.tokens = 0
        self.prefetched = {}
        self.inbuf = bytearray()
        self.payload = None          # {"kind", "left", "file", "path"} while a payload is arriving
        self.discarding = False      # inside a request line that was too long
        self.eof_at = None
        self.hashes = {"weights": None, "model": None}
        self.proc = None
        self.sock = None
        self.cpu = CpuMeter()
        self.terminated = None

    # -- time ------------------------------------------------------------------------------
    def deadline(self):
        """The wall-clock deadline of the current phase (with the CPU clock, training's is the wall
        guard; over_budget_cpu() checks the budget itself)."""
        if self.t_first is None:
            return self.t_spawn + self.spec["startup_allowance"], "startup"
        if self.t_handover is None:
            if self.cpu_clock is not None:
                return self.t_first + CPU_CLOCK_WALL_FACTOR * self.limit, "training"
            return self.t_first + self.limit, "training"
        return self.t_handover + self.spec["export_allowance"], "export"

    def check_cpu_budget(self, now: float) -> None:
        if self.cpu_clock is not None and self.t_handover is None and self.used(now) > self.limit:
            raise Stop("over_budget", f"training: {self.used(now):.2f} CPU s ({now - self.t_first:.2f} s of wall "
                                      f"time) without handing over, past TIME_BUDGET {self.budget:g} s + slack "
                                      f"{self.spec['budget_slack']:g} s of CPU time")

    def over(self, phase: str, now: float) -> Stop:
        if phase == "startup":
            return Stop("over_budget", f"startup: no training batch was requested within the startup allowance "
                                       f"of {self.spec['startup_allowance']:g} s ({now - self.t_spawn:.2f} s)")
        if phase == "training" and self.cpu_clock is not None:
            # the wall guard: a trainer that sleeps, waits, or is starved of CPU by the machine
            return Stop("over_budget", f"training: {now - self.t_first:.2f} s of wall time without handing over, "
                                       f"past {CPU_CLOCK_WALL_FACTOR:g} times the CPU-time limit of TIME_BUDGET "
                                       f"{self.budget:g} s + slack {self.spec['budget_slack']:g} s; it used "
                                       f"{self.used(now):.2f} CPU s (the trainer waited, or the machine gave it "
                                       f"little CPU)")
        if phase == "training":
            return Stop("over_budget", f"training: {now - self.t_first:.2f} s without handing over, past "
                                       f"TIME_BUDGET {self.budget:g} s + slack {self.spec['budget_slack']:g} s")
        return Stop("over_budget", f"export: no model {now - self.t_handover:.2f} s after the hand-over "
                                   f"(allowance {self.spec['export_allowance']:g} s)")

    def used(self, now: float) -> float:
        """Seconds of the budget used, by the spec's clock; frozen at the hand-over."""
        if self.t_first is None:
            return 0.0
        if self.used_at_handover is not None:
            return self.used_at_handover
        if self.cpu_clock is not None:
            # never backwards: an orphan reaped outside the tree takes its time with it
            self.cpu_used = max(self.cpu_used, self.cpu_clock.seconds() - self.cpu_at_first)
            return self.cpu_used
        return now - self.t_first

    # -- channel output --------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Sends within the current deadline: a trainer that does not read is not waited for."""
        end, phase = self.deadline()
        view = memoryview(data)
        while view:
            now = time.monotonic()
            if now >= end:
                raise self.over(phase, now)
            _, writable, _ = select.select([], [self.sock], [], min(POLL_S, end - now))
            if not writable:
                continue
            try:
                n = self.sock.send(view[:1 << 20])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                raise Stop("exited", None)      # the trainer is gone; its exit status decides
            view = view[n:]

    # -- requests --------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.inbuf += data
        while self.inbuf:
            if self.payload is not None:
                take = min(self.payload["left"], len(self.inbuf))
                self.payload["file"].write(self.inbuf[:take])
                del self.inbuf[:take]
                self.payload["left"] -= take
                if self.payload["left"] == 0:
                    self.finish_payload()
                continue
            nl = self.inbuf.find(b"\n")
            if nl < 0:
                if len(self.inbuf) > MAX_LINE:
                    self.discarding = True
                    self.inbuf.clear()
                return
            line = bytes(self.inbuf[:nl])
            del self.inbuf[:nl + 1]
            if self.discarding or len(line) > MAX_LINE:
                self.discarding = False
                self.send(b"err request line too long\n")
                continue
            self.handle(line)

    def handle(self, line: str) -> None:
        now = time.monotonic()
        m = BATCH_RE.fullmatch(line)
        if m:
            return self.serve_batch(int(m.group(1)), int(m.group(2)), now)
        if line == b"clock":
            return self.send(f"clock {self.used(now):.6f} {self.budget:.6f}\n".encode())
        m = PAYLOAD_RE.fullmatch(line)
        if m:
            return self.start_payload(m.group(1).decode(), int(m.group(2)), now)
        word = line.split(b" ", 1)[0]
        if word == b"batch":
            return self.send(b"err bad request: expected `batch B T` with positive integers\n")
        if word in (b"handover", b"model"):   # a payload of unknown length follows: cannot go on
            raise Stop("error", f"malformed request {line[:80]!r} from the trainer")
        self.send(b"err unknown request\n")

    def serve_batch(self, b: int, t: int, now: float) -> None:
        if self.t_handover is not None:
            return self.send(b"err the weights were handed over: no more training batches\n")
        if t > self.max_seq_len:
            return self.send(f"err T={t} is longer than MAX_SEQ_LEN {self.max_seq_len}\n".encode())
        if b * (t + 1) > self.spec["max_batch_tokens"]:
            return self.send(f"err B*(T+1) = {b * (t + 1)} tokens is more than the "
                             f"{self.spec['max_batch_tokens']} allowed per batch\n".encode())
        if t + 1 not in self.rows._streams and len(self.rows._streams) >= MAX_ROW_LENGTHS:
            return self.send(f"err at most {MAX_ROW_LENGTHS} different sequence lengths per run\n".encode())
        if self.t_first is None:
            if now - self.t_spawn > self.spec["startup_allowance"]:
                raise self.over("startup", now)
            if self.spec["compile_cache"] and self.spec["compile_snapshot"]:
                # Before any training data: start-up time, not the budget's.
                log(snapshot_compile_cache(self.proc.pid, self.spec["compile_cache"], self.spec["compile_snapshot"]))
                now = time.monotonic()
            self.t_first = now
            if self.spec["budget_clock"] == "cpu":
                self.cpu_clock = CpuClock(self.proc.pid)
                self.cpu_at_first = self.cpu_clock.seconds()
            log(f"first batch after {now - self.t_spawn:.2f} s: the training clock ({self.spec['budget_clock']}) starts")
        key = (b, t + 1)
        rows = self.prefetched.pop(key, None)
        if rows is None:
            rows = self.rows.batch(b, t + 1)
        payload = rows.tobytes()
        self.send(b"ok %d\n" % len(payload) + payload)
        self.batches += 1
        self.tokens += b * (t + 1)
        if len(self.prefetched) < MAX_PREFETCHED:
            self.prefetched[key] = self.rows.batch(b, t + 1)   # packed while the trainer computes

    def start_payload(self, kind: str, n: int, now: float) -> None:
        if kind == "handover":
            if self.t_first is None:
                raise Stop("error", "handover before the first training batch")
            if self.t_handover is not None:
                raise Stop("error", "a second handover")
            cap = MAX_WEIGHTS_BYTES
        else:
            if self.t_handover is None:
                raise Stop("error", "model sent before the weights were handed over")
            cap = MAX_MODEL_BYTES
        if n < 1 or n > cap:
            raise Stop("error", f"{kind} payload of {n} bytes (allowed: 1 to {cap})")
        name = "weights.pt" if kind == "handover" else "model.pt"
        path = os.path.join(self.handover_dir, name + ".part")
        self.payload = {"kind": kind, "left": n, "path": path, "final": os.path.join(self.handover_dir, name),
                        "file": open(path, "wb")}

    def finish_payload(self) -> None:
        now = time.monotonic()
        p, self.payload = self.payload, None
        p["file"].close()
        try:
            self.accept_payload(p, now)
        except BaseException:
            try:
                os.remove(p["path"])
            except OSError:
                pass
            raise
        self.hashes["weights" if p["kind"] == "handover" else "model"] = _sha256(p["final"])
        if p["kind"] == "handover":
            log(f"weights handed over after {now - self.t_first:.2f} s of training, {self.used_at_handover:.2f} s "
                f"of the budget by the {self.spec['budget_clock']} clock "
                f"({self.batches} batches, {self.tokens} tokens)")
            self.send(b"ok\n")
        else:
            log(f"model received {now - self.t_handover:.2f} s after the hand-over")
            try:
                self.send(b"ok\n")
            except Stop:
                pass
            raise Stop("handed_over")

    def accept_payload(self, p: dict, now: float) -> None:
        if p["kind"] == "handover":
            used = self.used(now)
            if used > self.limit:
                raise self.over("training", now)
            self.used_at_handover = used
            self.t_handover = now
            self.prefetched.clear()
            _check_archive(p["path"], "handover", needs_code=False)
        else:
            if now - self.t_handover > self.spec["export_allowance"]:
                raise self.over("export", now)
            self.t_model = now
            _check_archive(p["path"], "model", needs_code=True)
        os.chmod(p["path"], 0o444)
        os.replace(p["path"], p["final"])

    # -- the trainer -----------------------------------------------------------------------
    def spawn(self) -> None:
        self.proc, self.sock, self.cpu = start_trainer(self.spec)
        self.t_spawn = time.monotonic()

    def adopt(self, standby: "Standby") -> None:
        """Takes over a pre-started trainer and tells it to go: the startup clock starts now."""
        if standby.spec["trainer_argv"] != self.spec["trainer_argv"]:
            raise SpecError("spec: trainer_argv differs from the pre-started trainer's")
        self.proc, self.sock, self.cpu = standby.proc, standby.sock, standby.cpu
        self.cpu.mark()
        self.t_spawn = time.monotonic()
        self.send(b"go " + json.dumps({"AUTORESEARCH_SEED": str(self.spec["seed"])}).encode() + b"\n")
        log(f"pre-started trainer (pid {self.proc.pid}) told to go")

    def exited(self) -> bool:
        """Whether the trainer has ended, without reaping it (so its group can still be killed)."""
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            self.feed(data)

    def loop(self) -> None:
        while True:
            if self.terminated:
                raise Stop("error", f"the supervisor was stopped ({self.terminated})")
            now = time.monotonic()
            end, phase = self.deadline()
            if now >= end:
                raise self.over(phase, now)
            self.check_cpu_budget(now)
            wait = min(POLL_S, end - now)
            if self.eof_at is None:
                readable, _, _ = select.select([self.sock], [], [], wait)
                if readable:
                    try:
                        data = self.sock.recv(1 << 20)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError:
                        data = b""
                    if data:
                        self.feed(data)
                    elif data == b"":
                        self.eof_at = time.monotonic()
            else:
                time.sleep(wait)
            if self.exited():
                self.drain()
                if self.t_handover is not None:
                    raise Stop("exited", "the trainer exited after handing over the weights but before "
                                         "sending the model (the export failed: the log says why)")
                raise Stop("exited", "the trainer exited before handing over a model (the log says why)")
            if self.eof_at is not None and time.monotonic() - self.eof_at > EOF_GRACE_S:
                raise Stop("error", "the trainer closed the harness channel without exiting")
            self.cpu.sample()

    def kill(self) -> tuple:
        """SIGKILL to the trainer's process group, then reap; returns (exit_code, signal name)."""
        self.cpu.sample(force=True)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            status = self.proc.wait(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"the trainer (pid {self.proc.pid}) did not end {REAP_TIMEOUT_S:g} s after SIGKILL")
            return None, None
        if status < 0:
            return None, signal.Signals(-status).name
        return status, None

    def run(self) -> dict:
        if self.proc is None:
            self.spawn()
        try:
            self.loop()
            stop = Stop("error", "the supervisor's loop ended")
        except Stop as s:
            stop = s
        except Exception as e:   # a bug or an I/O failure here must still end the trainer
            import traceback
            traceback.print_exc()
            stop = Stop("error", f"supervisor failure: {type(e).__name__}: {e}")
        if self.payload is not None:
            self.payload["file"].close()
            try:
                os.remove(self.payload["path"])
            except OSError:
                pass
        was_running = not self.exited()
        used = None if self.t_first is None else round(self.used(time.monotonic()), 3)   # before the tree is gone
        exit_code, sig = self.kill()
        if stop.outcome == "exited" and stop.reason is None:
            stop = Stop("exited", "the trainer exited before handing over a model (the log says why)")
        if stop.outcome == "exited" and exit_code is not None:
            stop.reason += f"; exit code {exit_code}"
        elif stop.outcome == "exited" and sig and not was_running:
            stop.reason += f"; killed by {sig}"
        end = time.monotonic()
        startup = (self.t_first if self.t_first is not None else end) - self.t_spawn
        training = None if self.t_first is None else (self.t_handover or end) - self.t_first
        export = None if self.t_handover is None else (self.t_model or end) - self.t_handover
        report = {
            "outcome": stop.outcome,
            "reason": stop.reason if stop.outcome != "handed_over" else None,
            "startup_seconds": round(startup, 3),
            "training_seconds": None if training is None else round(training, 3),
            "export_seconds": None if export is None else round(export, 3),
            "batches_served": self.batches,
            "tokens_served": self.tokens,
            "cpu_seconds": self.cpu.total(),
            "exit_code": exit_code,
            "signal": sig,
            "weights_sha256": self.hashes["weights"],
            "model_sha256": self.hashes["model"] if stop.outcome == "handed_over" else None,
            "time_budget": self.budget,
            "budget_slack": self.spec["budget_slack"],
            "budget_clock": self.spec["budget_clock"],
            "budget_used_seconds": used,
        }
        log(f"outcome {stop.outcome}" + (f": {stop.reason}" if report["reason"] else ""))
        return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="supervise.py", description="Supervise one training run.")
    parser.add_argument("--spec", required=True, help="the run's spec.json (with --standby: the standby's)")
    parser.add_argument("--standby", action="store_true",
                        help="start the trainer now and wait for `go SPEC` on stdin before supervising")
    args = parser.parse_args(argv)
    standby = None
    try:
        spec = load_spec(args.spec)
        if args.standby:
            standby = Standby(spec, os.path.join(os.path.dirname(os.path.abspath(args.spec)), "ready"))
            path = standby.wait_for_go()
            if path is None:
                standby.end()
                return EXIT_NO_RUN
            spec = load_spec(path)
        sup = Supervisor(spec)
        if standby is not None:
            sup.adopt(standby)
    except (SpecError, Stop, OSError, ValueError, KeyError, TypeError) as e:
        if standby is not None:
            standby.end()
        log(f"error: {e}")
        print(json.dumps({"outcome": "error", "reason": f"supervisor set-up failed: {e}"}), flush=True)
        return 2

    def on_signal(signum, frame):
        sup.terminated = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    report = sup.run()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

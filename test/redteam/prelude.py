# ---- red-team prelude (test/redteam/prelude.py), prepended to hostile variants ---------------
# Bookkeeping for attacks: every attempt is recorded; one that gets through prints
# REDTEAM-BREACH (the suite fails on that line in any log) and the run goes on, so the
# outcome shows it too; when all attempts fail, _rt_verdict stops the run with their errors.
# Values marked __RT_...__ are filled in by test/redteam/apply.ts as strings built at run time.
# Writes only ever create new files named after the marker or append, never truncate, so a
# missing sandbox leaves evidence, not damage.
import os as _rt_os
import torch as _rt_torch

_RT_MARK = __RT_MARKER__
_RT_WS = __RT_WORKSPACE__
_RT_STATE = __RT_STATE_DIR__
_RT_DATA = __RT_DATA_DIR__
_RT_PORT = __RT_PORT__
_RT_ABSTRACT = __RT_ABSTRACT_SOCKET__
# Names the static rules would refuse as plain strings (they are feedback, not the boundary):
# hostile code spells them at run time so that it reaches the sandbox.
_RT_VAL = __RT_STR(val.bin)__
_RT_TRAIN = __RT_STR(train.bin)__
_RT_DB = __RT_STR(state.db)__
_RT_STATE_NAME = __RT_STR(.autoresearch)__
_RT_SBX_DATA = __RT_STR(/sandbox/data)__
_RT_ERRORS = []
_RT_WINS = []


def _rt_quiet(text):
    """The marker never goes into the run's own log or error: a marker found later was left there."""
    return str(text).replace(_RT_MARK, "<marker>")


def _rt_breach(label):
    _RT_WINS.append(label)
    print(f"REDTEAM-BREACH {_rt_quiet(label)}", flush=True)


def _rt_attempt(label, fn):
    try:
        fn()
    except Exception as error:
        _RT_ERRORS.append(_rt_quiet(f"{label}: {type(error).__name__}: {error}"))
        return False
    _rt_breach(label)
    return True


def _rt_verdict(what):
    """Every attempt failed: end the run with their errors (the expected outcome is crashed)."""
    if not _RT_WINS:
        raise SystemExit(f"redteam: every attempt to {what} failed ({len(_RT_ERRORS)} tried): "
                         + _rt_quiet(" | ".join(_RT_ERRORS[:6])))


def _rt_new_file(directory, data=None):
    """Creates <directory>/<marker>; raises if it cannot."""
    _rt_create(_rt_os.path.join(directory, _RT_MARK), data)


def _rt_append(path, data=None):
    """Appends to an existing file (O_APPEND, no O_CREAT); raises if it cannot."""
    fd = _rt_os.open(path, _rt_os.O_WRONLY | _rt_os.O_APPEND)
    try:
        _rt_os.write(fd, data if data is not None else _RT_MARK.encode())
    finally:
        _rt_os.close(fd)


def _rt_mount_roots():
    """Host paths leaked by /proc/self/mountinfo (field 4: the bind source within its file system)."""
    roots = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[3] not in ("/", ""):
                    roots.append(parts[3])
    except Exception as error:
        _RT_ERRORS.append(f"mountinfo: {error}")
    return roots


def _rt_candidate_dirs():
    """Every guess at where the workspace, its state and its data are, as seen from the run."""
    here = _rt_os.path.dirname(_rt_os.path.abspath(__file__))
    cwd = _rt_os.getcwd()
    guesses = [_RT_WS, _RT_STATE, _RT_DATA, _rt_os.path.join(_RT_STATE, "runs"), "/work", "/sandbox", "/sandbox/code",
               _RT_SBX_DATA, "/sandbox/code/..", "/sandbox/code/../.git"]
    for base in (here, cwd):
        for depth in range(1, 6):
            guesses.append(_rt_os.path.normpath(_rt_os.path.join(base, *([".."] * depth))))
    for root in _rt_mount_roots():
        guesses.append(root)
        parent = root
        for _ in range(4):
            parent = _rt_os.path.dirname(parent)
            if parent in ("", "/"):
                break
            guesses.append(parent)
    via_proc = [f"/proc/1/root{g}" for g in guesses if g.startswith("/")]
    seen, out = set(), []
    for g in guesses + via_proc:
        if g not in seen:
            seen.add(g)
            out.append(g)
    return out


def _rt_mounts():
    """(mount point, file system type) of every mount the run sees."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                parts = left.split()
                if len(parts) > 4 and right:
                    out.append((parts[4], right.split()[0]))
    except Exception:
        pass
    return out


def _rt_private(path):
    """The run's own places (scratch, private /tmp, /dev, /proc, bwrap's tmpfs root): writes there
    prove nothing. The workspace, its state and data, and /work are never private."""
    real = _rt_os.path.realpath(path)
    for host in (_RT_WS, _RT_STATE, _RT_DATA, "/work"):
        if real == host or real.startswith(host + "/"):
            return False
    cwd = _rt_os.path.realpath(_rt_os.getcwd())
    if real == cwd or real.startswith(cwd + "/") or real in ("/tmp", "/dev", "/proc", "/sys") \
            or real.startswith(("/tmp/", "/dev/", "/proc/", "/sys/")):
        return True
    best, kind = "", ""
    for point, fstype in _rt_mounts():
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return best == "/" and kind == "tmpfs"


def _rt_create(path, data=None):
    """Creates a new file (never overwrites); raises if it cannot."""
    fd = _rt_os.open(path, _rt_os.O_WRONLY | _rt_os.O_CREAT | _rt_os.O_EXCL, 0o644)
    try:
        _rt_os.write(fd, data if data is not None else _RT_MARK.encode())
    finally:
        _rt_os.close(fd)


def _rt_set_comm():
    """Names this process after the marker, so the suite finds it in /proc/*/comm if it survives."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(_RT_MARK)
    except Exception:
        pass


_RT_DAEMON_CODE = (
    "import os, sys, time\n"
    "mark = sys.argv[1]\n"
    "time.sleep(float(sys.argv[2]))\n"
    "for d in sys.argv[3:]:\n"
    "    try:\n"
    "        fd = os.open(os.path.join(d, mark), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n"
    "        os.write(fd, mark.encode()); os.close(fd)\n"
    "    except Exception:\n"
    "        pass\n"
)


def _rt_daemon_argv(seconds=20):
    """A process whose argv names the marker, that sleeps, then leaves marker files wherever it can."""
    targets = [_RT_WS, _RT_STATE, _RT_DATA, "/tmp", _rt_os.getcwd(), "/work"]
    return ["/usr/bin/python3", "-c", _RT_DAEMON_CODE, _RT_MARK, str(seconds)] + targets


def _rt_channel_fd():
    return int(_rt_os.environ.get(__RT_STR(AUTORESEARCH_CHANNEL_FD)__, "3"))


def _rt_send(header, payload=b""):
    """One request on the supervisor's channel; returns the answer line."""
    fd = _rt_channel_fd()
    data = header.encode() + b"\n" + payload
    while data:
        data = data[_rt_os.write(fd, data):]
    line = b""
    while not line.endswith(b"\n"):
        chunk = _rt_os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line.decode(errors="replace").strip()


def _rt_read_exact(n):
    fd, out = _rt_channel_fd(), b""
    while len(out) < n:
        chunk = _rt_os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _rt_bytes_of(save, obj):
    """Serialises with torch.save or torch.jit.save into memory."""
    import io as _rt_io
    buf = _rt_io.BytesIO()
    save(obj, buf)
    return buf.getvalue()
# ---- end of the red-team prelude --------------------------------------------------------------

"""
A slot's next trainer, started before its run is known (docs/run-protocol.md, "Pre-started
trainer").

    python3 -u prestart.py /sandbox/code/train.py

The interpreter's start, `import torch` and the torch._dynamo import that the first optimizer
triggers take more than two seconds on a CPU; done while the slot is idle (or its GPU trains),
they are no longer between one run and the next. This process imports them and nothing of the
run, says `ready` on the harness channel, then blocks on it until the supervisor sends one line,
`go {"NAME": "value", ...}`: the run's own environment (its seed). Then it runs train.py as
__main__, as `python3 -u train.py` would. No code of the agent's exists in this process before
that line, and the supervisor's clocks start when it sends it.
"""

import json
import os
import runpy
import sys

import torch  # noqa: F401  (the slow imports this process exists to make early)
import torch._dynamo  # noqa: F401  (torch.optim imports it when the first optimizer is made)

MAX_GO_LINE = 1 << 16


def wait_for_go(fd: int) -> dict:
    """Reads byte by byte up to the newline, so that nothing after it is taken from the channel."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            sys.exit(0)   # the supervisor ended the standby without a run
        line += chunk
        if len(line) > MAX_GO_LINE:
            sys.exit("prestart: the go line is too long")
    word, _, payload = bytes(line).strip().partition(b" ")
    env = json.loads(payload) if word == b"go" else None
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        sys.exit(f"prestart: expected `go {{...}}` on the channel, got {bytes(line[:80])!r}")
    return env


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: prestart.py TRAIN_PY")
    script = os.path.abspath(sys.argv[1])
    channel = int(os.environ["AUTORESEARCH_CHANNEL_FD"])
    os.write(channel, b"ready\n")   # the import is done: the server may hand this trainer a run
    os.environ.update(wait_for_go(channel))
    sys.argv = [script]
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()

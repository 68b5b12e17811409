"""
The fixed harness as train.py sees it: constants, tokenizer, training batches, the clock, hand-over.

    from prepare import (PROFILE, MAX_SEQ_LEN, TIME_BUDGET, VOCAB_SIZE, EVAL_BATCH, SEED,
                         get_tokenizer, make_dataloader, budget_used, finish_training)

    loader = make_dataloader(batch_size, seq_len, device)  # endless (x, y) LongTensors (batch_size, seq_len)
    x, y = next(loader)       # the first batch starts the training clock
    budget_used()             # seconds of TIME_BUDGET used so far (the supervisor's clock, not yours)
    finish_training(model)    # hands the weights and a TorchScript export of model to the harness

How a run works (docs/run-protocol.md): the server starts train.py in a sandbox under a supervisor
(supervise.py). The supervisor serves training batches and the clock over a channel (file
descriptor $AUTORESEARCH_CHANNEL_FD) and measures the budget itself: from the first batch to the
hand-over of the weights, which must come within TIME_BUDGET + BUDGET_SLACK seconds, else the
run is over budget. finish_training exports the model with torch.jit.trace; the exported program
is scored on the validation split by the evaluator in a separate process. train.py never sees
validation data and cannot evaluate itself; whatever it prints is informative only.

In the sandbox, `import prepare` fills torch's compile cache from the workspace's (what the
head's run compiled before its first batch): a graph the head compiled is not compiled again.

The constants come from $AUTORESEARCH_DATA_DIR/manifest.json (default ./data), written by
prepare_data.py; SEED is the run's seed ($AUTORESEARCH_SEED, default 42), which also fixes the
order of the training rows.
"""

from __future__ import annotations

import heapq
import io
import json
import os
import re
import shutil
import socket
import sys

MANIFEST_SCHEMA = "autoresearch-data/1"
TOKENIZER_SCHEMA = "autoresearch-tokenizer/1"
DEFAULT_DATA_DIR = "data"
ENCODE_CACHE_LIMIT = 1_000_000   # cached pieces before the encoder cache is cleared

# Four reserved tokens at the top of the vocabulary; the first marks the start of a document.
SPECIAL_TOKENS = ["<|bos|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]

# Pre-tokenization, in the spirit of the GPT-4 pattern, with explicit code-point classes instead
# of \p{L}, \w or \s (whose meaning depends on the Python build's Unicode tables):
#   whitespace \t \n \v \f \r space; punctuation: ASCII punctuation and controls, Latin-1 symbols,
#   General and CJK punctuation, the first fullwidth forms; digits 0-9; letters: everything else.
_WS = r"\t\n\x0b\x0c\r "
_PUNCT = r"\x00-\x08\x0e-\x1f!-/:-@\[-`{-~\x7f-\xbf\u2000-\u206f\u3000-\u303f\uff00-\uff20"
SPLIT_PATTERN = (
    r"'(?:[sdmtSDMT]|[lL][lL]|[vV][eE]|[rR][eE])"     # English contractions
    rf"|[\t\x0b\x0c {_PUNCT}]?[^{_WS}0-9{_PUNCT}]+"   # a word, maybe with one leading space/symbol
    r"|[0-9]{1,3}"                                    # numbers in groups of up to three digits
    rf"| ?[{_PUNCT}]+[\r\n]*"                         # a run of punctuation
    rf"|[{_WS}]*[\r\n]"                               # whitespace up to a line break
    rf"|[{_WS}]+(?![^{_WS}])"                         # trailing whitespace
    rf"|[{_WS}]+"                                     # other whitespace
)
_SPLIT_RE = re.compile(SPLIT_PATTERN)

__all__ = ["PROFILE", "MAX_SEQ_LEN", "TIME_BUDGET", "VOCAB_SIZE", "EVAL_TOKENS", "EVAL_BATCH",
           "BUDGET_SLACK", "SEED", "get_tokenizer", "make_dataloader", "budget_used", "finish_training"]


class HarnessError(RuntimeError):
    """A problem the user can fix, with a message that says how."""


def _env_seed() -> int:
    text = os.environ.get("AUTORESEARCH_SEED", "42")
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise HarnessError(f"AUTORESEARCH_SEED must be a non-negative integer, got {text!r}")
    return int(text)


SEED = _env_seed()


def _seed_compile_cache() -> None:
    """Sandboxed: copies the workspace's compile cache (read-only) into this run's own, once."""
    seed, cache = os.environ.get("AUTORESEARCH_COMPILE_SEED"), os.environ.get("AUTORESEARCH_COMPILE_CACHE")
    if seed and cache and os.path.isdir(seed) and not os.path.exists(os.path.join(cache, ".seeded")):
        try:   # torch's own import may have made the folder already
            shutil.copytree(seed, cache, symlinks=True, dirs_exist_ok=True)
            open(os.path.join(cache, ".seeded"), "w").close()
        except OSError as e:   # no half-copied entry: compile afresh
            shutil.rmtree(cache, ignore_errors=True)
            print(f"prepare.py: the compile cache was not copied ({e})", file=sys.stderr)


_seed_compile_cache()

# ---------------------------------------------------------------------------------------------
# Constants: read from the manifest on first use, so `import prepare` never fails by itself
# ---------------------------------------------------------------------------------------------
_CONSTANT_NAMES = ("MAX_SEQ_LEN", "TIME_BUDGET", "VOCAB_SIZE", "EVAL_TOKENS", "EVAL_BATCH", "BUDGET_SLACK")
_RUNTIME = None       # {"data_dir": ..., "manifest": ...}
_TOKENIZER = None


def _read_manifest(data_dir: str):
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
        if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
            raise ValueError("unknown schema")
        for key in ("profile", "constants", "tokenizer", "files", "hashes"):
            if key not in manifest:
                raise ValueError(f"missing '{key}'")
        return manifest
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path} is not a valid manifest ({e}); prepare the data again "
                           f"(python3 prepare_data.py --force)") from None


def _runtime() -> dict:
    global _RUNTIME
    if _RUNTIME is None:
        data_dir = os.path.abspath(os.environ.get("AUTORESEARCH_DATA_DIR") or DEFAULT_DATA_DIR)
        manifest = _read_manifest(data_dir)
        if manifest is None:
            raise HarnessError(
                f"no prepared data in {data_dir} (manifest.json missing); prepare it with "
                f"`python3 prepare_data.py --profile cpu --data-dir {data_dir}` or set AUTORESEARCH_DATA_DIR")
        _RUNTIME = {"data_dir": data_dir, "manifest": manifest}
    return _RUNTIME


def __getattr__(name: str):
    if name == "PROFILE":
        return _runtime()["manifest"]["profile"]
    if name in _CONSTANT_NAMES:
        constants = _runtime()["manifest"]["constants"]
        if name not in constants:
            raise HarnessError(f"the manifest has no {name}: the data was prepared by an older "
                               f"harness; prepare it again (python3 prepare_data.py --force)")
        return constants[name]
    raise AttributeError(f"module 'prepare' has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE with ranks (token id = merge priority)
# ---------------------------------------------------------------------------------------------
# Encoding a piece follows the rank rule used by tiktoken: a piece that is itself a token becomes
# that token; otherwise start from single bytes and repeatedly merge the adjacent pair whose
# concatenation is the lowest-ranked token (leftmost on ties) until no adjacent pair is a token.

def _clean_text(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded: pair them up or replace them with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _bpe_piece_fast(piece: bytes, ranks: dict) -> list:
    """The rank rule in O(n log n): a heap of candidate pairs over a linked list of parts."""
    token = ranks.get(piece)
    if token is not None:
        return [token]
    n = len(piece)
    nxt = list(range(1, n + 1))      # nxt[i]: start of the part after the part starting at i
    prv = list(range(-1, n - 1))     # prv[i]: start of the part before it
    alive = [True] * n
    heap = [(ranks[piece[i:i + 2]], i, i + 2) for i in range(n - 1) if piece[i:i + 2] in ranks]
    heapq.heapify(heap)              # (rank, start of left part, end of right part)
    while heap:
        _, i, end = heapq.heappop(heap)
        if not alive[i]:
            continue
        j = nxt[i]
        if j >= n or nxt[j] != end:
            continue                 # stale: one of the two parts has changed since
        alive[j] = False
        nxt[i] = end
        if end < n:
            prv[end] = i
        p = prv[i]
        if p >= 0 and piece[p:end] in ranks:
            heapq.heappush(heap, (ranks[piece[p:end]], p, end))
        if end < n and piece[i:nxt[end]] in ranks:
            heapq.heappush(heap, (ranks[piece[i:nxt[end]]], i, nxt[end]))
    out, i = [], 0
    while i < n:
        out.append(ranks[piece[i:nxt[i]]])
        i = nxt[i]
    return out


class Tokenizer:
    """encode(text) -> list[int], decode(ids) -> str, bos_id, vocab_size."""

    def __init__(self, merges, special_tokens, pattern: str = SPLIT_PATTERN):
        self.pattern = pattern
        self._split = re.compile(pattern).findall
        vocab = [bytes([i]) for i in range(256)]
        for a, b in merges:
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise HarnessError(f"tokenizer merge ({a}, {b}) refers to an unknown token")
            vocab.append(vocab[a] + vocab[b])
        self.ranks = {tok: i for i, tok in enumerate(vocab)}
        if len(self.ranks) != len(vocab):
            raise HarnessError("tokenizer has two tokens with the same bytes")
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = list(special_tokens)
        self.bos_id = len(vocab)
        self.vocab_size = len(vocab) + len(self.special_tokens)
        # decode table: specials decode to their names; token_bytes.bin gives them length 0
        self._decode_table = vocab + [s.encode("utf-8") for s in self.special_tokens]
        self.token_lengths = [len(t) for t in vocab] + [0] * len(self.special_tokens)
        self._cache = {}

    def encode(self, text: str) -> list:
        """Regex split, then a cache of piece -> ids (text repeats its words a lot)."""
        ids = []
        cache, ranks = self._cache, self.ranks
        if len(cache) > ENCODE_CACHE_LIMIT:
            cache.clear()
        for piece in self._split(text):
            toks = cache.get(piece)
            if toks is None:
                toks = cache[piece] = _bpe_piece_fast(_clean_text(piece).encode("utf-8"), ranks)
            ids.extend(toks)
        return ids

    def decode(self, ids) -> str:
        table = self._decode_table
        return b"".join(table[int(i)] for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"schema": TOKENIZER_SCHEMA, "type": "byte-level-bpe", "vocab_size": self.vocab_size,
                "pattern": self.pattern, "bos_id": self.bos_id,
                "special_tokens": {s: self.bos_id + k for k, s in enumerate(self.special_tokens)},
                "merges": [list(m) for m in self.merges]}

    @classmethod
    def from_json(cls, obj: dict, where: str = "tokenizer.json") -> "Tokenizer":
        try:
            if obj.get("schema") != TOKENIZER_SCHEMA:
                raise ValueError("unknown schema")
            specials = sorted(obj["special_tokens"].items(), key=lambda kv: kv[1])
            tok = cls([(int(a), int(b)) for a, b in obj["merges"]], [s for s, _ in specials], obj["pattern"])
            if tok.vocab_size != obj["vocab_size"] or tok.bos_id != obj["bos_id"]:
                raise ValueError("sizes do not add up")
            return tok
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise HarnessError(f"{where} is not a valid tokenizer ({e}); prepare the data again "
                               f"(python3 prepare_data.py --force)") from None


def get_tokenizer() -> Tokenizer:
    global _TOKENIZER
    if _TOKENIZER is None:
        path = os.path.join(_runtime()["data_dir"], "tokenizer.json")
        try:
            with open(path, "rb") as f:
                obj = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise HarnessError(f"cannot read {path} ({e}); prepare the data again") from None
        _TOKENIZER = Tokenizer.from_json(obj, path)
    return _TOKENIZER


# ---------------------------------------------------------------------------------------------
# The channel to the supervisor: one request line, one answer line (+ a payload for batches)
# ---------------------------------------------------------------------------------------------
_CHANNEL = None
_FINISHED = False


class _Channel:
    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        self.reader = self.sock.makefile("rb", buffering=1 << 16)

    def ask(self, line: str, payload: bytes = b"") -> str:
        """Sends a request (and its payload); returns the answer line. `err ...` raises."""
        try:
            self.sock.sendall(line.encode("ascii") + b"\n")
            if payload:
                self.sock.sendall(payload)
            answer = self.reader.readline(4096).decode("ascii", "replace").strip()
        except OSError as e:
            raise HarnessError(f"the harness channel failed ({e}); the supervisor has stopped this run") from None
        if not answer:
            raise HarnessError("the supervisor closed the channel: this run was stopped (see the run's outcome)")
        if answer.startswith("err"):
            raise HarnessError(f"the harness refused `{line}`: {answer[3:].strip()}")
        return answer

    def read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.reader.readinto(view[got:])
            if not k:
                raise HarnessError("the supervisor closed the channel in the middle of a batch")
            got += k
        return buf


def _channel() -> _Channel:
    global _CHANNEL
    if _CHANNEL is None:
        fd = os.environ.get("AUTORESEARCH_CHANNEL_FD")
        if not fd or not fd.isdigit():
            raise HarnessError(
                "train.py runs through the server: start it with the run_experiment tool (the harness "
                "serves the training batches and the clock over a channel, and AUTORESEARCH_CHANNEL_FD "
                "is not set here)")
        _CHANNEL = _Channel(int(fd))
    return _CHANNEL


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HarnessError(f"{name} must be a positive int, got {value!r}")
    return value


def make_dataloader(batch_size: int, seq_len: int, device="cpu"):
    """Endless iterator of (x, y) LongTensors (batch_size, seq_len) on device from the training split.

    Rows of seq_len + 1 tokens are BOS-aligned best-fit packings of whole document pieces (no
    padding); x is a row without its last token, y without its first. The supervisor packs them
    in an order seeded by SEED. seq_len may be at most MAX_SEQ_LEN. The first next() starts the clock."""
    _positive_int("batch_size", batch_size)
    _positive_int("seq_len", seq_len)
    max_len = __getattr__("MAX_SEQ_LEN")
    if seq_len > max_len:
        raise HarnessError(f"seq_len {seq_len} is longer than MAX_SEQ_LEN {max_len}")
    channel = _channel()
    return _batches(channel, batch_size, seq_len, device)


def _batches(channel: _Channel, batch_size: int, seq_len: int, device):
    import numpy as np
    import torch
    device = torch.device(device)
    expected = batch_size * (seq_len + 1) * 4
    while True:
        answer = channel.ask(f"batch {batch_size} {seq_len}")
        if answer != f"ok {expected}":
            raise HarnessError(f"unexpected answer from the harness: {answer!r}")
        rows = torch.from_numpy(np.frombuffer(channel.read_exact(expected), dtype="<i4"))
        rows = rows.view(batch_size, seq_len + 1).long()
        x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        if device.type == "cuda":
            yield x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            yield x.to(device), y.to(device)


def budget_used() -> float:
    """Seconds of the training budget used so far, by the supervisor's clock: 0 before the first
    batch, frozen at the hand-over. The run is over budget past TIME_BUDGET + BUDGET_SLACK."""
    answer = _channel().ask("clock")
    m = re.fullmatch(r"clock ([0-9.]+) ([0-9.]+)", answer)
    if not m:
        raise HarnessError(f"unexpected answer from the harness: {answer!r}")
    return float(m.group(1))


# ---------------------------------------------------------------------------------------------
# Hand-over: the weights stop the clock, then the TorchScript export is what gets evaluated
# ---------------------------------------------------------------------------------------------
_EXPORT_HELP = ("model(x) must take one (B, T) LongTensor of token ids and return only the logits "
                "(B, T, VOCAB_SIZE) as a plain tensor, with no Python branches or loops that depend on "
                "tensor values (no .item(), .tolist() or `if tensor`), no tensor subclasses and no "
                "returned tuples or losses when called with one argument")


def finish_training(model) -> None:
    """Hands the trained model to the harness and ends the run: it does not return.

    1. The weights (every parameter and buffer, float32, on the CPU) go to the supervisor: this
       stops the training clock; no batch is served after it.
    2. model (a torch.compile wrapper is unwrapped) is put in eval mode and float32, traced with
       torch.jit.trace on zeros (EVAL_BATCH, MAX_SEQ_LEN) on its device, and the TorchScript file
       is sent. The supervisor then ends this process: nothing after this call runs, so print
       the summary before calling it. An error (the model cannot be exported) raises HarnessError."""
    global _FINISHED
    import torch
    if _FINISHED:
        raise HarnessError("finish_training was already called: one hand-over per run")
    channel = _channel()
    module = getattr(model, "_orig_mod", model)
    if not isinstance(module, torch.nn.Module):
        raise HarnessError(f"finish_training needs the torch.nn.Module, got {type(model).__name__}")
    _FINISHED = True
    module.eval()
    module.float()
    tensors = {name: p.detach().to("cpu", copy=True) for name, p in module.named_parameters()}
    tensors.update({name: b.detach().to("cpu", copy=True) for name, b in module.named_buffers()})
    buf = io.BytesIO()
    torch.save(tensors, buf)
    channel.ask(f"handover {buf.getbuffer().nbytes}", buf.getvalue())

    batch, seq_len, vocab = __getattr__("EVAL_BATCH"), __getattr__("MAX_SEQ_LEN"), __getattr__("VOCAB_SIZE")
    first = next(iter(list(module.parameters()) + list(module.buffers())), None)
    device = first.device if first is not None else torch.device("cpu")
    example = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    with torch.no_grad():
        try:
            logits = module(example)
        except Exception as e:
            raise HarnessError(f"the model failed on a ({batch}, {seq_len}) batch of token ids "
                               f"({type(e).__name__}: {e}); {_EXPORT_HELP}") from e
        if type(logits) is not torch.Tensor:
            raise HarnessError(f"model(x) returned {type(logits).__name__}, not a plain torch.Tensor; {_EXPORT_HELP}")
        if logits.dim() != 3 or tuple(logits.shape[:2]) != (batch, seq_len) or logits.shape[2] < vocab:
            raise HarnessError(f"model(x) returned shape {tuple(logits.shape)}, expected logits "
                               f"{(batch, seq_len, vocab)}; {_EXPORT_HELP}")
        del logits
        try:
            traced = torch.jit.trace(module, (example,), check_trace=False)
        except Exception as e:
            raise HarnessError(f"torch.jit.trace could not export the model ({type(e).__name__}: {e}); "
                               f"{_EXPORT_HELP}") from e
    out = io.BytesIO()
    torch.jit.save(traced, out)
    channel.ask(f"model {out.getbuffer().nbytes}", out.getvalue())
    channel.reader.read(1)   # the supervisor ends this process now; should it close the channel instead,
    os._exit(0)              # the run is over all the same


if __name__ == "__main__":
    raise SystemExit("prepare.py is imported by train.py, not run: prepare data with "
                     "`python3 prepare_data.py --profile PROFILE --data-dir DIR`")

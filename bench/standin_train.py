"""A stand-in train.py for the campaign simulator (bench/campaign-server.mjs): no GPT, no learning.

Its validation bits per byte are a known function of its constants plus noise drawn from the run's
seed and the program itself, so that a campaign's true gains are known exactly. The model is a
unigram distribution (token counts from a few training batches) raised to the power SHARPNESS:
val_bpb falls as SHARPNESS rises towards 1. SHARPNESS is BASE_SHARPNESS plus the GAIN_* constants
(each experiment of a campaign sets one of them) plus NOISE_SIGMA times a standard normal drawn
from (SEED, the GAIN_* values): two runs of one program differ only through their seeds, and any
change to the program draws fresh noise, as a real run's would.
"""

import hashlib
import random
import time

import torch

from prepare import MAX_SEQ_LEN, SEED, VOCAB_SIZE, finish_training, make_dataloader

BASE_SHARPNESS = 0.25
NOISE_SIGMA = 0.004        # sharpness units; the campaign's effects are multiples of it
COUNT_BATCHES = 8
# bench/throughput.mjs: how long a run holds its slot, as a GPU run would, without using the CPU.
HOLD_SECONDS = 0.0
# GAIN_* constants follow, one per experiment of the campaign (the simulator writes them).
# -- gains --

gains = {name: value for name, value in sorted(globals().items()) if name.startswith("GAIN_")}
draw = random.Random(hashlib.sha256(repr((SEED, sorted(gains.items()))).encode()).digest())
sharpness = BASE_SHARPNESS + sum(gains.values()) + NOISE_SIGMA * draw.gauss(0.0, 1.0)

counts = torch.ones(VOCAB_SIZE)
loader = make_dataloader(16, MAX_SEQ_LEN)
for _ in range(COUNT_BATCHES):
    x, y = next(loader)
    counts += torch.bincount(y.flatten(), minlength=VOCAB_SIZE).float()
log_unigram = torch.log(counts / counts.sum())


class Unigram(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, idx):
        return torch.zeros(idx.shape[0], idx.shape[1], 1) + self.logits


time.sleep(HOLD_SECONDS)
print("---")
print(f"sharpness:        {sharpness:.6f}")
print(f"num_steps:        {COUNT_BATCHES}")
finish_training(Unigram(sharpness * log_unigram))

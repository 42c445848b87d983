"""golf-mini: a byte-level language model of Shakespeare in a fixed data and size budget.

Reads its training text on stdin — exactly the task's ``train_tokens`` bytes, chosen
by the task for the seed — trains on it for EPOCHS passes, then writes the
compressed weights to ARL_OUT. Same seed, same bytes, same steps: one thread and
deterministic kernels make the score a function of the program and the seed, not of
how busy the machine is; the wallclock budget, timed from outside, stays a hard cap.
The evaluator imports this file, calls ``load`` and ``log_probs`` on held-out works,
and scores bits per byte; it also counts this file's bytes plus the weight file's
bytes against the artifact cap.
"""

import io
import lzma
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --- model: small, so that one CPU thread gets through the data well inside the cap ---
N_LAYER = 2
D_MODEL = 128
N_HEAD = 4
MLP_MULT = 4            # hidden width of the MLP = MLP_MULT * D_MODEL
CONTEXT = 128           # bytes of context per training window
TIE_EMBEDDINGS = False  # share the input embedding with the output head
DROPOUT = 0.0

# --- optimisation ---------------------------------------------------------------
BATCH_SIZE = 32
LR = 1e-3
SCHEDULE = "constant"   # "constant", "cosine" or "linear" decay over the training steps
WARMUP_STEPS = 0
WEIGHT_DECAY = 0.0
BETA2 = 0.999
GRAD_CLIP = 1.0

# --- data: the bytes are fixed; how often to go over them is the recipe's choice ---
EPOCHS = 1              # passes over the given bytes (each costs time against the cap)

# --- artifact and evaluation -----------------------------------------------------
WEIGHT_FORMAT = "int8"  # "float16", or "int8": one absmax scale per row
EVAL_STRIDE = 128       # score this many bytes per window (< CONTEXT: overlapping windows, slower)
EVAL_BATCH = 64


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(
            nn.Linear(D_MODEL, MLP_MULT * D_MODEL), nn.GELU(), nn.Linear(MLP_MULT * D_MODEL, D_MODEL))
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, N_HEAD, D_MODEL // N_HEAD).transpose(1, 3).unbind(2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # causal: no peeking ahead
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, D_MODEL)))
        return x + self.drop(self.mlp(self.ln2(x)))


class ByteLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(256, D_MODEL)
        self.pos = nn.Parameter(torch.zeros(CONTEXT, D_MODEL))
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, 256, bias=False)
        if TIE_EMBEDDINGS:
            self.head.weight = self.embed.weight

    def forward(self, idx):
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def lr_at(step, progress):
    """Learning rate at a step; progress is the fraction of the training steps done."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS) if WARMUP_STEPS else 1.0
    if SCHEDULE == "cosine":
        return LR * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if SCHEDULE == "linear":
        return LR * warm * max(0.0, 1 - progress)
    return LR * warm


def train(data, seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ByteLM()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": rest, "weight_decay": 0.0}], lr=LR, betas=(0.9, BETA2))
    # Non-overlapping windows of the given bytes, shuffled per epoch: each byte once a pass.
    starts = np.arange(0, len(data) - CONTEXT - 1, CONTEXT)
    per_epoch = len(starts) // BATCH_SIZE
    steps = per_epoch * EPOCHS
    step, t0 = 0, time.monotonic()
    for _ in range(EPOCHS):
        order = rng.permutation(starts)
        for b in range(per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, step / steps)
            batch = order[b * BATCH_SIZE: (b + 1) * BATCH_SIZE]
            chunk = torch.from_numpy(np.stack([data[s: s + CONTEXT + 1] for s in batch]).astype(np.int64))
            logits = model(chunk[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 256), chunk[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            if step % 100 == 0:
                print(f"step {step}/{steps} loss {loss.item() / math.log(2):.3f} bpb "
                      f"{time.monotonic() - t0:.1f}s", flush=True)
            step += 1
    print(f"trained {step} steps, {step * BATCH_SIZE * CONTEXT} bytes", flush=True)
    return model


def save(model, out):
    """Write the weights compressed; their bytes count against the artifact cap."""
    packed = {}
    for name, w in model.named_parameters():  # a tied head is stored once, as the embedding
        w = w.detach().float()
        if WEIGHT_FORMAT == "int8" and w.dim() == 2:
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
            packed[name] = ((w / scale).round().to(torch.int8), scale.half())
        else:
            packed[name] = w.half()
    buf = io.BytesIO()
    torch.save(packed, buf)
    (Path(out) / "model.xz").write_bytes(lzma.compress(buf.getvalue(), preset=9))


def load(out):
    packed = torch.load(io.BytesIO(lzma.decompress((Path(out) / "model.xz").read_bytes())))
    state = {name: (v[0].float() * v[1].float() if isinstance(v, tuple) else v.float())
             for name, v in packed.items()}
    if TIE_EMBEDDINGS:
        state["head.weight"] = state["embed.weight"]
    model = ByteLM()
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def log_probs(model, data):
    """Row i: log-probabilities of the 256 values of byte data[i], given only data[:i].

    Windows of CONTEXT inputs slide by EVAL_STRIDE; each scores its last EVAL_STRIDE
    positions. The input before the first byte is a newline.
    """
    n, stride = len(data), min(EVAL_STRIDE, CONTEXT)
    m = -(-n // stride)
    inputs = np.full(CONTEXT - stride + m * stride, 10, np.int64)
    inputs[CONTEXT - stride + 1: CONTEXT - stride + n] = data[:-1]
    windows = torch.from_numpy(inputs).unfold(0, CONTEXT, stride)
    rows = [F.log_softmax(model(windows[i: i + EVAL_BATCH])[:, -stride:].float(), dim=-1)
            for i in range(0, m, EVAL_BATCH)]
    return torch.cat(rows).reshape(-1, 256)[:n]


def main():
    torch.set_num_threads(int(os.environ.get("ARL_THREADS", 1)))
    torch.use_deterministic_algorithms(True)  # same seed, same bytes -> same weights
    data = np.frombuffer(sys.stdin.buffer.read(), dtype=np.uint8)
    if len(data) <= CONTEXT + 1:
        sys.exit(f"got {len(data)} bytes of training text on stdin; run me the way the task does (arl)")
    model = train(data, int(os.environ.get("ARL_SEED", 0)))
    save(model, os.environ["ARL_OUT"])


if __name__ == "__main__":
    main()

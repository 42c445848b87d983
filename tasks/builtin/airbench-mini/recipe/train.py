"""airbench-mini: train a small CIFAR-10 classifier as fast as possible on one CPU thread.

The score is this process's wallclock, timed from outside, so everything counts:
start-up, data loading, training and saving. It is legal only if the saved model's
mean test accuracy over the evaluator's seeds reaches the gate; the evaluator holds
the test labels and runs ``load`` and ``predict`` on the test images itself.
"""

import time

STARTED = time.monotonic()

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --- network: three conv blocks, each halving the resolution ----------------------
WIDTH = 8               # channels of the first block; the next two have 2x and 4x
BN_MOMENTUM = 0.1
CHANNELS_LAST = False   # memory layout; some CPU convolution kernels are faster with it

# --- optimisation -----------------------------------------------------------------
EPOCHS = 8
BATCH_SIZE = 256
LR = 0.1
MOMENTUM = 0.9
NESTEROV = True
WEIGHT_DECAY = 5e-4
SCHEDULE = "linear"     # "constant", "linear" (decay to 0) or "onecycle" (warm up over 20 %, then decay)

# --- loss -------------------------------------------------------------------------
LABEL_SMOOTHING = 0.2

# --- augmentation -----------------------------------------------------------------
CROP_PAD = 2            # random translation by up to this many pixels (0: none)
FLIP = True             # random horizontal flips
TTA_FLIP = False        # average predictions over the image and its mirror at test time

MEAN = torch.tensor([125.3, 123.0, 113.9]).view(1, 3, 1, 1)
STD = torch.tensor([63.0, 62.1, 66.7]).view(1, 3, 1, 1)


def conv_bn(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM), nn.GELU()]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for width in (WIDTH, 2 * WIDTH, 4 * WIDTH):
            layers += conv_bn(c_in, width) + [nn.MaxPool2d(2)] + conv_bn(width, width)
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x):
        x = self.features(x)
        return self.head(x.amax(dim=(2, 3)))


def to_input(images):
    """uint8 [N, 32, 32, 3] -> normalised float [N, 3, 32, 32]."""
    x = (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() - MEAN) / STD
    return x.contiguous(memory_format=torch.channels_last) if CHANNELS_LAST else x.contiguous()


def augment(x, gen):
    if FLIP:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if CROP_PAD:
        p = CROP_PAD
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        shifts = torch.randint(0, 2 * p + 1, (len(x), 2), generator=gen)
        out = torch.empty_like(x)
        for dy in range(2 * p + 1):
            for dx in range(2 * p + 1):
                idx = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
                out[idx] = padded[idx, :, dy: dy + 32, dx: dx + 32]
        x = out
    return x


def lr_at(progress):
    if SCHEDULE == "linear":
        return LR * (1 - progress)
    if SCHEDULE == "onecycle":
        return LR * (progress / 0.2 if progress < 0.2 else (1 - progress) / 0.8)
    return LR


def train(images, labels, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = to_input(images), torch.from_numpy(labels.astype(np.int64))
    model = Net()
    if CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=NESTEROV,
                          weight_decay=WEIGHT_DECAY)
    steps_per_epoch = len(x) // BATCH_SIZE  # drop the last partial batch: steady BatchNorm statistics
    total, step = EPOCHS * steps_per_epoch, 0
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * BATCH_SIZE: (i + 1) * BATCH_SIZE]
            for group in opt.param_groups:
                group["lr"] = lr_at(step / total)
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        print(f"epoch {epoch + 1} loss {loss.item():.3f} {time.monotonic() - STARTED:.1f}s", flush=True)
    return model


def save(model, out):
    torch.save(model.state_dict(), Path(out) / "model.pt")


def load(out):
    model = Net()
    model.load_state_dict(torch.load(Path(out) / "model.pt"))
    return model.eval()


@torch.no_grad()
def predict(model, images):
    """uint8 images [N, 32, 32, 3] -> logits [N, 10]."""
    if CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    x = to_input(images)
    logits = torch.cat([model(x[i: i + 500]) for i in range(0, len(x), 500)])
    if TTA_FLIP:
        logits = logits + torch.cat([model(x[i: i + 500].flip(3)) for i in range(0, len(x), 500)])
    return logits


def main():
    torch.set_num_threads(int(os.environ.get("ARL_THREADS", 1)))
    data = Path(os.environ["ARL_DATA"])
    model = train(np.load(data / "images.npy"), np.load(data / "labels.npy"), int(os.environ.get("ARL_SEED", 0)))
    save(model, os.environ["ARL_OUT"])


if __name__ == "__main__":
    main()

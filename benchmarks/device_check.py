"""The GPU check of arl's device path: a real search on the GPU, and a Parameter Golf smoke run.

Two steps, because the GPU machine has no network::

    # here, where PyPI and the checkouts are: fill .device/ (ignored by git, about 40 MB)
    python benchmarks/device_check.py prepare --golf-checkout ~/src/parameter-golf
    # there (one H200), from the repository root, carrying .device:
    python3 benchmarks/device_check.py run            # at most 8 minutes
    # anywhere, no GPU: the same two parts on CPU ranks with the stand-in recipes
    python benchmarks/device_check.py run --cpu

``run`` prints, for each part, every trial's label and score and the launcher's overhead:

1. **An Airbench-style search on the GPU**: ``arl run`` of a one-GPU task built here from
   airbench-mini's evaluator and data (the real CIFAR-10 test images of PyPI ``bigbench``,
   8,000 to train, 2,000 held out, decoded by ``prepare`` since the machine cannot
   download them) with a GPU recipe (a small conv net, ``hyp``-style constants at its top),
   ``--devices 0``, the default tuner, 3 trials. Score: training wallclock timed from
   outside; legal only at a mean held-out accuracy >= ``GATE``.
2. **Parameter Golf through the launcher**: ``arl task check`` of the parameter-golf
   adapter with a training budget of ``GOLF_TRAIN_S`` s on one GPU (``--devices 0``), running
   your checkout's ``train_gpt.py`` (the upstream baseline) on synthetic token shards in
   the challenge's format and a SentencePiece tokenizer trained on synthetic text. The
   launcher overhead is the outside wallclock minus the training and evaluation times the
   log states (torchrun start-up, compilation, serialization).

``--cpu`` runs part 1 on ``--devices cpu:1`` with fewer epochs and part 2 with arl's
stand-in ``train_gpt.py`` (tests/checkouts.py) on ``--devices cpu:8``, as a dry run of the
script itself: its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Everything carried to the GPU machine (ignored by git: `echo /.device/ >> .git/info/exclude`).
CARRY = ROOT / ".device"
#: The wheels arl needs that the H200 image lacks (its list: /work/.library/device/KINDS.md).
WHEELS = ("eventsourcing==9.5.6", "msgspec", "duckdb", "watchfiles", "psycopg", "psycopg-binary", "psycopg-pool")
GATE = 0.55
GOLF_TRAIN_S = 45

GPU_TASK = """
name = "airbench-gpu"
description = "Device check: a CIFAR-10 conv net on one GPU as fast as possible (the bigbench test images)."
seeds = [0, 1]
confirm_seeds = [2, 3]
confirm = "within_noise"
protected = []

[needs]
gpus = 1

[run]
command = ["{python}", "train.py"]

[objective]
metric = "train_s"
direction = "min"
resource = "time"
noise_floor = 0.5

[budgets]
train_s = 120
eval_s = 60
wallclock_s = 180
memory_mb = 32768
threads = 4

[gates]
accuracy = GATE
accuracy_seeds = 2

[[surfaces]]
name = "arch"
description = "Widths of the three blocks."
files = ["train.py"]
knobs = [
  { name = "WIDTH", file = "train.py", type = "choice", choices = [32, 48, 64, 96], costs = ["time"], buys = ["accuracy"] },
]

[[surfaces]]
name = "opt"
description = "Epochs, batch size, learning rate."
files = ["train.py"]
knobs = [
  { name = "EPOCHS", file = "train.py", type = "int", min = 4, max = 24, costs = ["time"], buys = ["accuracy"] },
  { name = "BATCH_SIZE", file = "train.py", type = "choice", choices = [256, 512, 1024], buys = ["time"], costs = ["accuracy"] },
  { name = "LR", file = "train.py", type = "float", min = 0.02, max = 0.4, log = true },
]
"""

GPU_RECIPE = '''"""A CIFAR-10 conv net on one GPU (arl's device check): conv-BN-GELU blocks, SGD, flips.

The evaluator's harness calls load(OUT) and predict(model, images) on the held-out images.
"""

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTH = 64          # channels of the first block; the next two have 2x and 4x
EPOCHS = 12
BATCH_SIZE = 512
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.2

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MEAN = torch.tensor([125.3, 123.0, 113.9]).view(1, 3, 1, 1)
STD = torch.tensor([63.0, 62.1, 66.7]).view(1, 3, 1, 1)


def net():
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU(),
                nn.MaxPool2d(2)]
    return nn.Sequential(*block(3, WIDTH), *block(WIDTH, 2 * WIDTH), *block(2 * WIDTH, 4 * WIDTH),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * WIDTH, 10))


def to_input(images):
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return ((x - MEAN) / STD).to(DEVICE)


def train(images, labels, seed):
    torch.manual_seed(seed)
    x, y = to_input(images), torch.from_numpy(labels.astype(np.int64)).to(DEVICE)
    model = net().to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * ((len(x) + BATCH_SIZE - 1) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.25)
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), device=DEVICE)
        for i in range(0, len(x), BATCH_SIZE):
            idx = order[i:i + BATCH_SIZE]
            xb = x[idx]
            flip = torch.rand(len(xb), device=DEVICE) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return model


def save(model, out):
    torch.save(model.state_dict(), Path(out) / "model.pt")


def load(out):
    model = net().to(DEVICE)
    model.load_state_dict(torch.load(Path(out) / "model.pt", map_location=DEVICE))
    return model


@torch.no_grad()
def predict(model, images):
    model.eval()
    x = to_input(images)
    logits = torch.cat([model(x[i:i + 1000]) + model(x[i:i + 1000].flip(3)) for i in range(0, len(x), 1000)])
    return logits.float().cpu()


if __name__ == "__main__":
    data = Path(os.environ["ARL_DATA"])
    model = train(np.load(data / "images.npy"), np.load(data / "labels.npy"), int(os.environ.get("ARL_SEED", 0)))
    save(model, os.environ["ARL_OUT"])
'''


def _arl(*args: str, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arl.runners.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


# -- prepare (here) ----------------------------------------------------------------------------


def prepare(golf_checkout: Path | None) -> None:
    """Fill .device/: the decoded CIFAR-10 images, the wheels the H200 lacks, your golf checkout."""
    from arl.tasks.code import cache_root, prepare_data
    from arl.tasks.registry import resolve

    CARRY.mkdir(exist_ok=True)
    data = prepare_data(resolve("airbench-mini"))  # downloads bigbench once (358 MB) where there is network
    target = CARRY / "cifar"
    if target.exists():
        shutil.rmtree(target)
    for part in ("train", "heldout"):
        shutil.copytree(data.root / part, target / part, symlinks=False)
    (target / ".prepared").write_text((cache_root() / "airbench-mini" / ".prepared").read_text())
    wheels = CARRY / "whl"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                      for a in ("--platform", p)], "-d", str(wheels), *WHEELS], check=True)
    if golf_checkout is not None:
        golf = CARRY / "parameter-golf"
        golf.mkdir(exist_ok=True)
        shutil.copyfile(golf_checkout / "train_gpt.py", golf / "train_gpt.py")
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY}: {size / 1e6:.1f} MB to carry (limit 64 MiB with the working tree)")


# -- run (there) --------------------------------------------------------------------------------


def airbench_search(work: Path, env: dict[str, str], *, cpu: bool, trials: int) -> None:
    """Part 1: a search of a one-GPU Airbench-style task through `arl run --devices`."""
    from arl.ledger import Ledger
    from arl.ledger import events as ev
    from arl.ledger.projections import Projector
    from arl.tasks.registry import BUILTIN

    folder = work / "tasks" / "airbench-gpu"
    (folder / "recipe").mkdir(parents=True)
    for name in ("evaluator.py", "harness.py", "data.py"):
        shutil.copyfile(BUILTIN / "airbench-mini" / name, folder / name)
    manifest = GPU_TASK.replace("GATE", repr(GATE))
    recipe = GPU_RECIPE
    if cpu:  # the same loop on a CPU rank: a smaller net, one epoch, budgets a busy CPU can keep
        manifest = GPU_TASK.replace("GATE", "0.2").replace("train_s = 120", "train_s = 900").replace(
            "eval_s = 60", "eval_s = 300").replace("wallclock_s = 180", "wallclock_s = 1200")
        recipe = GPU_RECIPE.replace("WIDTH = 64 ", "WIDTH = 8 ").replace("EPOCHS = 12", "EPOCHS = 1")
    (folder / "task.toml").write_text(manifest)
    (folder / "recipe" / "train.py").write_text(recipe)
    tomllib.loads((folder / "task.toml").read_text())
    cache = Path(env["ARL_CACHE"]) / "airbench-gpu"
    source = CARRY / "cifar" if (CARRY / "cifar" / ".prepared").is_file() else Path.home() / ".cache/arl/airbench-mini"
    if not (source / ".prepared").is_file():
        sys.exit(f"no decoded CIFAR-10 images in {CARRY / 'cifar'}: run `python benchmarks/device_check.py "
                 "prepare` where there is network, and carry .device")
    shutil.copytree(source, cache, symlinks=False)
    url = f"sqlite:///{work / 'search.db'}"
    devices = "cpu:1" if cpu else "0"
    t0 = time.perf_counter()
    out = _arl("run", str(folder), "--store", url, "--devices", devices, "--trials", str(trials),
               env=env, cwd=work, timeout=420 if not cpu else 3600)
    took = time.perf_counter() - t0
    print(out.stderr.strip())
    print(out.stdout.strip())
    with Ledger.open(url, read_only=True) as ledger:
        state = Projector(ledger, name="device-check").catch_up()
        for row in sorted(state.trials.values(), key=lambda r: r.seq):
            runs = [e for e in ledger.stream(row.trial_id) if isinstance(e, ev.RunFinished)]
            evaluated = [e for e in ledger.stream(row.trial_id) if isinstance(e, ev.TrialEvaluated)]
            acc = evaluated[-1].metrics.get("accuracy") if evaluated else None
            wall = sum(r.wall_s for r in runs)
            print(f"  trial #{row.seq:<2} {row.agent:9} {(row.label.value if row.label else '-'):22} "
                  f"train_s {row.score if row.score is not None else float('nan'):7.2f}  accuracy "
                  f"{acc if acc is not None else float('nan'):.4f}  runs {wall:6.1f} s  {row.hypothesis[:60]}")
    print(f"part 1: `arl run --devices {devices}` took {took:.0f} s in all, exit {out.returncode}")


def golf_smoke(work: Path, env: dict[str, str], *, cpu: bool) -> None:
    """Part 2: the parameter-golf adapter's launcher on one GPU (or 8 CPU ranks) on synthetic shards."""
    from arl.tasks.registry import BUILTIN
    from tests.checkouts import TRAIN_GPT, write_token_shard

    folder = work / "tasks" / "parameter-golf"
    shutil.copytree(BUILTIN / "parameter-golf", folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = (folder / "task.toml").read_text()
    # A smoke run: one GPU (the challenge's 8 are a budget, not a need of the code), a short cap.
    manifest = manifest.replace("[needs]\ngpus = 8", "[needs]\ngpus = 1").replace(
        "train_s = 600", f"train_s = {GOLF_TRAIN_S}").replace("eval_s = 600", "eval_s = 240").replace(
        "wallclock_s = 1500", "wallclock_s = 480")
    (folder / "task.toml").write_text(manifest)
    checkout = work / "golf-checkout"
    checkout.mkdir()
    carried = CARRY / "parameter-golf" / "train_gpt.py"
    if cpu:
        (checkout / "train_gpt.py").write_text(TRAIN_GPT)
    elif carried.is_file():
        shutil.copyfile(carried, checkout / "train_gpt.py")
    else:
        sys.exit(f"no {carried}: run `python benchmarks/device_check.py prepare --golf-checkout PATH`")
    data = work / "golf-data"
    shards = data / "datasets" / "fineweb10B_sp1024"
    write_token_shard(shards / "fineweb_train_000000.bin", 20_000_000 if not cpu else 4096, seed=1)
    write_token_shard(shards / "fineweb_val_000000.bin", 1_048_576 if not cpu else 2048, seed=2)
    (data / "tokenizers").mkdir(parents=True)
    _tokenizer(data / "tokenizers" / "fineweb_1024_bpe", cpu=cpu)
    devices = "cpu:8" if cpu else "0"
    t0 = time.perf_counter()
    out = _arl("task", "check", str(folder), "--recipe-from", str(checkout), "--data", str(data),
               "--devices", devices, env=env, cwd=work, timeout=540)
    took = time.perf_counter() - t0
    print(out.stdout.strip())
    print(out.stderr.strip()[-2000:])
    values = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("pass", "FAIL"):
            try:
                values[parts[1]] = float(parts[2])
            except ValueError:
                pass
    if {"wall_s", "train_s"} <= values.keys():
        overhead = values["wall_s"] - values["train_s"] - values.get("eval_s", 0.0)
        print(f"part 2: launcher overhead {overhead:.1f} s of {values['wall_s']:.1f} s outside wallclock "
              f"(training {values['train_s']:.1f} s, evaluation {values.get('eval_s', 0.0):.1f} s as logged)")
    print(f"part 2: `arl task check --devices {devices}` took {took:.0f} s in all, exit {out.returncode}")


def _tokenizer(prefix: Path, *, cpu: bool) -> None:
    """A 1024-piece SentencePiece BPE model, trained on synthetic words (what the recipe loads)."""
    try:
        import sentencepiece as spm
    except ImportError:
        if not cpu:
            raise
        prefix.with_suffix(".model").write_text("stand-in tokenizer (the stand-in recipe never reads it)\n")
        return
    import random

    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in "aeiou"]
    text = prefix.parent / "corpus.txt"
    with text.open("w") as f:
        for _ in range(20000):
            f.write(" ".join("".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(12)) + "\n")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(prefix), vocab_size=1024, model_type="bpe",
                                   character_coverage=1.0, byte_fallback=True, minloglevel=2)


def run(cpu: bool, trials: int, parts: str) -> None:
    wheels = CARRY / "whl"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if wheels.is_dir() and any(wheels.glob("*.whl")):
        site = Path(tempfile.gettempdir()) / "arl-device-site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(site), *map(str, sorted(wheels.glob("*.whl")))], check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
        sys.path.insert(0, str(site))
    probe = subprocess.run([sys.executable, "-c", "import arl.runners.cli"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        # arl is not installed there: install it from this tree, offline, beside the wheels.
        site = Path(tempfile.gettempdir()) / "arl-device-site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(ROOT)], check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
        sys.path.insert(0, str(site))
        probe = subprocess.run([sys.executable, "-c", "import arl.runners.cli"], env=env, capture_output=True,
                               text=True)
        if probe.returncode != 0:
            sys.exit(f"arl cannot be imported here: {probe.stderr.strip().splitlines()[-1]}; carry its wheels "
                     "(`python benchmarks/device_check.py prepare`)")
    print(f"device check ({'CPU dry run' if cpu else 'GPU'}), {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if not cpu:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        print(f"GPU: {smi.stdout.strip() or smi.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="arl-device-check-") as tmp:
        work = Path(tmp)
        env["ARL_CACHE"], env["ARL_CONFIG"] = str(work / "cache"), ""
        if "1" in parts:
            airbench_search(work, env, cpu=cpu, trials=trials)
        if "2" in parts:
            golf_smoke(work, env, cpu=cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="here: fill .device/ with what the GPU machine cannot download")
    p.add_argument("--golf-checkout", type=Path, help="your checkout of openai/parameter-golf (its train_gpt.py)")
    p = sub.add_parser("run", help="there: the search on the GPU and the Parameter Golf smoke run")
    p.add_argument("--cpu", action="store_true", help="a dry run on CPU ranks with the stand-in recipes")
    p.add_argument("--trials", type=int, default=3, help="trials of the Airbench-style search (default 3)")
    p.add_argument("--parts", default="12", help="which parts to run: 1, 2 or 12 (default)")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.golf_checkout)
    else:
        run(args.cpu, args.trials, args.parts)


if __name__ == "__main__":
    main()

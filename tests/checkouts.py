"""Stand-in checkouts of the paper's three GPU recipes, for end-to-end searches on CPU.

Each writes a folder laid out as the upstream repository is (the files the adapter
copies, the marker files it looks for) and a data folder as the adapter's data
check expects. The recipe files keep the upstream forms where a value lives — the
``os.environ.get`` defaults of Parameter Golf's ``Hyperparameters``, the
``argparse`` defaults of nanochat's ``base_train.py``, airbench's ``hyp = {…}``
dict — and print the upstream log lines the evaluators read, but train nothing:
the score is a smooth function of the hyperparameters (so a tuner has something
to find) computed in a few milliseconds. Parameter Golf and nanochat start their
ranks through ``torch.distributed.run`` and all-reduce over gloo, as upstream
does over NCCL. The values and code are arl's own, not upstream's.

``write_token_shard`` writes a shard in the challenge's binary format (a 256-int32
header: magic 20240520, version 1, token count; then uint16 tokens), used by the
stand-in here and by ``benchmarks/device_check.py`` on a GPU.
"""

from __future__ import annotations

import array
import random
from pathlib import Path

#: The challenge's shard header (fineweb_*.bin).
SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256


def write_token_shard(path: Path, n_tokens: int, *, vocab: int = 1024, seed: int = 0) -> Path:
    rng = random.Random(seed)
    header = array.array("i", [0] * HEADER_INTS)
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, n_tokens
    tokens = array.array("H", (rng.randrange(vocab) for _ in range(n_tokens)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        header.tofile(f)
        tokens.tofile(f)
    return path


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


# -- Parameter Golf -------------------------------------------------------------------------

TRAIN_GPT = '''"""Stand-in for openai/parameter-golf train_gpt.py (arl's tests): the same hyperparameters,
ranks and log lines, no model. Run with torchrun; gloo on CPU, NCCL on GPUs."""

import glob
import math
import os
import time
import zlib

import torch
import torch.distributed as dist


class Hyperparameters:
    # Data paths are set by the launcher; the rest are the knobs of a run.
    data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
    train_files = os.path.join(data_path, "fineweb_train_*.bin")
    val_files = os.path.join(data_path, "fineweb_val_*.bin")
    tokenizer_path = os.environ.get("TOKENIZER_PATH", "./data/tokenizers/fineweb_1024_bpe.model")
    run_id = os.environ.get("RUN_ID", "standin")
    seed = int(os.environ.get("SEED", 1337))

    iterations = int(os.environ.get("ITERATIONS", 20000))
    warmdown_iters = int(os.environ.get("WARMDOWN_ITERS", 1200))
    warmup_steps = int(os.environ.get("WARMUP_STEPS", 20))
    train_batch_tokens = int(os.environ.get("TRAIN_BATCH_TOKENS", 524_288))
    train_seq_len = int(os.environ.get("TRAIN_SEQ_LEN", 1024))
    max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))
    qk_gain_init = float(os.environ.get("QK_GAIN_INIT", 1.5))

    vocab_size = int(os.environ.get("VOCAB_SIZE", 1024))
    num_layers = int(os.environ.get("NUM_LAYERS", 9))
    num_kv_heads = int(os.environ.get("NUM_KV_HEADS", 4))
    model_dim = int(os.environ.get("MODEL_DIM", 512))
    num_heads = int(os.environ.get("NUM_HEADS", 8))
    mlp_mult = int(os.environ.get("MLP_MULT", 2))
    tie_embeddings = bool(int(os.environ.get("TIE_EMBEDDINGS", "1")))
    rope_base = float(os.environ.get("ROPE_BASE", 10000.0))
    logit_softcap = float(os.environ.get("LOGIT_SOFTCAP", 30.0))

    embed_lr = float(os.environ.get("EMBED_LR", 0.6))
    head_lr = float(os.environ.get("HEAD_LR", 0.008))
    tied_embed_lr = float(os.environ.get("TIED_EMBED_LR", 0.05))
    tied_embed_init_std = float(os.environ.get("TIED_EMBED_INIT_STD", 0.005))
    matrix_lr = float(os.environ.get("MATRIX_LR", 0.04))
    scalar_lr = float(os.environ.get("SCALAR_LR", 0.04))
    muon_momentum = float(os.environ.get("MUON_MOMENTUM", 0.95))
    muon_backend_steps = int(os.environ.get("MUON_BACKEND_STEPS", 5))
    muon_momentum_warmup_start = float(os.environ.get("MUON_MOMENTUM_WARMUP_START", 0.85))
    muon_momentum_warmup_steps = int(os.environ.get("MUON_MOMENTUM_WARMUP_STEPS", 500))
    beta1 = float(os.environ.get("BETA1", 0.9))
    beta2 = float(os.environ.get("BETA2", 0.95))
    adam_eps = float(os.environ.get("ADAM_EPS", 1e-8))
    grad_clip_norm = float(os.environ.get("GRAD_CLIP_NORM", 0.0))


INT8_KEEP_FLOAT_MAX_NUMEL = 65_536
INT8_CLIP_PERCENTILE = 99.99984


def quantized_bytes(args):
    """What the int8+zlib artifact of this shape would weigh (no model: a formula)."""
    params = args.num_layers * args.model_dim * args.model_dim * (4 + 2 * args.mlp_mult)
    total = 0
    for name, numel in (("blocks", params), ("tok_emb.weight", args.vocab_size * args.model_dim)):
        t = torch.empty(numel, device="meta")
        if t.numel() <= INT8_KEEP_FLOAT_MAX_NUMEL:
            total += 2 * t.numel()
        else:
            total += int(t.numel() * INT8_CLIP_PERCENTILE / 100)
    return int(total * 0.70)


def read_shard_tokens(pattern):
    header_bytes = 256 * 4
    tokens = 0
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as f:
            header = f.read(header_bytes)
        magic, version, count = (int.from_bytes(header[i:i + 4], "little") for i in (0, 4, 8))
        assert magic == 20240520 and version == 1, f"{path}: not a challenge shard"
        tokens += count
    return tokens


def main():
    args = Hyperparameters()
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    assert 8 % world_size == 0, f"WORLD_SIZE={world_size} must divide 8"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if distributed:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    master = rank == 0
    os.makedirs("logs", exist_ok=True)
    logfile = f"logs/{args.run_id}.txt"

    def log0(msg):
        if master:
            print(msg, flush=True)
            with open(logfile, "a") as f:
                print(msg, file=f)

    t0 = time.perf_counter()
    val_tokens = read_shard_tokens(args.val_files)
    log0(f"val_loader:shards pattern={args.val_files} tokens:{val_tokens}")
    log0(f"world_size:{world_size} grad_accum_steps:{8 // world_size}")
    log0(f"seed:{args.seed}")
    # Every rank adds its share; the all-reduce shows the ranks talk to each other.
    share = torch.tensor([float(rank + 1)])
    if distributed:
        dist.all_reduce(share)
    assert int(share.item()) == world_size * (world_size + 1) // 2
    # A bowl over the knobs: the defaults are near, not at, the bottom.
    bpb = (1.2244
           + 0.010 * math.log(args.matrix_lr / 0.03) ** 2
           + 0.006 * math.log(args.scalar_lr / 0.03) ** 2
           + 0.004 * math.log(args.tied_embed_lr / 0.04) ** 2
           + 0.002 * (args.num_layers - 10) ** 2 / 4
           + 0.20 * (args.muon_momentum - 0.97) ** 2
           + 0.003 * math.log(args.warmdown_iters / 2400) ** 2
           + 0.0001 * (args.seed % 7))
    loss = bpb * math.log(2) * 2.4
    train_ms = int((time.perf_counter() - t0) * 1000) + 1
    steps = 200
    log0(f"step:{steps}/{args.iterations} val_loss:{loss:.4f} val_bpb:{bpb + 0.01:.4f} "
         f"train_time:{train_ms}ms step_avg:{train_ms / steps:.2f}ms")
    code = len(open(__file__).read().encode("utf-8"))
    model = quantized_bytes(args)
    log0(f"Serialized model: {model * 4} bytes")
    log0(f"Code size: {code} bytes")
    log0(f"Total submission size: {model * 4 + code} bytes")
    compressed = len(zlib.compress(b"0" * 1024)) + model
    log0(f"Serialized model int8+zlib: {compressed} bytes")
    log0(f"Total submission size int8+zlib: {compressed + code} bytes")
    log0(f"final_int8_zlib_roundtrip val_loss:{loss:.4f} val_bpb:{bpb:.4f} eval_time:12ms")
    log0(f"final_int8_zlib_roundtrip_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}")
    if distributed:
        dist.barrier()  # no rank leaves while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
'''


def parameter_golf(root: Path) -> tuple[Path, Path]:
    """A stand-in checkout of openai/parameter-golf and its data/ folder (token shards, tokenizer)."""
    checkout = _write(root / "parameter-golf", {"train_gpt.py": TRAIN_GPT, "README.md": "stand-in\n"})
    data = checkout / "data"
    shards = data / "datasets" / "fineweb10B_sp1024"
    write_token_shard(shards / "fineweb_train_000000.bin", 4096, seed=1)
    write_token_shard(shards / "fineweb_val_000000.bin", 2048, seed=2)
    _write(data, {"tokenizers/fineweb_1024_bpe.model": "stand-in tokenizer\n"})
    return checkout, data


# -- nanochat -------------------------------------------------------------------------------

BASE_TRAIN = '''"""Stand-in for karpathy/nanochat scripts/base_train.py (arl's tests): its options, its
depth-built model config and its log lines; writes a "checkpoint" of its settings."""

import argparse
import json
import math
import os
import time

import torch
import torch.distributed as dist

from nanochat.common import get_base_dir, print0

parser = argparse.ArgumentParser(description="Pretrain base model")
parser.add_argument("--run", type=str, default="dummy", help="wandb run name")
parser.add_argument("--depth", type=int, default=20, help="depth of the Transformer model")
parser.add_argument("--aspect-ratio", type=int, default=64, help="model_dim = depth * aspect_ratio")
parser.add_argument("--head-dim", type=int, default=128, help="target head dimension for attention")
parser.add_argument("--window-pattern", type=str, default="SSSL", help="sliding window pattern")
parser.add_argument("--target-param-data-ratio", type=float, default=12, help="data:param ratio")
parser.add_argument("--device-batch-size", type=int, default=32, help="per-device batch size")
parser.add_argument("--total-batch-size", type=int, default=-1, help="total batch size in tokens (-1: auto)")
parser.add_argument("--embedding-lr", type=float, default=0.3, help="learning rate for embedding (Adam)")
parser.add_argument("--unembedding-lr", type=float, default=0.008, help="learning rate for unembedding (Adam)")
parser.add_argument("--weight-decay", type=float, default=0.28, help="weight decay (Muon)")
parser.add_argument("--matrix-lr", type=float, default=0.02, help="learning rate for matrices (Muon)")
parser.add_argument("--scalar-lr", type=float, default=0.5, help="learning rate for scalars")
parser.add_argument("--warmup-steps", type=int, default=40, help="learning-rate warmup steps")
parser.add_argument("--warmdown-ratio", type=float, default=0.65, help="share of steps for the warmdown")
parser.add_argument("--final-lr-frac", type=float, default=0.05, help="final LR as a fraction of the initial")
parser.add_argument("--model-tag", type=str, default=None, help="checkpoint folder name")
args = parser.parse_args()


def build_model_meta(depth):
    model_config_kwargs = dict(
        sequence_len=2048,
        vocab_size=32768,
        n_layer=depth,
        n_head=max(1, depth * args.aspect_ratio // args.head_dim),
        n_embd=depth * args.aspect_ratio,
        window_pattern=args.window_pattern,
    )
    return model_config_kwargs


distributed = "RANK" in os.environ
if distributed:
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
rank = int(os.environ.get("RANK", "0"))
world_size = int(os.environ.get("WORLD_SIZE", "1"))
t0 = time.perf_counter()
model = build_model_meta(args.depth)
print0(f"Model config:\\n{json.dumps(model, indent=2)}")
ones = torch.ones(1)
if distributed:
    dist.all_reduce(ones)
assert int(ones.item()) == world_size
bpb = (0.85 + 0.02 * math.log(args.matrix_lr / 0.025) ** 2 + 0.01 * math.log(args.embedding_lr / 0.35) ** 2
       + 0.002 * abs(args.target_param_data_ratio - 14) + 0.01 * (args.warmdown_ratio - 0.6) ** 2)
print0(f"step 00100/00100 | loss: {bpb * 2.3:.6f} | world_size {world_size}")
print0(f"Minimum validation bpb: {bpb:.6f}")
print0(f"Total training time: {(time.perf_counter() - t0) / 60:.2f}m")
if rank == 0:
    folder = os.path.join(get_base_dir(), "base_checkpoints", args.model_tag or f"d{args.depth}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"model_config": model, "val_bpb": bpb}, f)
if distributed:
    dist.barrier()
    dist.destroy_process_group()
'''

BASE_EVAL = '''"""Stand-in for karpathy/nanochat scripts/base_eval.py (arl's tests): CORE from the checkpoint."""

import argparse
import json
import os
import time

import torch.distributed as dist

from nanochat.common import get_base_dir, print0

parser = argparse.ArgumentParser()
parser.add_argument("--eval", type=str, default="core")
parser.add_argument("--model-tag", type=str, default=None)
args = parser.parse_args()
if "RANK" in os.environ:
    dist.init_process_group(backend="gloo")
    dist.barrier()  # every rank is connected before any rank can finish
folder = os.path.join(get_base_dir(), "base_checkpoints", args.model_tag)
meta = json.load(open(os.path.join(folder, "meta.json")))
core = 0.2 - (meta["val_bpb"] - 0.85)
for task in ("hellaswag_zeroshot", "arc_easy", "piqa"):
    t0 = time.perf_counter()
    print0(f"Evaluating: {task} (0-shot, type: multiple_choice)... accuracy: {core + 0.1:.4f} | "
           f"centered: {core:.4f} | time: {time.perf_counter() - t0 + 0.01:.2f}s")
print0(f"CORE metric: {core:.4f}")
if int(os.environ.get("RANK", "0")) == 0:
    out = os.path.join(get_base_dir(), "base_eval")
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, f"{args.model_tag}.csv"), "w").write(f"Task,Accuracy,Centered\\nCORE,,{core:.4f}\\n")
if "RANK" in os.environ:
    dist.barrier()
    dist.destroy_process_group()
'''

COMMON = '''"""Stand-in for nanochat/common.py: where nanochat keeps its files, and rank-0 printing."""

import os


def get_base_dir():
    return os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")


def print0(s="", **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(s, flush=True, **kwargs)
'''

NANOCHAT_MODULES = ("__init__", "checkpoint_manager", "core_eval", "dataloader", "dataset", "engine",
                    "execution", "flash_attention", "fp8", "gpt", "loss_eval", "optim", "tokenizer")


def nanochat(root: Path) -> tuple[Path, Path]:
    """A stand-in checkout of karpathy/nanochat and a prepared NANOCHAT_BASE_DIR."""
    files = {f"nanochat/{m}.py": f'"""Stand-in for nanochat/{m}.py (arl\'s tests)."""\n' for m in NANOCHAT_MODULES}
    files.update({"nanochat/common.py": COMMON, "scripts/__init__.py": "", "scripts/base_train.py": BASE_TRAIN,
                  "scripts/base_eval.py": BASE_EVAL, "runs/speedrun.sh": "#!/bin/bash\n# stand-in\n",
                  "pyproject.toml": '[project]\nname = "nanochat"\nversion = "0.1.0"\n'})
    checkout = _write(root / "nanochat", files)
    data = _write(root / "nanochat-base", {
        "base_data_climbmix/shard_00000.parquet": "stand-in\n", "tokenizer/tokenizer.pkl": "stand-in\n",
        "eval_bundle/core.yaml": "tasks: []\n", "eval_bundle/eval_meta_data.csv": "Eval Task,Random baseline\n",
        "eval_bundle/eval_data/arc_easy.jsonl": "{}\n",
    })
    return checkout, data


# -- airbench -------------------------------------------------------------------------------

AIRBENCH = '''"""Stand-in for KellerJordan/cifar10-airbench airbench96_faster.py (arl's tests): its hyp dict,
its table and its Mean line; reads the CIFAR-10 folder, trains nothing (and imports no torch: each
of the task's ten seeds per trial starts it anew, and the test runs a search of them)."""

import os
import random
import statistics
import time

hyp = {
    'opt': {
        'train_epochs': 45.0,
        'batch_size': 1024,
        'batch_size_masked': 512,
        'lr': 9.0,
        'momentum': 0.85,
        'weight_decay': 0.012,
        'bias_scaler': 64.0,
        'label_smoothing': 0.2,
        'whiten_bias_epochs': 3,
    },
    'aug': {
        'flip': True,
        'translate': 4,
        'cutout': 12,
    },
    'net': {
        'widths': {
            'block1': 128,
            'block2': 384,
            'block3': 512,
        },
        'depth': 3,
        'scaling_factor': 1/9,
        'tta_level': 2,
    },
}


def main(run):
    t0 = time.perf_counter()
    assert os.path.exists("cifar10"), "no cifar10 folder"
    epochs = hyp['opt']['train_epochs']
    # Wallclock grows with epochs and width (0.3 s a seed at the defaults); accuracy with epochs, a little.
    time.sleep(0.00003 * epochs * hyp['net']['widths']['block2'] / 384)
    acc = 0.965 + 0.0004 * (epochs - 45) - 0.05 * (hyp['opt']['lr'] / 9.0 - 1) ** 2 + 0.0001 * random.random()
    print("| run | epoch | train_loss | train_acc | val_acc | tta_val_acc | total_time_seconds |")
    print(f"| {run:3d} | eval | 0.1000 | 0.9900 | {acc - 0.002:.4f} | {acc:.4f} | {time.perf_counter() - t0:.4f} |")
    return acc


if __name__ == "__main__":
    accs = sorted([main(run)
                         for run in range(200)])
    print("Mean: %.4f    Std: %.4f" % (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0))
'''


def airbench(root: Path) -> tuple[Path, Path]:
    """A stand-in checkout of KellerJordan/cifar10-airbench and a CIFAR-10 folder (train.pt, test.pt)."""
    checkout = _write(root / "cifar10-airbench", {"airbench96_faster.py": AIRBENCH, "airbench/__init__.py": ""})
    data = _write(root / "cifar10", {"train.pt": "stand-in\n", "test.pt": "stand-in\n"})
    return checkout, data

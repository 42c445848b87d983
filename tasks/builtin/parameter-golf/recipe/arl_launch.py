"""arl's launcher for parameter-golf (task code, protected: agents cannot edit it).

Maps arl's environment onto the recipe's and runs train_gpt.py on the trial's GPUs
with torchrun; the recipe's own log (logs/arl.txt) is copied to ARL_OUT/run.log,
where arl's evaluator reads it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

data = Path(os.environ["ARL_DATA"])
out = Path(os.environ["ARL_OUT"])
# sp1024 is the challenge's default export; a data folder with one other variant uses that one.
variants = sorted(p for p in (data / "datasets").glob("fineweb10B_sp*") if p.is_dir())
dataset = next((p for p in variants if p.name == "fineweb10B_sp1024"), variants[0] if variants else None)
if dataset is None:
    sys.exit(f"arl_launch: {data}/datasets holds no fineweb10B_sp* folder")
vocab = dataset.name.removeprefix("fineweb10B_sp")
# One rank per device of the trial: its GPUs, or with `--devices cpu:N` N CPU ranks (a dry run).
gpus = int(os.environ.get("ARL_RANKS") or os.environ.get("ARL_GPUS")
           or len(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")))
env = dict(
    os.environ,
    DATA_PATH=str(dataset),
    TOKENIZER_PATH=str(data / "tokenizers" / f"fineweb_{vocab}_bpe.model"),
    VOCAB_SIZE=vocab,
    SEED=os.environ.get("ARL_SEED", "1337"),
    RUN_ID="arl",
    MAX_WALLCLOCK_SECONDS=os.environ.get("ARL_TRAIN_BUDGET_S", "600"),
)
argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "train_gpt.py"]
code = subprocess.call(argv, env=env)
log = Path("logs") / "arl.txt"
if log.is_file():
    shutil.copyfile(log, out / "run.log")
sys.exit(code)

"""arl's launcher for nanochat-d12 (task code, protected: agents cannot edit it).

Pretrains the depth-12 base model on the trial's GPUs, then runs the CORE
evaluation, both with torchrun. nanochat keeps everything under NANOCHAT_BASE_DIR:
here a folder in the workspace whose data entries link to your prepared data, so
checkpoints land in the trial's workspace. Both logs go to ARL_OUT/run.log.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

data = Path(os.environ["ARL_DATA"])
out = Path(os.environ["ARL_OUT"])
base = Path("nanochat_base").resolve()
base.mkdir(exist_ok=True)
for name in ("base_data_climbmix", "tokenizer", "eval_bundle"):
    if not (base / name).exists():
        (base / name).symlink_to(data / name, target_is_directory=True)
# One rank per device of the trial: its GPUs, or with `--devices cpu:N` N CPU ranks (a dry run).
gpus = int(os.environ.get("ARL_RANKS") or os.environ.get("ARL_GPUS")
           or len(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")))
env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1")
torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
steps = [
    [*torchrun, "-m", "scripts.base_train", "--", "--depth=12", "--run=dummy", "--model-tag=d12"],
    [*torchrun, "-m", "scripts.base_eval", "--", "--eval=core", "--model-tag=d12"],
]
code = 0
with open(out / "run.log", "w") as log:
    for argv in steps:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
        if code != 0:
            break
for csv in (base / "base_eval").glob("*.csv"):
    shutil.copyfile(csv, out / csv.name)
# The data links are this launcher's, not the program's output: gone before the worker looks
# (it fails a trial whose files hold links, and follows none).
for name in ("base_data_climbmix", "tokenizer", "eval_bundle"):
    if (base / name).is_symlink():
        (base / name).unlink()
sys.exit(code)

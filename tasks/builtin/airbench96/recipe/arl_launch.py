"""arl's launcher for airbench96 (task code, protected: agents cannot edit it).

Links your CIFAR-10 folder into ./cifar10 (where the recipe looks), seeds Python's
and torch's generators from ARL_SEED (the recipe draws its data seed from
`random`), runs one training of airbench96_faster.py on the trial's GPU, and keeps
its output in ARL_OUT/run.log. The worker times this whole process from outside.
"""

import os
import subprocess
import sys
from pathlib import Path

data = Path(os.environ["ARL_DATA"])
out = Path(os.environ["ARL_OUT"])
cifar = Path("cifar10")
cifar.mkdir(exist_ok=True)
for entry in data.iterdir():
    if not (cifar / entry.name).exists():
        (cifar / entry.name).symlink_to(entry)
seed = int(os.environ.get("ARL_SEED", "0"))
prelude = (
    f"import random, runpy, sys, torch; random.seed({seed}); torch.manual_seed({seed}); "
    "sys.argv = ['airbench96_faster.py']; runpy.run_path('airbench96_faster.py', run_name='__main__')"
)
proc = subprocess.Popen([sys.executable, "-c", prelude], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
with open(out / "run.log", "w") as log:
    for line in proc.stdout:
        sys.stdout.write(line)
        log.write(line)
code = proc.wait()
# The data links are this launcher's, not the program's output: gone before the worker looks
# (it fails a trial whose files hold links, and follows none).
for entry in cifar.iterdir():
    if entry.is_symlink():
        entry.unlink()
sys.exit(code)

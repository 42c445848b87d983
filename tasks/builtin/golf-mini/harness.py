"""golf-mini evaluation harness: run by the evaluator, in the sandbox, once per call.

    python harness.py MODEL INPUT RESULT

Imports the program's ``train.py`` (cwd is this call's own copy of the program), loads
the trained weights from MODEL with ``train.load`` and writes
``train.log_probs(model, INPUT bytes)`` — one row of 256 log-probabilities per byte —
to ``RESULT/log_probs.npy``. The evaluator calls it twice per seed, on the held-out
text and on a copy altered at secret positions, in separate sandboxes, and compares.

It reports nothing itself: the evaluator computes every number from these arrays.
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch


def main(model_dir: str, data_file: str, result: str) -> None:
    torch.set_num_threads(int(os.environ.get("ARL_THREADS", 1)))
    sys.path.insert(0, os.getcwd())
    import train  # the program under evaluation

    model = train.load(model_dir)
    data = np.fromfile(data_file, dtype=np.uint8)
    lp = train.log_probs(model, data)
    np.save(Path(result) / "log_probs.npy", np.asarray(torch.as_tensor(lp).float().numpy(), np.float32))


if __name__ == "__main__":
    main(*sys.argv[1:4])

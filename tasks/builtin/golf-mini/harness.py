"""golf-mini evaluation harness: run by the evaluator, in the sandbox, with cwd = the program.

    python harness.py OUT VAL RESULT

Imports the program's ``train.py``, loads the trained weights from OUT with
``train.load`` and writes, to the folder RESULT:

* ``log_probs.npy`` — ``train.log_probs(model, val)``: one row of 256 log-probabilities
  per byte of VAL (the evaluator scores them and checks they are normalised);
* ``causal.npz`` — predictions for a probe segment and for the same segment with its
  second half replaced by random bytes (the evaluator checks the first half agrees).

It reports nothing itself: the evaluator computes every number from these arrays.
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch

PROBE = 1024  # bytes in the causality probe


def main(out: str, val: str, result: str) -> None:
    torch.set_num_threads(int(os.environ.get("ARL_THREADS", 1)))
    sys.path.insert(0, os.getcwd())
    import train  # the program under evaluation

    model = train.load(out)
    data = np.fromfile(val, dtype=np.uint8)
    result_dir = Path(result)
    lp = train.log_probs(model, data)
    np.save(result_dir / "log_probs.npy", np.asarray(torch.as_tensor(lp).float().numpy(), np.float32))

    probe = data[len(data) // 2: len(data) // 2 + PROBE].copy()
    changed = probe.copy()
    changed[PROBE // 2:] = np.random.default_rng(0).integers(0, 256, PROBE - PROBE // 2, dtype=np.uint8)
    np.savez(result_dir / "causal.npz",
             same=torch.as_tensor(train.log_probs(model, probe)).float().numpy(),
             changed=torch.as_tensor(train.log_probs(model, changed)).float().numpy())


if __name__ == "__main__":
    main(*sys.argv[1:4])

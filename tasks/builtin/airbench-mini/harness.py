"""airbench-mini evaluation harness: run by the evaluator, in the sandbox, with cwd = the program.

    python harness.py OUT IMAGES RESULT

Imports the program's ``train.py``, loads the trained model from OUT with
``train.load`` and writes ``train.predict(model, images)`` (logits [N, 10]) for the
unlabeled test IMAGES to RESULT. The evaluator, which holds the labels, scores them.
"""

import os
import sys

import numpy as np
import torch


def main(out: str, images: str, result: str) -> None:
    torch.set_num_threads(int(os.environ.get("ARL_THREADS", 1)))
    sys.path.insert(0, os.getcwd())
    import train  # the program under evaluation

    logits = train.predict(train.load(out), np.load(images))
    np.save(result, torch.as_tensor(logits).float().numpy())


if __name__ == "__main__":
    main(*sys.argv[1:4])

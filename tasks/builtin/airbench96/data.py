"""airbench96 data: CIFAR-10 on your disk, as airbench reads it; arl downloads nothing.

The data folder is what airbench96_faster.py calls ``cifar10``: either the tensors it
writes on its first run (``train.pt``, ``test.pt``), or torchvision's extracted
``cifar-10-batches-py/`` (data_batch_1 … data_batch_5, test_batch, batches.meta),
from which the recipe builds those tensors itself without a download.
"""

from __future__ import annotations

from pathlib import Path

from arl.tasks.adapters import expose, user_data
from arl.tasks.manifest import TaskError

TASK = "airbench96"
MISSING_HELP = (
    "put CIFAR-10 in a folder as train.pt + test.pt (written by airbench on a first run) or as torchvision's "
    "cifar-10-batches-py/ (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted), then give it "
    "with --data PATH, ARL_DATA_AIRBENCH96, or data = \"PATH\" under [tasks.airbench96] in arl.toml"
)
TENSORS = ("train.pt", "test.pt")
BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
           "batches.meta")


def prepare(cache: Path) -> None:
    data = user_data(cache, TASK, MISSING_HELP)
    has_tensors = all((data / name).is_file() for name in TENSORS)
    missing = [name for name in BATCHES if not (data / "cifar-10-batches-py" / name).is_file()]
    if not has_tensors and missing:
        raise TaskError(f"data folder {data} has neither train.pt + test.pt nor cifar-10-batches-py/ "
                        f"(missing {missing[0]}); {MISSING_HELP}")
    expose(cache, data)

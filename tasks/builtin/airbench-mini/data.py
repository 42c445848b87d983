"""airbench-mini data: the real CIFAR-10 test images shipped in PyPI ``bigbench==1.0.0``.

``prepare(cache)`` fills::

    cache/train/images.npy, labels.npy   8,000 images uint8 [N, 32, 32, 3], labels uint8 [N]
    cache/heldout/images.npy, labels.npy 2,000 images (the evaluator gives the recipe only images)

BIG-bench stores each image as 32 lines of 32 ``#rrggbb`` tokens; its examples are
sorted by class, so they are shuffled with a fixed seed before the split.

``pip download`` cannot fetch this sdist (its metadata declares a direct-URL
dependency, which pip refuses), so the archive's URL and sha256 are read from the
registry's simple index (PEP 691 JSON) and the file is fetched directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from arl.tasks.manifest import TaskError

SDIST = "bigbench-1.0.0.tar.gz"
SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
MEMBER = "bigbench/benchmark_tasks/cifar10_classification/hex/task.json"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLIT_SEED = 20240601
N_TRAIN, N_TEST = 8000, 2000
LAYOUT = "1"

MISSING_HELP = (
    f"airbench-mini needs {SDIST} (358 MB, sha256 {SHA256[:12]}…) from PyPI project bigbench: "
    "download it where there is network (https://pypi.org/simple/bigbench/) and put it into "
    "$ARL_CACHE/airbench-mini/ (default ~/.cache/arl/airbench-mini/)"
)


def prepare(cache: Path) -> None:
    """Download (once), decode, shuffle and split; fast no-op when already prepared."""
    cache = Path(cache)
    marker = cache / ".prepared"
    if marker.is_file() and marker.read_text() == LAYOUT:
        return
    cache.mkdir(parents=True, exist_ok=True)
    local = cache / SDIST
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        sdist = local if local.is_file() else _download(Path(tmp) / SDIST)
        images, labels = _decode(_member(sdist))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    images, labels = images[order], labels[order]
    parts = {"train": slice(0, N_TRAIN), "heldout": slice(N_TRAIN, N_TRAIN + N_TEST)}
    for folder, part in parts.items():
        (cache / folder).mkdir(exist_ok=True)
        np.save(cache / folder / "images.npy", images[part])
        np.save(cache / folder / "labels.npy", labels[part])
    marker.write_text(LAYOUT)


def _index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")


def _download(target: Path) -> Path:
    try:
        request = urllib.request.Request(
            f"{_index_url()}/bigbench/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
        url = next(f["url"] for f in files if f["filename"] == SDIST)
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=600) as response, open(target, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError, KeyError, StopIteration) as e:
        raise TaskError(f"cannot download {SDIST} ({e or type(e).__name__}); {MISSING_HELP}") from None
    if digest.hexdigest() != SHA256:
        raise TaskError(f"downloaded {SDIST} has the wrong sha256; {MISSING_HELP}")
    return target


def _member(sdist: Path) -> bytes:
    try:
        with tarfile.open(sdist, "r|gz") as tf:  # streaming: the archive is 358 MB
            for member in tf:
                if member.name.endswith(MEMBER):
                    return tf.extractfile(member).read()
    except (OSError, tarfile.TarError) as e:
        raise TaskError(f"{sdist} is not a readable archive ({e}); {MISSING_HELP}") from None
    raise TaskError(f"{sdist} has no {MEMBER}; {MISSING_HELP}")


def _decode(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    examples = json.loads(raw)["examples"]
    images = np.empty((len(examples), 32, 32, 3), np.uint8)
    labels = np.empty(len(examples), np.uint8)
    for i, ex in enumerate(examples):
        hexdigits = "".join(ex["input"].split()).replace("#", "")
        pixels = np.frombuffer(bytes.fromhex(hexdigits), np.uint8)
        if pixels.size != 32 * 32 * 3:
            raise TaskError(f"example {i} of {MEMBER} is not a 32x32 RGB image; {MISSING_HELP}")
        images[i] = pixels.reshape(32, 32, 3)
        labels[i] = CLASSES.index(max(ex["target_scores"], key=ex["target_scores"].get))
    return images, labels

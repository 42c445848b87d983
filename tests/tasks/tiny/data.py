"""Points on y = 3x + noise: 200 to train on, 200 held out."""

import json
import random
from pathlib import Path

MISSING_HELP = "the tiny task makes its own data; check that ARL_CACHE is writable"


def prepare(cache: Path) -> None:
    marker = cache / "ready"
    if marker.exists():
        return
    rng = random.Random(42)
    for part, n in (("train", 200), ("heldout", 200)):
        (cache / part).mkdir(parents=True, exist_ok=True)
        points = [(x, 3 * x + rng.gauss(0, 0.5)) for x in (rng.uniform(-2, 2) for _ in range(n))]
        name = "train.json" if part == "train" else "test.json"
        (cache / part / name).write_text(json.dumps(points))
    marker.write_text("ok")

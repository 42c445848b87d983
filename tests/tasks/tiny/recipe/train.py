"""Fit y = w·x by least squares, then write the slope to ARL_OUT/model.json."""

import json
import math
import os
import random
import time

from data_spec import TRAIN_FILE

SHRINK = 0.8        # multiplies the fitted slope (1.0 is the honest fit)
NOISE = 0.01        # seed-dependent jitter on the slope
MODE = "ok"         # ok | crash | oom | nan | cheat
SLEEP_S = 0.0       # pretend training takes this long
EVAL_SLEEP_S = 0.0  # pretend prediction takes this long
PAD_BYTES = 0       # bytes of padding written into the artifact


def predict(w, xs):
    time.sleep(EVAL_SLEEP_S)
    return [w * x for x in xs]


def main():
    seed = int(os.environ["ARL_SEED"])
    out = os.environ["ARL_OUT"]
    points = json.load(open(os.path.join(os.environ["ARL_DATA"], TRAIN_FILE)))
    if MODE == "crash":
        raise ValueError("boom: the learning rate is negative")
    if MODE == "oom":
        hog = bytearray(600 * 1024 * 1024)  # over the task's 200 MB limit
        hog[::4096] = b"x" * len(hog[::4096])
        time.sleep(5)
    if MODE == "cheat":
        # Try to peek at held-out data, rewrite the evaluator, and report a fake score.
        cache = os.path.dirname(os.environ["ARL_DATA"])
        for attempt in (os.path.join(cache, "heldout", "test.json"),):
            try:
                print("peeked:", open(attempt).read()[:20])
            except OSError as e:
                print("cannot peek:", e)
        try:
            open(os.environ["CHEAT_EVALUATOR"], "a").write("\nraise SystemExit('pwned')\n")
        except (OSError, KeyError) as e:
            print("cannot rewrite evaluator:", e)
        json.dump({"mse": 0.0, "train_s": 0.0}, open(os.path.join(out, "score.json"), "w"))
        print("mse 0.0000  (trust me)")
    time.sleep(SLEEP_S)
    w = sum(x * y for x, y in points) / sum(x * x for x, _ in points)
    w = w * SHRINK + random.Random(seed).gauss(0, NOISE)
    if MODE == "nan":
        w = math.nan
    json.dump({"w": w, "pad": "x" * PAD_BYTES}, open(os.path.join(out, "model.json"), "w"))
    print(f"fitted w={w:.4f}")


if __name__ == "__main__":
    main()

"""parameter-golf data: the challenge's FineWeb export on your disk; arl downloads nothing.

The data folder is the ``data/`` folder of your checkout after the challenge's own
download script has run (``python3 data/cached_challenge_fineweb.py --variant sp1024``)::

    datasets/fineweb10B_sp1024/fineweb_train_*.bin   training shards
    datasets/fineweb10B_sp1024/fineweb_val_*.bin     the fixed validation split (first 50k documents)
    tokenizers/fineweb_1024_bpe.model                the SentencePiece tokenizer

The recipe reads the validation shards itself (it computes val_bpb), so nothing is
held out from it here; ``declared:no_val_in_training`` records that rule.
"""

from __future__ import annotations

from pathlib import Path

from arl.tasks.adapters import expose, require_files, user_data

TASK = "parameter-golf"
MISSING_HELP = (
    "run `python3 data/cached_challenge_fineweb.py --variant sp1024` in your checkout of "
    "openai/parameter-golf, then give its data/ folder with --data PATH, ARL_DATA_PARAMETER_GOLF, "
    "or data = \"PATH\" under [tasks.parameter-golf] in arl.toml"
)
LAYOUT = ("datasets/fineweb10B_sp*/fineweb_train_*.bin", "datasets/fineweb10B_sp*/fineweb_val_*.bin",
          "tokenizers/fineweb_*_bpe.model")


def prepare(cache: Path) -> None:
    data = user_data(cache, TASK, MISSING_HELP)
    require_files(data, LAYOUT, MISSING_HELP)
    expose(cache, data)

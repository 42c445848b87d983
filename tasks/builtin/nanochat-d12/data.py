"""nanochat-d12 data: your prepared NANOCHAT_BASE_DIR; arl downloads nothing.

Prepare it once with your checkout, as runs/speedrun.sh does
(``export NANOCHAT_BASE_DIR=PATH``; ``python -m nanochat.dataset -n 170``;
``python -m scripts.tok_train``; run ``scripts/base_eval.py`` once, or unzip
eval_bundle.zip there)::

    base_data_climbmix/shard_*.parquet     pretraining shards (the last one is validation)
    tokenizer/tokenizer.pkl                the trained tokenizer (+ token_bytes.pt)
    eval_bundle/core.yaml                  the CORE tasks
    eval_bundle/eval_meta_data.csv
    eval_bundle/eval_data/

Runs never write here: the launcher links these into a base folder in the trial's workspace.
"""

from __future__ import annotations

from pathlib import Path

from arl.tasks.adapters import expose, require_files, user_data
from arl.tasks.manifest import TaskError

TASK = "nanochat-d12"
MISSING_HELP = (
    "prepare a NANOCHAT_BASE_DIR with your checkout of karpathy/nanochat (python -m nanochat.dataset -n 170; "
    "python -m scripts.tok_train; the CORE eval_bundle), then give it with --data PATH, ARL_DATA_NANOCHAT_D12, "
    "or data = \"PATH\" under [tasks.nanochat-d12] in arl.toml"
)
LAYOUT = ("base_data_climbmix/shard_*.parquet", "tokenizer/tokenizer.pkl", "eval_bundle/core.yaml",
          "eval_bundle/eval_meta_data.csv")


def prepare(cache: Path) -> None:
    data = user_data(cache, TASK, MISSING_HELP)
    require_files(data, LAYOUT, MISSING_HELP)
    if not (data / "eval_bundle" / "eval_data").is_dir():
        raise TaskError(f"data folder {data} has no eval_bundle/eval_data/; {MISSING_HELP}")
    expose(cache, data)

"""The paper's three GPU tasks as adapters, and `arl evaluate` over runs made elsewhere.

No GPU runs here: the Parameter Golf records' real logs are judged offline, and each
adapter is bound to a checkout layout and data folder built by the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arl.ledger.events import Label
from arl.runners.evaluate import evaluate_folder
from arl.runners.taskcheck import check_task
from arl.tasks import legality
from arl.tasks.adapters import bind, device_sets, parse_devices, recorded_paths
from arl.tasks.manifest import TaskError
from arl.tasks.registry import resolve
from tests.conftest import shared_path
from tests.standins import knob_source


def pin_violation(task, program):
    """The pinned-lines check of legality.preflight as (label, reason), None when it passes."""
    found = next(f for f in legality.preflight(task, program, program) if f.check == "pinned")
    return None if found.passed else (found.label, found.detail)

ROOT = Path(__file__).resolve().parents[1]
RECORDS = shared_path("parameter-golf-records", "track_10min_16mb")
needs_records = pytest.mark.shared("parameter-golf-records", "track_10min_16mb")

#: record -> (val_bpb the record claims, largest artifact its logs state, label arl gives).
#: Claims are submission.json's val_bpb (mean_val_bpb where that is the key); exceptions noted below.
EXPECTED: dict[str, tuple[float | None, int, str]] = {
    "2026-03-17_LoRA_TTT": (1.1929, 15884843, "train_budget_overrun"),  # train_v1 ran 2400 s on 2 GPUs
    "2026-03-17_NaiveBaseline": (1.2243657, 15863489, "keep"),
    "2026-03-18_FP16Embed_WD3600": (1.21972502, 15897173, "keep"),
    "2026-03-18_LongContextSeq2048": (1.20576485, 15867270, "keep"),
    "2026-03-18_LowerLR": (1.22296644, 15854246, "keep"),
    "2026-03-19_10L_MixedPrecision": (1.21474500, 15928974, "keep"),
    "2026-03-19_MLP3x_QAT_Int6_SlidingWindow": (1.15015359, 15693599, "keep"),
    "2026-03-19_MixedQuant_Int6Int8_SlidingWindow": (1.16301431, 15353490, "keep"),
    "2026-03-19_Seq2048_FP16Emb_TunedLR": (1.15861696, 15558319, "keep"),
    "2026-03-19_SlidingWindowEval": (1.19250007, 15874829, "keep"),
    "2026-03-19_SlidingWindow_FP16Emb_10L_MuonWD_OvertoneInit": (1.17475315, 15397085, "keep"),
    "2026-03-19_TrainingOptSeq4096": (1.20143417, 15887250, "keep"),
    "2026-03-19_WarmdownQuantization": (1.15744040, 15977717, "keep"),
    # No submission.json: not a record claim; its artifact is over the cap.
    "2026-03-19_int6_STE_QAT__MLP_bigram__U_Net": (None, 16186500, "size_violation"),
    "2026-03-19_smeargate_orthoinit_muonwd": (1.1556, 15878809, "keep"),
    # submission.json has no val_bpb: its "val_loss" field holds 1.14276, the 3-seed mean bpb per its blurb.
    "2026-03-20_10L_Int5MLP_MuonWD04_SWA50": (1.14276, 15965978, "keep"),
    "2026-03-20_11L_EfficientPartialXSA_FA3_SWA120": (1.13071416, 15892986, "keep"),
    "2026-03-20_11L_XSA4_EMA_Int6_MLP3x_WD04_1.1271": (1.12707468, 15745973, "keep"),
    "2026-03-20_Int6_MLP3x_SmearGate_BigramHash_MuonWD_SWA": (1.14581692, 15944907, "keep"),
    "2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248": (1.12484502, 15639340, "keep"),
    "2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233": (1.12278022, 15586805, "keep"),
    "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon": (1.1194, 15990006, "keep"),
    "2026-03-24_74M_Ternary_UNet_FP8_10L_8192BPE_YaRN_NeoMuon": (1.1565, 15995705, "keep"),
    "2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072": (1.11473509, 15984850, "keep"),
    "2026-03-29_Loader_FullGPTQ_XSA11_BigramHash2816": (1.1122, 15983626, "keep"),
    "2026-03-31_ParallelResiduals_MiniDepthRecurrence": (1.10625353, 15946657, "keep"),
}
#: Records whose logs do not reproduce the claim, and why (checked below, not skipped).
NOT_REPRODUCED = {
    # The folder's one log is another run (12,329 steps, int8+zlib) than the 3 seeds the README claims.
    "2026-03-19_MLP3x_QAT_Int6_SlidingWindow",
    # submission.json claims seed 3's value alone; the README's 3-seed mean is 1.1598.
    "2026-03-19_Seq2048_FP16Emb_TunedLR",
}


def _claim(folder: Path) -> float | None:
    submission = next(iter(sorted(folder.glob("submission*.json"))), None)
    if submission is None:
        return None
    claim = json.loads(submission.read_text())
    value = claim.get("val_bpb", claim.get("mean_val_bpb"))
    return None if value is None else float(value)


@needs_records
def test_every_record_folder_is_in_the_table():
    assert sorted(p.name for p in RECORDS.iterdir() if p.is_dir()) == sorted(EXPECTED)


@needs_records
@pytest.mark.parametrize("record", sorted(EXPECTED))
def test_arl_evaluate_reproduces_each_record(record):
    claimed, artifact, label = EXPECTED[record]
    folder = RECORDS / record
    if claimed is not None and record != "2026-03-20_10L_Int5MLP_MuonWD04_SWA50":
        assert _claim(folder) == pytest.approx(claimed, abs=1e-9)  # the table says what the record says
    result = evaluate_folder("parameter-golf", folder)
    checks = {c.name: c for c in result.checks}
    assert checks["final_metric"].passed, checks["final_metric"].detail
    assert result.label == label, result.reason
    assert checks["artifact_bytes"].value == artifact
    assert checks["artifact_bytes"].passed == (artifact <= 16_000_000)
    for run in result.runs:  # every log's own size is reported, as stated in that log
        if len(result.runs) > 1:
            assert run.metrics["artifact_bytes"] <= artifact and run.score is not None
    assert checks["train_s"].passed == (label != "train_budget_overrun")
    # The score is the mean over the folder's runs (byte-identical copies counted once).
    assert result.score == pytest.approx(sum(r.score if r.score is not None else result.score
                                             for r in result.runs) / len(result.runs), abs=1e-12)
    if claimed is not None and record not in NOT_REPRODUCED:
        assert abs(result.score - claimed) <= 0.001, (result.score, claimed)
    declared = [c for c in result.checks if c.name.startswith("declared:")]
    assert {c.name for c in declared} >= {"declared:score_first_ttt", "declared:no_val_in_training"}
    assert all(c.passed and c.value is None and "not checked by code" in c.detail for c in declared)


@needs_records
def test_the_records_that_do_not_reproduce_say_why():
    mlp3x = evaluate_folder("parameter-golf", RECORDS / "2026-03-19_MLP3x_QAT_Int6_SlidingWindow")
    assert mlp3x.score == pytest.approx(1.16660881) and abs(mlp3x.score - 1.15015359) > 0.01
    seq = evaluate_folder("parameter-golf", RECORDS / "2026-03-19_Seq2048_FP16Emb_TunedLR")
    by_seed = {s.seed: s.score for s in seq.seeds}
    assert by_seed[3] == pytest.approx(1.15861696, abs=1e-8)  # the claim is one seed's
    assert seq.score == pytest.approx(1.1598, abs=1e-4)  # the README's 3-seed mean


@needs_records
def test_identical_logs_count_once_and_the_seed_comes_from_the_log():
    result = evaluate_folder("parameter-golf", RECORDS / "2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248")
    assert [(r.path, r.seed) for r in result.runs] == [
        ("train.log", 2025), ("train_seed1337.log", 1337), ("train_seed42.log", 42)]
    assert result.runs[0].copies == ["train_seed2025.log"]
    assert [s.seed for s in result.seeds] == [42, 1337, 2025]


def _baseline_log() -> str:
    return (RECORDS / "2026-03-17_NaiveBaseline" / "train.log").read_text()


@needs_records
def test_a_log_without_the_final_metric_is_a_crash_that_says_so(tmp_path):
    text = _baseline_log()
    cut = text[: text.index("final_int8_zlib_roundtrip val_loss")]  # killed during the final evaluation
    (tmp_path / "train.log").write_text(cut)
    result = evaluate_folder("parameter-golf", tmp_path)
    final = next(c for c in result.checks if c.name == "final_metric")
    assert not final.passed and "no evaluation after training ended" in final.detail
    assert result.label == "crash" and result.score is None and "final_metric" in result.reason


@needs_records
def test_over_time_and_over_size_logs_fail_those_checks(tmp_path):
    text = _baseline_log()
    late = tmp_path / "late"
    late.mkdir()
    (late / "train.log").write_text(text.replace("train_time:600038ms step:13780", "train_time:612000ms step:13780"))
    result = evaluate_folder("parameter-golf", late)
    train = next(c for c in result.checks if c.name == "train_s")
    assert not train.passed and train.value == 612.0 and result.label == "train_budget_overrun"
    big = tmp_path / "big"
    big.mkdir()
    (big / "train.log").write_text(text.replace("Total submission size int8+zlib: 15863489 bytes",
                                                "Total submission size int8+zlib: 16000001 bytes"))
    result = evaluate_folder("parameter-golf", big)
    size = next(c for c in result.checks if c.name == "artifact_bytes")
    assert not size.passed and size.value == 16000001 and result.label == "size_violation"


def _arl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arl.runners.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


@needs_records
def test_arl_evaluate_json_has_exactly_the_documented_shape():
    out = _arl("evaluate", "parameter-golf", str(RECORDS / "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"),
               "--format", "json")
    assert out.returncode == 3, out.stderr  # legal, but the score is the recipe's own claim
    result = json.loads(out.stdout)
    assert set(result) == {"score", "verified", "seeds", "checks", "label"} and result["verified"] is False
    assert result["label"] == "keep" and abs(result["score"] - 1.1194) < 0.001
    assert [s["seed"] for s in result["seeds"]] == [42, 1337, 2025]
    assert all(set(s) == {"seed", "score"} for s in result["seeds"])
    assert all(set(c) == {"name", "value", "limit", "passed"} for c in result["checks"])
    size = next(c for c in result["checks"] if c["name"] == "artifact_bytes")
    assert size == {"name": "artifact_bytes", "value": 15990006.0, "limit": 16000000.0, "passed": True}


@needs_records
def test_arl_evaluate_table_and_exit_codes():
    ok = _arl("evaluate", "parameter-golf", str(RECORDS / "2026-03-17_NaiveBaseline"))
    assert ok.returncode == 3, ok.stderr  # legal but unverified: read from the recipe's log
    assert "val_bpb = 1.2243657" in ok.stdout and "label: keep" in ok.stdout
    assert "from the recipe's log" in ok.stdout
    assert "declared declared:score_first_ttt" in ok.stdout
    over = _arl("evaluate", "parameter-golf", str(RECORDS / "2026-03-19_int6_STE_QAT__MLP_bigram__U_Net"))
    assert over.returncode == 1 and "label: size_violation" in over.stdout and "16186500" in over.stdout
    missing = _arl("evaluate", "parameter-golf", str(RECORDS / "no-such-record"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such folder" in missing.stderr


def test_arl_evaluate_on_a_folder_without_logs_is_one_line(tmp_path):
    out = _arl("evaluate", "parameter-golf", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "holds no run logs" in out.stderr


# -- adapters bound to checkouts and data the test builds ------------------------------------------

NANOCHAT_FILES = (
    "scripts/base_eval.py", "nanochat/__init__.py", "nanochat/checkpoint_manager.py", "nanochat/common.py",
    "nanochat/core_eval.py", "nanochat/dataloader.py", "nanochat/dataset.py", "nanochat/engine.py",
    "nanochat/execution.py", "nanochat/flash_attention.py", "nanochat/fp8.py", "nanochat/gpt.py",
    "nanochat/loss_eval.py", "nanochat/optim.py", "nanochat/tokenizer.py", "runs/speedrun.sh", "pyproject.toml",
)
BASE_TRAIN = '''def build_model_meta(depth):
    config = GPTConfig(
        n_layer=depth, n_head=6, n_kv_head=6, n_embd=768,
    )
    return GPT(config)

model = build_model_meta(args.depth) # 1) Build on meta device
'''


def _touch(root: Path, name: str, text: str = "") -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def _knobs(task: str, file: str) -> str:
    """Every knob the adapter declares in ``file`` (bind refuses a checkout lacking one)."""
    return knob_source(resolve(task), file)


def _layout(task: str, root: Path) -> tuple[Path, Path]:
    """A minimal checkout and data folder with the names the adapter expects."""
    checkout, data = root / "checkout", root / "data"
    if task == "parameter-golf":
        _touch(checkout, "train_gpt.py", _knobs("parameter-golf", "train_gpt.py") + "print('train')\n")
        for name in ("datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
                     "datasets/fineweb10B_sp1024/fineweb_val_000000.bin", "tokenizers/fineweb_1024_bpe.model"):
            _touch(data, name)
    elif task == "nanochat-d12":
        for name in NANOCHAT_FILES:
            _touch(checkout, name, "# nanochat\n")
        _touch(checkout, "scripts/base_train.py", _knobs("nanochat-d12", "scripts/base_train.py") + BASE_TRAIN)
        for name in ("base_data_climbmix/shard_00000.parquet", "tokenizer/tokenizer.pkl", "eval_bundle/core.yaml",
                     "eval_bundle/eval_meta_data.csv", "eval_bundle/eval_data/arc.jsonl"):
            _touch(data, name)
    else:
        _touch(checkout, "airbench/__init__.py")
        _touch(checkout, "airbench96_faster.py", _knobs("airbench96", "airbench96_faster.py")
               + "accs = torch.tensor([main(run)\n    for run in range(200)])\n")
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                     "test_batch", "batches.meta"):
            _touch(data, f"cifar-10-batches-py/{name}")
    return checkout, data


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ARL_CONFIG", "")
    for name in list(os.environ):
        if name.startswith(("ARL_RECIPE_FROM_", "ARL_DATA_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


@pytest.mark.parametrize("task, program", [
    ("parameter-golf", {"train_gpt.py", "arl_launch.py"}),
    ("nanochat-d12", {"scripts/base_train.py", "nanochat/gpt.py", "arl_launch.py"}),
    ("airbench96", {"airbench96_faster.py", "arl_launch.py"}),
])
def test_each_adapter_checks_against_the_layout_it_expects(task, program, tmp_path, cache):
    checkout, data = _layout(task, tmp_path)
    checked, report = check_task(task, run=False, recipe_from=str(checkout), data=str(data))
    files = {p.relative_to(checked.recipe_dir).as_posix() for p in checked.recipe_dir.rglob("*") if p.is_file()}
    assert program <= files and checked.recipe_dir.is_relative_to(cache)
    assert (cache / task / "train").resolve() == data.resolve()  # what the recipe gets as ARL_DATA
    assert checked.is_protected("arl_launch.py") and checked.needs.gpus == resolve(task).needs.gpus
    if task == "airbench96":  # the one adapted line: a trial seed is one training run
        text = (checked.recipe_dir / "airbench96_faster.py").read_text()
        assert "range(1)])" in text and "range(200)" not in text


@pytest.mark.parametrize("task", ["parameter-golf", "nanochat-d12", "airbench96"])
def test_a_missing_checkout_or_data_is_one_clear_line(task, tmp_path, cache):
    checkout, data = _layout(task, tmp_path)
    env_task = task.upper().replace("-", "_")
    cases = [
        ((), f"give --recipe-from PATH, set ARL_RECIPE_FROM_{env_task}"),
        (("--recipe-from", str(tmp_path / "nowhere")), "no such folder; it must be your checkout"),
        (("--recipe-from", str(checkout)), f"none was given"),
        (("--recipe-from", str(checkout), "--data", str(tmp_path / "nodata")), "no such folder"),
        (("--recipe-from", str(checkout), "--data", str(tmp_path)), f"data folder {tmp_path} has n"),  # wrong folder
    ]
    env = {"ARL_CACHE": str(cache), "ARL_CONFIG": ""}
    for args, message in cases:
        out = _arl("task", "check", task, "--no-run", *args, env=env)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert f"ARL_{'DATA' if args else 'RECIPE_FROM'}_{env_task}" in out.stderr or "no such folder" in out.stderr
    ok = _arl("task", "check", task, "--no-run", "--recipe-from", str(checkout), "--data", str(data), env=env)
    assert ok.returncode == 0 and "manifest, evaluator and data ok" in ok.stdout, ok.stderr


def test_a_checkout_missing_a_recipe_file_or_the_adapted_line_is_named(tmp_path, cache):
    checkout, _ = _layout("nanochat-d12", tmp_path)
    (checkout / "nanochat" / "gpt.py").unlink()
    with pytest.raises(TaskError, match=r"is not a checkout of https://github.com/karpathy/nanochat: it has no nanochat/gpt.py"):
        bind(resolve("nanochat-d12"), recipe_from=checkout)
    bench, _ = _layout("airbench96", tmp_path / "bench")
    (bench / "airbench96_faster.py").write_text("for run in range(50)])\n")
    with pytest.raises(TaskError, match=r"arl adapts the line `for run in range\(200\)\]\)`.*occurs 0 times"):
        bind(resolve("airbench96"), recipe_from=bench)
    with pytest.raises(TaskError, match="only for adapter tasks"):
        bind(resolve("golf-mini"), recipe_from=bench)


def test_paths_come_from_the_environment_or_the_config_file(tmp_path, cache, monkeypatch):
    checkout, data = _layout("airbench96", tmp_path)
    monkeypatch.setenv("ARL_RECIPE_FROM_AIRBENCH96", str(checkout))
    monkeypatch.setenv("ARL_DATA_AIRBENCH96", str(data))
    assert bind(resolve("airbench96")).data_root == str(data.resolve())
    monkeypatch.delenv("ARL_RECIPE_FROM_AIRBENCH96")
    monkeypatch.delenv("ARL_DATA_AIRBENCH96")
    config = tmp_path / "conf" / "arl.toml"
    config.parent.mkdir()
    config.write_text('[tasks.airbench96]\nrecipe_from = "../checkout"\ndata = "../data"\n')
    monkeypatch.setenv("ARL_CONFIG", str(config))
    bound = bind(resolve("airbench96"))  # relative to the config file
    assert (bound.recipe_dir / "airbench96_faster.py").is_file() and bound.data_root == str(data.resolve())
    # A worker finds them in what the search recorded, even without either.
    monkeypatch.setenv("ARL_CONFIG", "")
    assert recorded_paths(bound) == {"recipe_from": str(checkout.resolve()), "data": str(data.resolve())}
    again = bind(resolve("airbench96"), recorded=recorded_paths(bound), need_recipe=False)
    assert again.recipe_dir == bound.recipe_dir  # same content, same materialized program
    assert bind(resolve("airbench96"), need_recipe=False).recipe_dir == resolve("airbench96").recipe_dir


# -- nanochat: the depth is the task -----------------------------------------------------------------


def _program(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_an_edit_changing_nanochats_depth_is_illegal(tmp_path, cache):
    checkout, data = _layout("nanochat-d12", tmp_path)
    task = bind(resolve("nanochat-d12"), recipe_from=checkout, data=data)
    program = _program(task.recipe_dir)
    assert pin_violation(task, program) is None
    for old, new in [("build_model_meta(args.depth)", "build_model_meta(16)"),
                     ("n_layer=depth,", "n_layer=16,")]:
        edited = dict(program)
        edited["scripts/base_train.py"] = program["scripts/base_train.py"].replace(old.encode(), new.encode())
        label, reason = pin_violation(task, edited)
        assert label is Label.ILLEGAL_EDIT and "depth is fixed at 12" in reason


def _chat_log(layers: int, core: float) -> str:
    return (f'Model config:\n{{\n  "sequence_len": 2048,\n  "n_layer": {layers},\n  "n_head": 6\n}}\n'
            "Step 02000 | CORE metric: 0.1000\nTotal training time: 60.00m\n"
            "Evaluating: hellaswag (0-shot, type: multiple_choice)... accuracy: 0.3000 | centered: 0.0600 | time: 40.00s\n"
            f"CORE metric: {core:.4f}\n")


def test_nanochat_is_scored_by_the_final_core_and_judged_by_the_logged_depth(tmp_path):
    legal = tmp_path / "legal"
    legal.mkdir()
    (legal / "run.log").write_text(_chat_log(12, 0.2210))
    result = evaluate_folder("nanochat-d12", legal)
    checks = {c.name: c for c in result.checks}
    assert result.label == "keep" and result.score == pytest.approx(0.2210)  # not the in-training 0.1
    assert checks["run_s"].value == pytest.approx(3640.0) and checks["eval_s"].value == pytest.approx(40.0)
    deeper = tmp_path / "deeper"
    deeper.mkdir()
    (deeper / "run.log").write_text(_chat_log(16, 0.2600))
    result = evaluate_folder("nanochat-d12", deeper)
    assert result.label == "illegal_edit" and "n_layer 16" in result.reason


# -- airbench96: outside wallclock, 10-seed accuracy gate ------------------------------------------------


def _bench_log(acc: float, seconds: float) -> str:
    head = "|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |"
    row = f"|          |   eval  |      0.1000  |     0.9900  |   0.9580  |       {acc:.4f}  |             {seconds:.4f}  |"
    return f"{head}\n{row}\nMean: {acc:.4f}    Std: nan\n"


def test_airbench_legal_only_when_the_mean_accuracy_over_ten_seeds_reaches_96(tmp_path):
    for name, accs in (("legal", [0.9605] * 5 + [0.9598] * 5), ("short", [0.9590] * 10), ("few", [0.97] * 3)):
        folder = tmp_path / name
        folder.mkdir()
        for seed, acc in enumerate(accs):
            (folder / f"seed{seed}.log").write_text(_bench_log(acc, 30.0 + seed))
        result = evaluate_folder("airbench96", folder)
        gate = next(c for c in result.checks if c.name == "accuracy")
        if name == "legal":
            assert result.label == "keep" and gate.value == pytest.approx(0.96015)
            assert result.score == pytest.approx(34.5) and [s.seed for s in result.seeds] == list(range(10))
        elif name == "short":
            assert result.label == "gate_miss" and gate.value == pytest.approx(0.959)
        else:
            assert result.label == "gate_miss" and "needs at least 10 seeds" in gate.detail


# -- GPUs ------------------------------------------------------------------------------------------------


def test_device_sets_are_disjoint_and_sized_to_the_task():
    assert device_sets(parse_devices("0-7"), 8) == [["0", "1", "2", "3", "4", "5", "6", "7"]]
    assert device_sets(parse_devices("0-3,6,7"), 2) == [["0", "1"], ["2", "3"], ["6", "7"]]
    assert device_sets(["0", "1", "2"], 1) == [["0"], ["1"], ["2"]]
    assert device_sets([str(i) for i in range(11)], 8) == [[str(i) for i in range(8)]]  # 3 left unused
    sets = device_sets(parse_devices("0-15"), 4)
    flat = [d for s in sets for d in s]
    assert len(flat) == len(set(flat)) == 16  # no GPU runs two trials
    with pytest.raises(TaskError, match="needs 8 GPUs but --devices gives 4"):
        device_sets(["0", "1", "2", "3"], 8)
    with pytest.raises(TaskError, match="device 1 is listed twice"):
        device_sets(["0", "1", "1", "2"], 2)
    with pytest.raises(TaskError, match="runs backwards"):
        parse_devices("7-0")

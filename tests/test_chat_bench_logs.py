"""nanochat-d12 and airbench96 logs read by what the recipes print; garbage is a crash with its reason.

The logs here are written in the shapes of karpathy/nanochat's scripts/base_train.py and
scripts/base_eval.py and of airbench96_faster.py's table (their print statements), with
arl's own numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from arl.runners.evaluate import evaluate_folder
from arl.tasks.code import load_evaluator
from arl.tasks.registry import resolve

TASKS = [("hellaswag_zeroshot", "0-shot, type: multiple_choice", 0.3012, 0.0683, 41.20),
         ("arc_easy", "10-shot, type: multiple_choice", 0.6100, 0.4800, 12.03),
         ("lambada_openai", "0-shot, type: language_modeling", 0.4000, 0.4000, 20.51)]
CORE = sum(t[3] for t in TASKS) / len(TASKS)  # 0.316100


def chat_log(*, tasks=TASKS, core: str | None = f"{CORE:.4f}", layers: int = 12) -> str:
    lines = ["Vocab size: 65,536", "Model config:", "{", '  "sequence_len": 2048,', '  "vocab_size": 65536,',
             f'  "n_layer": {layers},', '  "n_head": 6,', '  "n_embd": 768', "}",
             "step 00000/04000 (0.00%) | loss: 10.397 | lrm: 1.00 | dt: 500.00ms | total time: 0.00m",
             "Step 02000 | CORE metric: 0.1203",
             "step 04000/04000 (100.00%) | loss: 3.010 | lrm: 0.05 | dt: 480.00ms | total time: 33.10m",
             "Peak memory usage: 40000.00MiB", "Total training time: 33.10m", "Minimum validation bpb: 0.861234",
             "Evaluating model: base_model (step 4000)", "Eval modes: core", "", "=" * 80, "CORE Evaluation", "=" * 80]
    lines += [f"Evaluating: {label} ({kind})... accuracy: {acc:.4f} | centered: {c:.4f} | time: {s:.2f}s"
              for label, kind, acc, c, s in tasks]
    if core is not None:
        lines += ["", "Results written to: /base/base_eval/d12.csv", f"CORE metric: {core}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def chat():
    return load_evaluator(resolve("nanochat-d12")).module


@pytest.fixture(scope="module")
def bench():
    return load_evaluator(resolve("airbench96")).module


def _judge(tmp_path: Path, task: str, text: str, csv: str | None = None):
    folder = tmp_path / f"runs{len(list(tmp_path.iterdir()))}"
    (folder / "seed0").mkdir(parents=True)
    (folder / "seed0" / "run.log").write_text(text)
    if csv is not None:
        (folder / "seed0" / "d12.csv").write_text(csv)
    return evaluate_folder(task, folder)


def test_nanochat_core_is_the_final_evaluation_and_the_mean_of_its_tasks(chat, tmp_path):
    log = chat.read_log(chat_log())
    assert log.core == pytest.approx(0.3161) and log.tasks == 3 and not log.problem
    assert log.eval_s == pytest.approx(41.20 + 12.03 + 20.51) and log.train_s == pytest.approx(33.10 * 60)
    assert log.n_layer == 12 and log.min_val_bpb == 0.861234
    csv = ("Task                               , Accuracy  , Centered  \n"
           + "".join(f"{label:<35}, {acc:<10.6f}, {c:<10.6f}\n" for label, _, acc, c, _ in TASKS)
           + f"{'CORE':<35}, {'':<10}, {0.316112:<10.6f}\n")
    result = _judge(tmp_path, "nanochat-d12", chat_log(), csv)
    assert result.label == "keep" and result.score == 0.316112  # the CSV's six decimals
    # The in-training CORE (a subsample) never counts, even when the final evaluation is missing.
    assert chat.read_log(chat_log(tasks=[], core=None).replace("CORE Evaluation", "")).core is None


def test_nanochat_cut_during_its_core_evaluation_is_a_crash_naming_where(chat, tmp_path):
    text = chat_log(tasks=TASKS[:2], core=None)
    assert chat.read_log(text).problem == ("the CORE evaluation began but printed no `CORE metric:` line; "
                                           "it stopped after 2 task(s) (last: arc_easy)")
    result = _judge(tmp_path, "nanochat-d12", text)
    assert result.label == "crash" and "stopped after 2 task(s)" in result.reason


def test_nanochat_garbage_is_a_crash_and_nan_is_diverged(chat, tmp_path):
    wrong = chat_log(core="0.2500")
    assert chat.read_log(wrong).problem == ("CORE metric 0.2500 is not the mean of its 3 task lines' centered "
                                            "results (0.3161): lines are missing or damaged")
    assert _judge(tmp_path, "nanochat-d12", wrong).label == "crash"
    twice = chat_log() + "CORE metric: 0.3300\n"
    assert "different CORE values (0.3161, 0.3300)" in chat.read_log(twice).problem
    doubled = "".join(line for line in chat_log().splitlines(keepends=True) for _ in (0, 1))
    assert chat.read_log(doubled).core == pytest.approx(0.3161) and not chat.read_log(doubled).problem
    contradicted = _judge(tmp_path, "nanochat-d12", chat_log(), "CORE, , 0.290000\n")
    assert contradicted.label == "crash" and "CSV states CORE 0.290000 but its log 0.3161" in contradicted.reason
    nan = _judge(tmp_path, "nanochat-d12", chat_log(tasks=[], core="nan"))
    assert nan.label == "diverged"
    for junk in ("", "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory\n"):
        assert _judge(tmp_path, "nanochat-d12", junk).label == "crash"


HEAD = "|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |"
RULE = "-" * len(HEAD)


def _row(run: str, epoch: str, acc: str = "", seconds: str = "3.2000") -> str:
    return (f"|  {run:>6}  |  {epoch:>5}  |  {'0.1200':>10}  |  {'0.9800':>9}  |  {'0.9500':>7}  "
            f"|  {acc:>11}  |  {seconds:>18}  |")


def bench_log(runs: list[str], *, cut: bool = False, mean: str | None = None) -> str:
    lines = [RULE, HEAD, RULE]
    for n, acc in enumerate(runs):
        lines += [_row(str(n), "1"), _row("", "2"), _row("", "3")]
        if cut and n == len(runs) - 1:
            break
        lines += [_row("", "eval", acc, f"{34.0 + n:.4f}"), RULE]
    if not cut:
        accs = [float(a) for a in runs]
        lines.append(f"Mean: {mean or f'{sum(accs) / len(accs):.4f}'}    Std: nan")
    return "\n".join(lines) + "\n"


def test_airbench_accuracy_is_the_eval_row_of_each_run(bench, tmp_path):
    log = bench.read_log(bench_log(["0.9612"]))
    assert log.accuracy == pytest.approx(0.9612) and log.recipe_time_s == 34.0 and log.runs == 1 and not log.problem
    both = bench.read_log(bench_log(["0.9612", "0.9590"]))  # upstream's many runs in one process
    assert both.accuracy == pytest.approx(0.9601) and both.runs == 2
    doubled = "".join(line for line in bench_log(["0.9612"]).splitlines(keepends=True) for _ in (0, 1))
    assert bench.read_log(doubled).accuracy == pytest.approx(0.9612) and not bench.read_log(doubled).problem


def test_airbench_garbage_is_a_crash_and_nan_is_diverged(bench, tmp_path):
    cut = bench_log(["0.9612"], cut=True)
    assert bench.read_log(cut).problem == ("run 1 started and printed no eval row (the table stops at epoch 3): "
                                           "it stopped before its evaluation")
    result = _judge(tmp_path, "airbench96", cut)
    assert result.label == "crash" and "stopped before its evaluation" in result.reason
    lying = bench_log(["0.9612"], mean="0.9700")
    assert "Mean: 0.9700 is not the mean of the 1 eval row(s) (0.9612)" in bench.read_log(lying).problem
    extra = bench_log(["0.9612"]).replace("Mean:", _row("", "eval", "0.9650") + "\nMean:")
    assert bench.read_log(extra).problem.startswith("2 eval rows for 1 run(s)")
    junk = bench_log(["0.9612"]).replace("0.9612", "0.96x2")
    assert "is not a number" in bench.read_log(junk).problem
    assert _judge(tmp_path, "airbench96", junk).label == "crash"
    nan = _judge(tmp_path, "airbench96", bench_log(["nan"], mean="nan"))
    assert nan.label == "diverged"

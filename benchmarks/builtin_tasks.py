"""Measure a built-in task's base program (or a variant) the way a worker runs a trial.

    python benchmarks/builtin_tasks.py golf-mini
    python benchmarks/builtin_tasks.py golf-mini --set LR=3e-3 --set SCHEDULE='"cosine"' --repeat 2
    python benchmarks/builtin_tasks.py airbench-mini --technique channels_last --seeds 10,11,12

Knob values are written as Python literals (``NAME = value`` lines of the recipe);
techniques are the named ones of task.toml. Prints the score, every check and the
wallclock of each trial: these are the calibration figures in tasks/builtin/README.md.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arl.runners.sandbox import run_process  # noqa: E402
from arl.tasks.code import TaskData, training_feed  # noqa: E402
from arl.tasks.evaluation import EvalContext, SeedRun  # noqa: E402
from arl.tasks.manifest import Task, load_task  # noqa: E402

BUILTIN = Path(__file__).resolve().parents[1] / "tasks" / "builtin"


def cache_root() -> Path:
    return Path(os.environ.get("ARL_CACHE") or Path.home() / ".cache" / "arl")


def module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_arl_{path.parent.name}_{path.stem}".replace("-", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def variant(task: Task, into: Path, knobs: dict[str, str], techniques: list[str]) -> Path:
    """Copy the recipe to ``into`` with knob values set and techniques applied."""
    shutil.copytree(task.recipe_dir, into)
    by_name = {t.name: t for s in task.surfaces for t in s.techniques}
    files = {k.name: k.file for s in task.surfaces for k in s.knobs}
    for name in techniques:
        t = by_name[name]
        for e in t.edits:
            text = (into / e.file).read_text()
            assert text.count(e.search) == 1, f"{name}: {e.search!r} must occur once in {e.file}"
            (into / e.file).write_text(text.replace(e.search, e.replace))
        knobs = {**{k: repr(v) for k, v in t.set.items()}, **knobs}
    for name, value in knobs.items():
        path = into / files[name]
        text, n = re.subn(rf"^{name}\s*=\s*[^#\n]*?(\s*#.*)?$", lambda m: f"{name} = {value}{m.group(1) or ''}",
                          path.read_text(), count=1, flags=re.M)
        assert n == 1, f"no knob {name} in {path}"
        path.write_text(text)
    return into


def trial(task: Task, program: Path, seeds: list[int], work: Path, train_s: float | None = None):
    """Run ``program`` once per seed like a worker, then evaluate; returns (Evaluation, seconds)."""
    cache = cache_root() / task.name
    module(task.folder / "data.py").prepare(cache)
    budgets = task.budgets
    train_s = train_s or budgets.train_s
    limits = dict(memory_mb=budgets.memory_mb, threads=budgets.threads, hidden=[cache],
                  readable=[cache / "train"])
    runs = []
    started = time.monotonic()
    for seed in seeds:
        workspace, out = work / f"ws-{seed}", work / f"out-{seed}"
        shutil.copytree(program, workspace)
        out.mkdir()
        fed = training_feed(task, TaskData(root=cache, train=cache / "train", heldout=cache / "heldout"), seed)
        env = {"ARL_DATA": str(cache / "train"), "ARL_OUT": str(out), "ARL_SEED": str(seed),
               "ARL_TRAIN_BUDGET_S": str(train_s)}
        proc = run_process([a.replace("{python}", sys.executable) for a in task.run.command],
                           cwd=workspace, timeout_s=budgets.wallclock_s, env=env, stdin=fed, writable=[out],
                           **{**limits, "readable": limits["readable"] if fed is None else []})
        runs.append(SeedRun(seed=seed, process=proc, workspace=str(workspace), out=str(out)))
    scratch = work / "scratch"
    scratch.mkdir()
    ctx = EvalContext(task=task, runs=runs, heldout=cache / "heldout", train_data=cache / "train",
                      scratch=scratch, run=functools.partial(run_process, writable=[scratch], **limits))
    evaluation = module(task.folder / "evaluator.py").evaluate(ctx)
    return evaluation, runs, time.monotonic() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=sorted(d.name for d in BUILTIN.iterdir() if (d / "task.toml").is_file()))
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    p.add_argument("--technique", action="append", default=[])
    p.add_argument("--seeds", help="comma-separated; default: the task's seeds")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    task = load_task(BUILTIN / args.task)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else task.seeds
    knobs = dict(kv.split("=", 1) for kv in args.set)
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            program = variant(task, Path(tmp) / "program", knobs, args.technique)
            ev, runs, seconds = trial(task, program, seeds, Path(tmp))
        failed = [f"{c.name}={c.value} > {c.limit} ({c.fails_as}: {c.detail})" for c in ev.failed]
        runs_text = " ".join(f"seed {r.seed}: {r.process.wall_s:.1f}s (cpu {r.process.cpu_s:.1f}s) exit {r.process.exit_code}" for r in runs)
        print(f"[{i + 1}/{args.repeat}] {args.task} {' '.join(args.set + args.technique) or 'base'}: "
              f"score {ev.score} | {runs_text} | trial {seconds:.1f}s")
        print("   metrics " + ", ".join(f"{k}={v:.4g}" for k, v in ev.metrics.items()))
        print("   checks  " + ", ".join(f"{c.name} {c.value}/{c.limit} {'ok' if c.passed else 'FAIL'}"
                                      for c in ev.checks))
        last = [r.process.stdout_tail.strip().splitlines()[-1:] for r in runs]
        print("   stdout  " + " | ".join(line[0] if line else "" for line in last))
        if failed:
            print("   FAILED  " + "; ".join(failed))
            for r in runs:
                if not r.process.ok:
                    print("   stderr  " + r.process.stderr_tail[-600:])


if __name__ == "__main__":
    main()

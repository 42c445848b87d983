"""Where a knob lives: environment defaults, argparse defaults, dict entries, constants.

Hostile first: a name in a comment or a string only, a name matched twice, a default that
is an expression, a default the tuner cannot set; then binding an adapter task to a
checkout that lacks a declared knob (one line naming knob and file); then the baselines,
which never propose the unchanged program.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from arl.agents.baselines import RandomSearch, TPESearch
from arl.agents.lineage import LineageView, TrialLine
from arl.ledger.programs import program_digest
from arl.ledger.projections import State
from arl.tasks import knobs
from arl.tasks.adapters import bind
from arl.tasks.knobs import constant_changes, problem, read, settings, write
from arl.tasks.manifest import TaskError
from arl.tasks.registry import resolve
from tests.standins import knob_source, knobs_of
from tests.test_agents_tuner import make_task

ENV = b'''import os

class Hyperparameters:
    # MATRIX_LR lives below; this comment mentions os.environ.get("MATRIX_LR", 9.9) too.
    matrix_lr = float(os.environ.get("MATRIX_LR", 0.04))  # Muon
    batch = int(os.environ.get("TRAIN_BATCH_TOKENS", 524_288))
    tie = bool(int(os.environ.get("TIE_EMBEDDINGS", "1")))
    lr_text = float(os.getenv("SCALAR_LR", "0.04"))
    note = "os.environ.get('HEAD_LR', 0.008) is only a string here"
    path = os.environ.get("DATA_PATH")
'''

ARGS = b'''import argparse, os
parser = argparse.ArgumentParser()
parser.add_argument("--matrix-lr", type=float, default=0.02, help="learning rate for matrix parameters (Muon)")
parser.add_argument("--eval-tokens", type=int, default=80*524288, help="tokens to evaluate on")
parser.add_argument("--workers", type=int, default=os.cpu_count(), help="not a literal")
parser.add_argument("--fp8", action="store_true", help="no default= to set")
parser.add_argument("-n", "--num-files", type=int, default=-1)
# parser.add_argument("--embedding-lr", type=float, default=0.3)
'''

DICT = b'''hyp = {
    'opt': {
        'lr': 9.0,               # learning rate per 1024 examples
        'batch_size': 1024,
    },
    'net': {
        'widths': {'block1': 128, 'block2': 384},
        'scaling_factor': 1/9,
    },
}
other = {'opt': {'lr': 1.0}}
'''


def test_env_defaults_are_read_and_rewritten_in_place():
    assert read(ENV, "MATRIX_LR", "env") == "0.04"
    assert read(ENV, "TRAIN_BATCH_TOKENS", "env") == "524_288"
    assert knobs.parse_value(read(ENV, "TRAIN_BATCH_TOKENS", "env")) == 524288
    out = write(ENV, "MATRIX_LR", "env", 0.05)
    assert b'matrix_lr = float(os.environ.get("MATRIX_LR", 0.05))  # Muon' in out
    assert b'9.9) too.' in out  # the comment is not a place
    ast.parse(out)
    # A string default stays a string the recipe can parse; a 0/1 flag stays 0/1.
    assert read(ENV, "SCALAR_LR", "env") == "0.04"
    assert b'os.getenv("SCALAR_LR", "0.03")' in write(ENV, "SCALAR_LR", "env", 0.03)
    assert b'os.environ.get("TIE_EMBEDDINGS", "0")' in write(ENV, "TIE_EMBEDDINGS", "env", False)
    # An int into a float default keeps it a float.
    assert b'os.environ.get("MATRIX_LR", 1.0)' in write(ENV, "MATRIX_LR", "env", 1)


def test_a_name_in_a_comment_or_a_string_only_matches_nothing():
    assert problem(ENV, "HEAD_LR", "env", "train_gpt.py") == \
        'no os.environ.get("HEAD_LR", default) in train_gpt.py'
    assert problem(ARGS, "--embedding-lr", "argparse", "base_train.py") == \
        'no add_argument("--embedding-lr", …, default=…) in base_train.py'
    assert read(ENV, "HEAD_LR", "env") == ""
    assert write(ENV, "HEAD_LR", "env", 0.01) == ENV
    # An env read without a default has nothing to set.
    assert problem(ENV, "DATA_PATH", "env", "train_gpt.py").startswith("no os.environ.get")


def test_a_name_matched_twice_is_refused_with_both_lines():
    twice = ENV + b'\nclass Other:\n    matrix_lr = float(os.environ.get("MATRIX_LR", 0.02))\n'
    found = problem(twice, "MATRIX_LR", "env", "train_gpt.py")
    assert found == ('os.environ.get("MATRIX_LR", default) occurs 2 times in train_gpt.py (lines 5, 13); '
                     "a knob must name one place")
    assert write(twice, "MATRIX_LR", "env", 0.1) == twice  # which one? neither
    assert "MATRIX_LR" not in settings(twice)
    consts = b"LR = 0.1\nLR = 0.2\n"
    assert "occurs 2 times" in problem(consts, "LR", "constant", "train.py")


def test_argparse_defaults_including_an_arithmetic_expression():
    assert read(ARGS, "--matrix-lr", "argparse") == "0.02"
    assert knobs.parse_value(read(ARGS, "--eval-tokens", "argparse")) == 80 * 524288
    assert problem(ARGS, "--eval-tokens", "argparse", "f.py") is None
    out = write(ARGS, "--eval-tokens", "argparse", 1000)
    assert b'default=1000, help="tokens to evaluate on"' in out
    assert knobs.parse_value(read(ARGS, "--num-files", "argparse")) == -1
    assert problem(ARGS, "--workers", "argparse", "f.py") == (
        'add_argument("--workers", …, default=…) in f.py line 5: default `os.cpu_count()` is not a number, '
        "bool or string the tuner can set")
    assert problem(ARGS, "--fp8", "argparse", "f.py").startswith("no add_argument")
    # Named by the option, dashes and all.
    assert "named by its option" in problem(ARGS, "matrix_lr", "argparse", "f.py")


def test_dict_entries_by_dotted_path():
    assert read(DICT, "hyp.opt.lr", "dict") == "9.0"
    assert read(DICT, "hyp.net.widths.block2", "dict") == "384"
    assert knobs.parse_value(read(DICT, "hyp.net.scaling_factor", "dict")) == pytest.approx(1 / 9, rel=1e-3)
    out = write(DICT, "hyp.opt.lr", "dict", 7.5)
    assert b"'lr': 7.5,               # learning rate per 1024 examples" in out
    assert b"other = {'opt': {'lr': 1.0}}" in out
    assert problem(DICT, "hyp.opt.momentum", "dict", "airbench96_faster.py") == \
        "no dict entry hyp.opt.momentum (a top-level dict literal) in airbench96_faster.py"
    assert problem(DICT, "hyp.opt", "dict", "a.py").endswith("is not a number, bool or string the tuner can set")
    # Lineage and scope see dict entries change.
    assert constant_changes({"a.py": DICT}, {"a.py": out}) == {"hyp.opt.lr": ("9.0", "7.5")}


def test_a_file_that_is_not_python_says_so():
    assert problem(b"def broken(:\n", "LR", "env", "train.py") == \
        'train.py is not valid Python, so its os.environ.get("LR", default) cannot be found'
    assert problem(b"LR = 0.1\nnot python (\n", "LR", "constant", "train.py") is None  # line form
    assert problem(b"LR = 0.1\n", "LR", "yaml", "train.py").startswith("where = 'yaml' is not one of")


# -- binding the adapters to a checkout -----------------------------------------------------------

ADAPTERS = {
    "parameter-golf": ["train_gpt.py"],
    "nanochat-d12": ["scripts/base_train.py"],
    "airbench96": ["airbench96_faster.py"],
}


def _checkout(task, root: Path, *, drop: str | None = None) -> Path:
    """A stand-in checkout: every recipe file, the knob files holding every declared knob."""
    for name in [*task.source.markers, *task.source.recipe_files]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = knob_source(task, name) if knobs_of(task, name) else "# stand-in\n"
        for edit in task.source.adapt:
            if edit.file == name:
                text += f"accs = torch.tensor([main(run)\n    {edit.search}\n"
        if any(pin.file == name for pin in task.pins):  # nanochat's depth pins
            text += "model = build_model_meta(args.depth)\ncfg = dict(\n    n_layer=depth,\n)\n"
        if drop is not None:
            text = "\n".join(line for line in text.splitlines() if drop not in line) + "\n"
        path.write_text(text)
    return root


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_declares_real_knobs_and_techniques_and_binds_them(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    task = resolve(name)
    declared = [k for s in task.surfaces for k in s.knobs]
    assert len(declared) >= 10, name
    assert sum(len(s.techniques) for s in task.surfaces) >= 2, name
    assert {k.where for k in declared} <= {"env", "argparse", "dict", "constant"}
    bound = bind(task, recipe_from=_checkout(task, tmp_path / "co"))
    for k in declared:
        source = (bound.recipe_dir / k.file).read_bytes()
        assert read(source, k.name, k.where) != "", k.name
        # A technique sets only its surface's knobs, within their ranges.
    for s in task.surfaces:
        own = {k.name: k for k in s.knobs}
        for t in s.techniques:
            for knob_name, value in t.set.items():
                assert knob_name in own, (s.name, t.name, knob_name)
                k = own[knob_name]
                assert k.choices and value in k.choices or k.min <= value <= k.max, (t.name, knob_name)


@pytest.mark.parametrize("name, knob, file", [
    ("parameter-golf", "MATRIX_LR", "train_gpt.py"),
    ("nanochat-d12", "--matrix-lr", "scripts/base_train.py"),
    ("airbench96", "hyp.opt.lr", "airbench96_faster.py"),
])
def test_a_checkout_missing_a_declared_knob_is_refused_in_one_line(name, knob, file, tmp_path, monkeypatch):
    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    task = resolve(name)
    spelled = {"env": f'"{knob}"', "argparse": f'"{knob}"', "dict": f"'{knob.split('.')[-1]}'"}
    where = next(k.where for s in task.surfaces for k in s.knobs if k.name == knob)
    checkout = _checkout(task, tmp_path / "co", drop=spelled[where])
    with pytest.raises(TaskError) as e:
        bind(task, recipe_from=checkout)
    message = str(e.value)
    assert "\n" not in message
    assert f".knobs.{knob}: no " in message and f" in {file}" in message
    assert str(checkout) in message and "(--recipe-from)" in message


# -- the baselines never propose the unchanged program --------------------------------------------

SMALL = """
name = "small"
description = "a search space of four programs"
[run]
command = ["{python}", "train.py"]
[objective]
metric = "loss"
direction = "min"
[budgets]
train_s = 10
eval_s = 5
wallclock_s = 20
[[surfaces]]
name = "opt"
description = "everything"
files = ["train.py"]
knobs = [{ name = "FAST", file = "train.py", where = "env", type = "bool" }]
techniques = [{ name = "wide", edits = [{ file = "train.py", search = "WIDTH = 8", replace = "WIDTH = 16" }] }]
"""
RECIPE = b'import os\nFAST = bool(int(os.environ.get("FAST", "0")))\nWIDTH = 8\n'


def _small(tmp_path, manifest: str = SMALL):
    return make_task(tmp_path / "small", manifest, RECIPE)


def _view(known: set[str], n: int) -> LineageView:
    best = TrialLine(seq=0, trial_id="t0", agent="baseline", surface="", hypothesis="", label="baseline",
                     score=1.0, delta_vs_best=None, reason="")
    return LineageView(search_id="1b4e28ba-2fa1-11d2-883f-0016d3cca427", task="small", metric="loss", direction="min", noise_floor=0.0,
                       specialist="random", surface="opt", lineage=False, baseline_score=1.0, best=best,
                       best_program={"train.py": RECIPE}, trials_so_far=n, position=n,
                       known_programs=frozenset(known))


@pytest.mark.parametrize("cls", [RandomSearch, TPESearch])
def test_random_and_tpe_never_propose_the_unchanged_program_or_a_repeat(cls, tmp_path):
    task = _small(tmp_path)
    base = {"train.py": RECIPE}
    agent = cls(task, seed=3, base=base, state=lambda: State())
    known = {program_digest(base)}
    proposed = []
    for n in range(1, 6):
        p = agent.propose(_view(known, n))
        if p is None:
            break
        digest = program_digest(p.program)
        assert digest not in known, f"proposal {n} repeats a program: {p.hypothesis}"
        assert p.hypothesis != f"{cls.backend}: the base configuration"
        known.add(digest)
        proposed.append(p)
    # Four programs in all, the base among them: three proposals, then nothing left to draw.
    assert len(proposed) == 3
    assert agent.propose(_view(known, 9)) is None


@pytest.mark.parametrize("cls", [RandomSearch, TPESearch])
def test_a_space_with_nothing_to_move_proposes_nothing(cls, tmp_path):
    bare = SMALL.split("knobs = ")[0]
    task = _small(tmp_path, bare)
    agent = cls(task, seed=0, base={"train.py": RECIPE}, state=lambda: State())
    assert agent.propose(_view({program_digest({"train.py": RECIPE})}, 1)) is None


def test_the_knobs_of_a_stand_in_are_what_the_manifest_declares():
    task = resolve("parameter-golf")
    source = knob_source(task, "train_gpt.py").encode()
    ast.parse(source)
    for k in knobs_of(task, "train_gpt.py"):
        assert problem(source, k.name, k.where, "train_gpt.py") is None, k.name


# -- the tuner moves env/argparse/dict knobs, scope and lineage see them -------------------------------

@pytest.mark.parametrize("name, surface, other", [
    ("parameter-golf", "opt", "arch"),
    ("nanochat-d12", "sched", "opt"),
    ("airbench96", "opt", "aug"),
])
def test_the_tuner_moves_a_knob_where_it_lives_and_scope_sees_it(name, surface, other, tmp_path, monkeypatch):
    from arl.agents.tuner import Tuner
    from arl.ledger.events import Label
    from arl.tasks import legality

    monkeypatch.setenv("ARL_CACHE", str(tmp_path / "cache"))
    task = bind(resolve(name), recipe_from=_checkout(resolve(name), tmp_path / "co"))
    base = {str(p.relative_to(task.recipe_dir)): p.read_bytes() for p in task.recipe_dir.rglob("*") if p.is_file()}
    best = TrialLine(seq=0, trial_id="t0", agent="baseline", surface="", hypothesis="", label="baseline",
                     score=1.0, delta_vs_best=None, reason="")
    view = LineageView(search_id="s", task=name, metric=task.objective.metric, direction=task.objective.direction,
                       noise_floor=task.objective.noise_floor, specialist=surface, surface=surface, lineage=True,
                       baseline_score=1.0, best=best, best_program=base, chain=[best])
    proposal = Tuner(task, task.surface(surface), seed=1).propose(view)
    assert proposal is not None
    changes = constant_changes(base, proposal.program)
    own = {k.name for k in task.surface(surface).knobs}
    assert changes and set(changes) <= own, changes  # one of its own knobs, read back changed
    for file, data in proposal.program.items():
        if file.endswith(".py"):
            ast.parse(data)
    finding = legality.scope(task, surface, base, proposal.program)
    assert finding.passed, finding.detail
    foreign = legality.scope(task, other, base, proposal.program)
    assert foreign.label is Label.OUT_OF_SURFACE and f"(owned by surface {surface})" in foreign.detail


def test_no_launcher_sets_a_declared_knob():
    """A knob the launcher overrides (an env variable it sets, an option it passes) would never move."""
    import re

    for name, pattern in (("parameter-golf", r"\b([A-Z][A-Z0-9_]+)="), ("nanochat-d12", r"(--[a-z][a-z0-9-]*)=")):
        task = resolve(name)
        launcher = (task.folder / "recipe" / "arl_launch.py").read_text()
        overridden = set(re.findall(pattern, launcher))
        assert overridden, name  # the pattern finds what the launcher sets
        declared = {k.name for s in task.surfaces for k in s.knobs}
        assert not overridden & declared, (name, overridden & declared)

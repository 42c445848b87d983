"""The task manifest (``task.toml``): what a recipe is, how it runs, how it is judged.

A task is a folder::

    task.toml      this manifest
    recipe/        the base program: the files agents may edit (within their surface)
    evaluator.py   task code, outside the program: ``VERSION`` and ``evaluate(ctx)``
    data.py        task code: ``prepare(cache: Path) -> None`` and ``MISSING_HELP``

Parsed into typed structs; every mistake is one line naming the key and what
is expected there.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
import typing
from pathlib import Path
from typing import Literal

import msgspec

from arl.ledger.errors import ArlError
from arl.ledger.events import Budget
from arl.tasks import knobs as knob_sites


class TaskError(ArlError):
    """A task folder or manifest is wrong; the message names the key and the fix."""


class Knob(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A value in a recipe file the tuner may set; ``where`` says where it lives (``tasks.knobs``).

    "constant": a top-level ``NAME = value``; "env": the default of
    ``os.environ.get("NAME", value)``; "argparse": the ``default=`` of
    ``add_argument("--name", …)`` (``name`` is the option, dashes and all); "dict":
    an entry of a top-level dict literal, ``name`` dotted from the dict's variable
    (``hyp.opt.lr``).
    """

    name: str
    file: str
    where: Literal["constant", "env", "argparse", "dict"] = "constant"
    type: Literal["int", "float", "bool", "choice"]
    min: float | None = None
    max: float | None = None
    log: bool = False
    choices: list[str | int | float | bool] = []
    #: What raising this knob costs or buys: any of "time", "size", "memory", "accuracy".
    costs: list[Literal["time", "size", "memory", "accuracy"]] = []
    buys: list[Literal["time", "size", "memory", "accuracy"]] = []


class Replace(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A search/replace edit of one file: ``search`` must occur exactly once."""

    file: str
    search: str
    replace: str


class Technique(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A named, self-contained change an offline agent may switch on."""

    name: str
    description: str = ""
    #: Knob values the technique sets (applied like knob edits).
    set: dict[str, str | int | float | bool] = {}
    #: Code edits the technique makes.
    edits: list[Replace] = []
    costs: list[Literal["time", "size", "memory", "accuracy"]] = []
    buys: list[Literal["time", "size", "memory", "accuracy"]] = []


class Surface(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str
    files: list[str]
    knobs: list[Knob] = []
    techniques: list[Technique] = []


class Run(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: argv run in the program's folder; "{python}" is the worker's interpreter.
    command: list[str]


class Objective(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    metric: str
    direction: Literal["min", "max"]
    #: Improvements smaller than this are confirmed on more seeds before they count.
    noise_floor: float = 0.0
    #: What the metric measures, in the knobs' costs/buys vocabulary (e.g. "time" when the
    #: score is wallclock): offline agents try the moves that buy it before the others.
    #: None: the metric is not one of those resources, no move is preferred a priori.
    resource: Literal["time", "size", "memory", "accuracy"] | None = None


class Budgets(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Wallclock of one training run, timed from outside the recipe.
    train_s: float
    #: Wallclock of the evaluation phase, timed from outside.
    eval_s: float
    #: Hard kill for one run (a runaway never holds a worker longer than this).
    wallclock_s: float
    memory_mb: int = 4096
    threads: int = 1
    #: Fixed training data: the run reads exactly this many bytes of training text on
    #: stdin (the task's ``data.feed``) and is shown no other training data, so what
    #: it learns from does not depend on how much CPU the machine gives it; the time
    #: budgets above stay as hard legality caps. None: the recipe reads ``ARL_DATA``.
    train_tokens: int | None = None


class Gates(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Cap on code bytes + compressed artifact bytes (None: no cap).
    artifact_bytes: int | None = None
    #: Minimum mean accuracy over ``accuracy_seeds`` runs (None: no gate).
    accuracy: float | None = None
    accuracy_seeds: int = 1


class Source(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An adapter task's base program lives in the user's checkout of a public repository.

    arl ships only the task code (manifest, evaluator, data check, launcher); the
    recipe files are copied from the checkout when a search starts
    (``tasks.adapters.bind``), with ``adapt`` edits applied, plus the task's own
    ``recipe/`` files (e.g. a protected launcher) laid over them.
    """

    #: Where users get the checkout (shown in every "checkout missing" message).
    repository: str
    #: Files of the checkout that become the program (agents edit these within surfaces).
    recipe_files: list[str]
    #: Files the checkout must have to be recognised as one (checked, not copied).
    markers: list[str] = []
    #: Edits arl makes to the checkout's files to run them as trials (each must match once).
    adapt: list[Replace] = []


class Needs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: GPUs one trial runs on (a worker gives each trial a disjoint set of its --devices).
    gpus: int = 0


class Pin(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A line of a program file that must stay as the task has it (e.g. a fixed model depth)."""

    file: str
    #: Regular expression that must match exactly one line of the file (multiline mode).
    pattern: str
    why: str


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A rule of the task that code cannot check; recorded on every evaluation as declared."""

    name: str
    text: str


class Task(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str
    run: Run
    objective: Objective
    budgets: Budgets
    gates: Gates = Gates()
    #: Glob patterns (relative to the program root) agents must never change.
    protected: list[str] = []
    surfaces: list[Surface]
    #: Seeds of an ordinary run; ``confirm_seeds`` (disjoint) confirm candidate keeps.
    seeds: list[int] = msgspec.field(default_factory=lambda: [0])
    confirm_seeds: list[int] = []
    #: "within_noise": re-run keeps that beat the best by less than the noise floor;
    #: "always": re-run every candidate keep (tasks whose seeds can be overfit).
    confirm: Literal["within_noise", "always"] = "within_noise"
    #: Adapter tasks: the base program comes from the user's checkout (see Source).
    source: Source | None = None
    needs: Needs = Needs()
    #: Lines every program must keep unchanged (an edit breaking one is illegal_edit).
    pins: list[Pin] = []
    #: Rules recorded on every evaluation as declared but not checked by code.
    declared: list[Rule] = []
    #: Filled in by the loader, not read from the file.
    root: str = ""
    #: Filled in by ``tasks.adapters.bind``: the user's checkout, the base program
    #: materialized from it, and the user's data folder.
    checkout_root: str = ""
    recipe_root: str = ""
    data_root: str = ""
    #: How each path was given (the option, an environment variable, the config file, or the
    #: search's record), said wherever a path is used.
    checkout_from: str = ""
    data_from: str = ""

    @property
    def folder(self) -> Path:
        return Path(self.root)

    @property
    def recipe_dir(self) -> Path:
        """The base program: ``recipe/``, or for a bound adapter task its materialized copy."""
        return Path(self.recipe_root) if self.recipe_root else self.folder / "recipe"

    def budget(self) -> Budget:
        b = self.budgets
        return Budget(
            train_s=b.train_s, eval_s=b.eval_s, wallclock_s=b.wallclock_s,
            memory_mb=b.memory_mb, threads=b.threads, train_tokens=b.train_tokens,
        )

    def surface(self, name: str) -> Surface:
        for s in self.surfaces:
            if s.name == name:
                return s
        raise TaskError(
            f"task {self.name} has no surface {name!r}; "
            f"its surfaces are {', '.join(s.name for s in self.surfaces)}"
        )

    def is_protected(self, path: str) -> bool:
        return any(_glob_match(pattern, path) for pattern in self.protected)

    def digest(self) -> str:
        """sha256 over the manifest and every file of the task folder (recipe, evaluator, data)."""
        h = hashlib.sha256()
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file() and _tracked(p)):
            h.update(str(path.relative_to(self.folder)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()


def _tracked(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix != ".pyc"


def _glob_match(pattern: str, path: str) -> bool:
    regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.fullmatch(regex, path) is not None


def load_task(folder: str | Path) -> Task:
    """Read and check ``folder/task.toml``; raises :class:`TaskError` with one line."""
    folder = Path(folder).expanduser().resolve()
    manifest = folder / "task.toml"
    if not manifest.is_file():
        raise TaskError(f"{folder} is not a task: it has no task.toml")
    try:
        raw = tomllib.loads(manifest.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{manifest}: not valid TOML ({e}); fix the syntax there") from None
    try:
        task = msgspec.convert(raw, Task)
    except msgspec.ValidationError as e:
        raise TaskError(f"{manifest}: {_explain(e)}") from None
    task = msgspec.structs.replace(task, root=str(folder))
    _check(task, manifest)
    return task


def _explain(e: msgspec.ValidationError) -> str:
    """msgspec says "Expected `int`, got `str` - at `$.budgets.train_s`"; say it as key: problem."""
    text = str(e)
    m = re.match(r"(.*?) - at `\$\.?(.*)`$", text)
    if not m:
        return text
    problem, where = m.groups()
    problem = problem.replace("`", "")
    if problem.startswith("Object contains unknown field"):
        return f"{where}: unknown key {problem.split()[-1]}; check its spelling"
    if problem.startswith("Object missing required field"):
        field = problem.split()[-1]
        key = f"{where}.{field}" if where else field
        return f"{key}: missing; this key is required"
    if problem.startswith("Invalid enum value"):
        allowed = _literal_values(where)
        if allowed:
            return f"{where}: expected one of {', '.join(map(repr, allowed))}, got {problem.split()[-1]}"
    return f"{where or 'top level'}: {problem[0].lower()}{problem[1:]}"


def _literal_values(path: str) -> tuple:
    """The allowed values of a Literal-typed key, found by walking the manifest's types."""
    tp: object = Task
    for part in re.sub(r"\[\d+\]", "", path).split("."):
        try:
            tp = typing.get_type_hints(tp)[part]
        except (KeyError, TypeError):
            return ()
        while typing.get_origin(tp) in (list, tuple):
            tp = typing.get_args(tp)[0]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def _check(task: Task, manifest: Path) -> None:
    def fail(key: str, message: str) -> None:
        raise TaskError(f"{manifest}: {key}: {message}")

    if not task.recipe_dir.is_dir():
        fail("recipe", f"the folder {task.recipe_dir} with the base program is missing")
    for name in ("evaluator.py", "data.py"):
        if not (task.folder / name).is_file():
            fail(name, f"{task.folder / name} is missing; a task ships its own {name}")
    if not task.run.command:
        fail("run.command", "empty; give the argv that runs the recipe, e.g. [\"{python}\", \"train.py\"]")
    b = task.budgets
    for key in ("train_s", "eval_s", "wallclock_s"):
        if getattr(b, key) <= 0:
            fail(f"budgets.{key}", "must be a positive number of seconds")
    if b.wallclock_s < b.train_s:
        fail("budgets.wallclock_s", f"must be at least budgets.train_s ({b.train_s})")
    if b.train_tokens is not None and b.train_tokens < 1:
        fail("budgets.train_tokens", "must be a positive number of bytes (or left out)")
    if b.threads < 1 or b.memory_mb < 64:
        fail("budgets", "threads must be >= 1 and memory_mb >= 64")
    if not task.seeds:
        fail("seeds", "needs at least one seed")
    if set(task.seeds) & set(task.confirm_seeds):
        fail("confirm_seeds", "must be disjoint from seeds (confirmation needs unseen seeds)")
    if task.gates.accuracy is not None and task.gates.accuracy_seeds > len(task.seeds):
        fail("gates.accuracy_seeds", f"is {task.gates.accuracy_seeds} but seeds lists only {len(task.seeds)}")
    names = [s.name for s in task.surfaces]
    if not names:
        fail("surfaces", "declare at least one surface")
    if len(set(names)) != len(names):
        fail("surfaces", "surface names must be unique")
    if task.needs.gpus < 0:
        fail("needs.gpus", "must be >= 0")
    for pin in task.pins:
        try:
            re.compile(pin.pattern)
        except re.error as e:
            fail(f"pins.{pin.file}", f"pattern is not a regular expression ({e})")
    if task.source is not None and not task.recipe_root:
        # The program files are in the user's checkout; tasks.adapters.bind checks them there.
        _check_source(task, task.source, fail)
        return
    check_recipe(task, fail)


def _check_source(task: Task, source: Source, fail: typing.Callable[[str, str], None]) -> None:
    if not source.recipe_files:
        fail("source.recipe_files", "list the checkout files that make up the program")
    overlay = {str(p.relative_to(task.folder / "recipe")) for p in (task.folder / "recipe").rglob("*") if p.is_file()}
    known = set(source.recipe_files) | overlay
    for s in task.surfaces:
        for f in s.files:
            if f not in known:
                fail(f"surfaces.{s.name}.files", f"{f} is neither in source.recipe_files nor in recipe/")
            if task.is_protected(f):
                fail(f"surfaces.{s.name}.files", f"{f} is protected; a surface cannot own it")
    for e in source.adapt:
        if e.file not in source.recipe_files:
            fail("source.adapt", f"edits {e.file}, which is not in source.recipe_files")


def check_recipe(task: Task, fail: typing.Callable[[str, str], None]) -> None:
    """Surface files, knobs and pins against the base program in ``task.recipe_dir``."""
    recipe_files = {str(p.relative_to(task.recipe_dir)) for p in task.recipe_dir.rglob("*") if p.is_file()}
    for pin in task.pins:
        if pin.file not in recipe_files:
            fail(f"pins.{pin.file}", "is not a file of the program")
        found = len(re.findall(pin.pattern, (task.recipe_dir / pin.file).read_text(), re.M))
        if found != 1:
            fail(f"pins.{pin.file}", f"pattern {pin.pattern!r} matches {found} lines of the base program, not 1")
    for s in task.surfaces:
        for f in s.files:
            if f not in recipe_files:
                fail(f"surfaces.{s.name}.files", f"{f} is not a file of recipe/")
            if task.is_protected(f):
                fail(f"surfaces.{s.name}.files", f"{f} is protected; a surface cannot own it")
        for k in s.knobs:
            if k.file not in s.files:
                fail(f"surfaces.{s.name}.knobs.{k.name}", f"file {k.file} is not in the surface's files")
            found = knob_sites.problem((task.recipe_dir / k.file).read_bytes(), k.name, k.where, k.file)
            if found is not None:
                fail(f"surfaces.{s.name}.knobs.{k.name}", found)
            if k.type in ("int", "float") and (k.min is None or k.max is None or k.min > k.max):
                fail(f"surfaces.{s.name}.knobs.{k.name}", "numeric knobs need min <= max")
            if k.type == "choice" and not k.choices:
                fail(f"surfaces.{s.name}.knobs.{k.name}", "choice knobs need a list of choices")
        for t in s.techniques:
            for e in t.edits:
                if e.file not in s.files:
                    fail(f"surfaces.{s.name}.techniques.{t.name}", f"edits {e.file}, not a file of the surface")

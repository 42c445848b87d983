"""Adapter tasks: recipes arl cannot ship, run from the user's checkout and data.

An adapter task folder (``[source]`` in its manifest) holds only arl's side of
the task: the manifest, the evaluator, the data check and a protected launcher
in ``recipe/``. The base program is copied from the user's checkout of the
public repository, the data stays where the user keeps it. Where each comes
from, first match wins:

=================  ==============================  ==========================
what               option                          environment / config file
=================  ==============================  ==========================
the checkout       ``--recipe-from PATH``          ``ARL_RECIPE_FROM_<TASK>``, ``recipe_from``
the data folder    ``--data PATH``                 ``ARL_DATA_<TASK>``, ``data``
=================  ==============================  ==========================

``<TASK>`` is the task name in capitals with ``-`` as ``_`` (``PARAMETER_GOLF``);
the config file is ``$ARL_CONFIG`` or ``./arl.toml``, keys in ``[tasks.<name>]``;
last, a search's recorded paths (``SearchStarted.config``) let any worker find them.

Also here: GPU placement for trials that need several GPUs (``device_sets``) and
declared-but-unchecked rules (``declared_checks``); pinned lines are checked by
``arl.tasks.legality`` with every other rule of a legal program.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from arl.ledger.events import Check
from arl.tasks.code import cache_root
from arl.tasks.manifest import Task, TaskError, check_recipe

#: Name of the link, inside a task's data cache, to the user's data folder.
DATA_LINK = "source"


def env_name(kind: str, task_name: str) -> str:
    """``ARL_RECIPE_FROM_PARAMETER_GOLF`` for kind "RECIPE_FROM" and task "parameter-golf"."""
    return f"ARL_{kind}_{re.sub(r'[^A-Za-z0-9]', '_', task_name).upper()}"


def config_file() -> Path:
    return Path(os.environ.get("ARL_CONFIG") or "arl.toml").expanduser()


def _from_config(task_name: str, key: str) -> tuple[str, str] | None:
    path = config_file()
    if not path.is_file():
        if os.environ.get("ARL_CONFIG"):
            raise TaskError(f"ARL_CONFIG names {path}, which is not a file; fix the path or unset ARL_CONFIG")
        return None
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{path}: not valid TOML ({e}); fix the syntax there") from None
    value = raw.get("tasks", {}).get(task_name, {}).get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TaskError(f"{path}: tasks.{task_name}.{key}: expected a path string, got {type(value).__name__}")
    return value, f"{path} [tasks.{task_name}] {key}"


def locate(task_name: str, kind: str, explicit: str | os.PathLike | None = None,
           recorded: Mapping[str, object] | None = None) -> tuple[Path, str] | None:
    """Where one path comes from (kind "recipe_from" or "data"): the path and how it was given."""
    option = "--recipe-from" if kind == "recipe_from" else "--data"
    if explicit is not None:
        return Path(explicit).expanduser().resolve(), option
    env = env_name(kind.upper(), task_name)
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser().resolve(), env
    found = _from_config(task_name, kind)
    if found is not None:
        base = config_file().resolve().parent  # relative paths are relative to the config file
        return (base / Path(found[0]).expanduser()).resolve(), found[1]
    if recorded and isinstance(recorded.get(kind), str):
        return Path(str(recorded[kind])), f"the search's recorded {kind}"
    return None


def _how_to_give(task: Task, kind: str) -> str:
    option = "--recipe-from PATH" if kind == "recipe_from" else "--data PATH"
    return (f"give {option}, set {env_name(kind.upper(), task.name)}, or put {kind} = \"PATH\" "
            f"under [tasks.{task.name}] in {config_file()}")


def bind(task: Task, *, recipe_from: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
         recorded: Mapping[str, object] | None = None, need_recipe: bool = True) -> Task:
    """An adapter task with its base program materialized from the checkout and its data linked.

    Other tasks come back unchanged (giving them a checkout is an error). Without
    ``need_recipe`` a missing checkout is fine (a worker gets programs from the
    ledger); a checkout that is given but wrong is always an error.
    """
    if task.source is None:
        if recipe_from is not None:
            raise TaskError(f"task {task.name} ships its own recipe/; --recipe-from is only for adapter tasks "
                            "(parameter-golf, nanochat-d12, airbench96)")
        return task
    bound = task
    where = locate(task.name, "recipe_from", recipe_from, recorded)
    if where is None and need_recipe:
        raise TaskError(f"task {task.name} runs your checkout of {task.source.repository}: "
                        f"{_how_to_give(task, 'recipe_from')}")
    if where is not None:
        bound = msgspec.structs.replace(bound, checkout_root=str(where[0]), recipe_root=str(materialize(task, *where)),
                                        checkout_from=where[1])
        check_recipe(bound, lambda key, message: _fail(f"{where[0]} ({where[1]})", key, message))
    found = locate(task.name, "data", data, recorded)
    if found is not None:
        link_data(task, *found)
        bound = msgspec.structs.replace(bound, data_root=str(found[0]), data_from=found[1])
    else:
        forget_data(task)  # a folder linked for an earlier command is never used unsaid
    return bound


def _fail(where: str, key: str, message: str) -> None:
    raise TaskError(f"{where}: {key}: {message}")


def recorded_paths(task: Task) -> dict[str, str]:
    """What a search records so that every worker can find the checkout and the data."""
    paths: dict[str, str] = {}
    if task.checkout_root:
        paths["recipe_from"] = task.checkout_root
    if task.data_root:
        paths["data"] = task.data_root
    return paths


def materialize(task: Task, checkout: Path, given_as: str = "--recipe-from") -> Path:
    """Copy the checkout's recipe files (adapted) and the task's recipe/ files into a program folder.

    The folder is named by the digest of its content under the task's cache,
    so binding twice to the same checkout is cheap and never mixes versions.
    """
    source = task.source
    if source is None:
        raise TaskError(f"task {task.name} is not an adapter task (no [source] in its task.toml)")
    if not checkout.is_dir():
        raise TaskError(f"{given_as} {checkout}: no such folder; it must be your checkout of "
                        f"{source.repository} (git clone {source.repository})")
    for name in [*source.markers, *source.recipe_files]:
        if not (checkout / name).is_file():
            raise TaskError(f"{given_as} {checkout} is not a checkout of {source.repository}: it has no {name}; "
                            "point it at the repository's top folder")
    files: dict[str, bytes] = {name: (checkout / name).read_bytes() for name in source.recipe_files}
    for edit in source.adapt:
        text = files[edit.file].decode("utf-8", "replace")
        count = text.count(edit.search)
        if count != 1:
            snippet = edit.search.strip().splitlines()[0][:60]
            raise TaskError(
                f"{checkout / edit.file}: arl adapts the line `{snippet}` to run it as a trial, but it occurs "
                f"{count} times (expected once); use a checkout matching upstream {source.repository}"
            )
        files[edit.file] = text.replace(edit.search, edit.replace).encode()
    overlay = task.folder / "recipe"
    for path in sorted(p for p in overlay.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        files[path.relative_to(overlay).as_posix()] = path.read_bytes()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    target = cache_root() / task.name / "programs" / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    try:
        staging.rename(target)
    except OSError:  # another process materialized the same program first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def link_data(task: Task, data: Path, given_as: str = "--data") -> None:
    """Record the user's data folder in the task's cache, where its data.py looks for it."""
    if not data.is_dir():
        raise TaskError(f"{given_as} {data}: no such folder; it must hold the data of task {task.name} "
                        f"(`arl task check {task.name}` says what it needs)")
    cache = cache_root() / task.name
    cache.mkdir(parents=True, exist_ok=True)
    link = cache / DATA_LINK
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == data:
            return
        link.unlink()
    link.symlink_to(data, target_is_directory=True)


def forget_data(task: Task) -> None:
    """Remove the data link an earlier command left in the task's cache."""
    link = cache_root() / task.name / DATA_LINK
    if link.is_symlink():
        link.unlink()


def user_data(cache: Path, task_name: str, help_text: str) -> Path:
    """For a task's ``data.py``: the data folder ``bind`` linked, else one given by env or config file."""
    link = cache / DATA_LINK
    if link.is_symlink():
        data, given_as = Path(os.readlink(link)), "the data folder given for this task"
    else:
        found = locate(task_name, "data")
        if found is None:
            raise TaskError(f"task {task_name} reads its data from your disk and none was given: {help_text}")
        data, given_as = found
    if not data.is_dir():
        raise TaskError(f"{given_as} {data}: no such folder; {help_text}")
    return data


def require_files(data: Path, patterns: Sequence[str], help_text: str) -> None:
    """Every glob pattern matches at least one file under ``data``, else one line naming the first miss."""
    for pattern in patterns:
        if not any(p.is_file() for p in data.glob(pattern)):
            raise TaskError(f"data folder {data} has no {pattern}; {help_text}")


def expose(cache: Path, data: Path) -> None:
    """Make ``cache/train`` (what a recipe gets as ARL_DATA) the user's data folder; held-out stays empty."""
    train = cache / "train"
    if train.is_symlink():
        if Path(os.readlink(train)) == data:
            return
        train.unlink()
    elif train.is_dir():
        shutil.rmtree(train)
    train.symlink_to(data, target_is_directory=True)
    (cache / "heldout").mkdir(exist_ok=True)


# -- legality that code can and cannot check --------------------------------------------------


def declared_checks(task: Task) -> list[Check]:
    """The rules code cannot check, as checks that pass but say so (shown on every trial)."""
    return [Check(name=f"declared:{rule.name}", passed=True,
                  detail=f"declared, not checked by code: {rule.text}") for rule in task.declared]


# -- GPUs ----------------------------------------------------------------------------------------


def parse_devices(text: str) -> list[str]:
    """``--devices 0,1,2,3`` (or ``0-7``) as a list of CUDA device ids."""
    devices: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise TaskError(f"--devices {text}: range {part} runs backwards; write {hi}-{lo}")
            devices += [str(i) for i in range(lo, hi + 1)]
        else:
            devices.append(part)
    return devices


def device_sets(devices: Sequence[str], per_trial: int) -> list[list[str]]:
    """Disjoint sets of ``per_trial`` devices, one per trial slot; no GPU is ever in two sets.

    Devices left over (e.g. 3 of 11 when trials need 8) stay unused.
    """
    if per_trial < 1:
        raise TaskError(f"a trial needs at least one GPU to be placed on devices, not {per_trial}")
    seen: set[str] = set()
    for d in devices:
        if d in seen:
            raise TaskError(f"device {d} is listed twice in --devices; each GPU runs one trial at a time")
        seen.add(d)
    if len(devices) < per_trial:
        raise TaskError(f"a trial of this task needs {per_trial} GPUs but --devices gives "
                        f"{len(devices)} ({','.join(devices) or 'none'}); give at least {per_trial}")
    return [list(devices[i:i + per_trial]) for i in range(0, len(devices) - per_trial + 1, per_trial)]


def gpu_env(devices: Sequence[str]) -> dict[str, str]:
    """Environment for a trial placed on ``devices`` (added to the recipe's environment)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(devices), "ARL_GPUS": str(len(devices))}


# -- logs of GPU recipes -----------------------------------------------------------------------

#: Where an adapter's launcher leaves the recipe's log in ARL_OUT (``arl evaluate`` puts logs there too).
RUN_LOG = "run.log"


class RecordedRun(msgspec.Struct, frozen=True, kw_only=True):
    """What an evaluator reads off a log made elsewhere: its seed and its wallclock, where stated."""

    seed: int | None = None
    wall_s: float | None = None


def run_log(out: str | Path, stdout_tail: str) -> str:
    """The recipe's log of one run: ARL_OUT/run.log when the launcher left one, else stdout."""
    path = Path(out) / RUN_LOG
    return path.read_text(errors="replace") if path.is_file() else stdout_tail

"""Stand-in recipe source for adapter tasks: every declared knob of a file, in the form it declares.

A test that binds an adapter task (parameter-golf, nanochat-d12, airbench96) to a
stand-in checkout needs a file where every knob the manifest declares is found once
(``tasks.adapters.bind`` refuses a checkout otherwise). ``knob_source(task, file)``
writes those lines — an ``os.environ.get`` default in a ``Hyperparameters`` class,
``add_argument`` calls on a ``parser``, a ``hyp`` dict literal, top-level constants —
with each knob's value at the low end of its range, so a test can add its own code
around them. The values are arl's, not upstream's.
"""

from __future__ import annotations

import json

from arl.tasks.manifest import Knob, Task


def _value(knob: Knob) -> object:
    if knob.type == "choice":
        return knob.choices[0]
    if knob.type == "bool":
        return False
    if knob.type == "int":
        return int(knob.min)  # type: ignore[arg-type]
    return float(knob.min)  # type: ignore[arg-type]


def knobs_of(task: Task, file: str) -> list[Knob]:
    seen: dict[str, Knob] = {}
    for surface in task.surfaces:
        for knob in surface.knobs:
            if knob.file == file:
                seen.setdefault(knob.name, knob)
    return list(seen.values())


def knob_source(task: Task, file: str) -> str:
    """Python source defining every knob of ``file`` once (import os / argparse included)."""
    knobs = knobs_of(task, file)
    lines = ["import argparse", "import os", ""]
    consts = [k for k in knobs if k.where == "constant"]
    lines += [f"{k.name} = {_value(k)!r}" for k in consts]
    envs = [k for k in knobs if k.where == "env"]
    if envs:
        lines += ["", "class Hyperparameters:"]
        for k in envs:
            cast = {"int": "int", "float": "float"}.get(k.type, "str")
            value = _value(k)
            lines.append(f"    {k.name.lower()} = {cast}(os.environ.get({json.dumps(k.name)}, {value!r}))")
    args = [k for k in knobs if k.where == "argparse"]
    if args:
        lines += ["", "parser = argparse.ArgumentParser()"]
        for k in args:
            value = _value(k)
            kind = type(value).__name__
            lines.append(f"parser.add_argument({json.dumps(k.name)}, type={kind}, default={value!r})")
    dicts = [k for k in knobs if k.where == "dict"]
    if dicts:
        tree: dict = {}
        for k in dicts:
            top, *path = k.name.split(".")
            node = tree.setdefault(top, {})
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = _value(k)
        for top, value in tree.items():
            lines += ["", f"{top} = {{", *_entries(value, 1), "}"]
    return "\n".join(lines) + "\n"


def _entries(tree: dict, depth: int) -> list[str]:
    """A dict literal one entry a line, as recipes write them."""
    pad = "    " * depth
    out: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += [f"{pad}{key!r}: {{", *_entries(value, depth + 1), f"{pad}}},"]
        else:
            out.append(f"{pad}{key!r}: {value!r},")
    return out

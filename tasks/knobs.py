"""Where a knob's value lives in a recipe file, and how to read and rewrite it.

A knob is a top-level ``NAME = value`` constant of a recipe file (the way
recipes keep their hyperparameters at the top). Values are read and written as
source text, so a rewritten line keeps its comment and its file stays readable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*(#.*)?$", re.M)


def constants(source: bytes) -> dict[str, str]:
    """Top-level ``NAME = value`` constants of a recipe file (value as source text)."""
    try:
        text = source.decode()
    except UnicodeDecodeError:
        return {}
    return {m.group(1): m.group(2) for m in _CONSTANT.finditer(text)}


def constant_changes(parent: Mapping[str, bytes], child: Mapping[str, bytes]
                     ) -> dict[str, tuple[str | None, str | None]]:
    """NAME → (old, new) source text for every constant a Python file changed."""
    changes: dict[str, tuple[str | None, str | None]] = {}
    for path in sorted(parent.keys() | child.keys()):
        if parent.get(path) == child.get(path) or not path.endswith(".py"):
            continue
        a, b = constants(parent.get(path, b"")), constants(child.get(path, b""))
        for name in sorted(a.keys() | b.keys()):
            if a.get(name) != b.get(name):
                changes[name] = (a.get(name), b.get(name))
    return changes


def parse_value(text: str) -> object:
    """A constant's source text as a value: bool, int, float, else the unquoted string."""
    text = text.strip()
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip("'\"")


def format_value(value: object) -> str:
    """A value as recipe source text (floats keep a point, strings double quotes)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # double quotes, as recipes are written
    return str(value)


def set_constant(source: bytes, name: str, value: object) -> bytes:
    """Rewrite the ``NAME = value`` line of a recipe file, keeping its comment."""
    text = source.decode()
    pattern = re.compile(rf"^({re.escape(name)}\s*=\s*)(.+?)(\s*#.*)?$", re.M)
    new, n = pattern.subn(lambda m: m.group(1) + format_value(value) + (m.group(3) or ""), text, count=1)
    return new.encode() if n else source

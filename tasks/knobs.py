"""Where a knob's value lives in a recipe file, and how to read and rewrite it.

Recipes keep their hyperparameters in different places; a knob's ``where`` says
which (``name`` is how the file spells it):

============  =============================================  ==================
where         the value is                                   name
============  =============================================  ==================
``constant``  a top-level ``NAME = value``                   ``NAME``
``env``       the default of ``os.environ.get("NAME", v)``   ``NAME``
              (or ``os.getenv``), anywhere in the file
``argparse``  ``default=`` of ``add_argument("--flag", …)``  ``--flag``
``dict``      a key of a top-level dict literal              ``hyp.opt.lr``
============  =============================================  ==================

The file is parsed, not grepped: a name that appears only in a comment or a
string matches nothing, and a name that matches two places is refused (which
one would the tuner move?). Values are read and written as source text at the
exact place of the default, so a rewritten line keeps its comment and the file
stays readable. A default must be a number, a bool, a string or arithmetic on
numbers (``80*524288``); anything else is refused when the task is bound.
"""

from __future__ import annotations

import ast
import functools
import json
import operator
import re
import threading
from collections.abc import Mapping

WHERE = ("constant", "env", "argparse", "dict")
#: How a prompt says where a knob's value is (the adapters' launchers set no variable that
#: is a declared knob, so the value in the file is the value the recipe runs with).
PLACE = {"constant": "top-level constant", "env": "the default of os.environ.get",
         "argparse": "the argparse default", "dict": "an entry of the dict literal"}

_CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*(#.*)?$", re.M)


class _Site:
    """One place a knob's value is written: byte span of the default and its node."""

    def __init__(self, node: ast.expr, starts: list[int]) -> None:
        self.node = node
        self.line = node.lineno
        self.start = starts[node.lineno - 1] + node.col_offset
        self.end = starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[operator]


#: ``ast.parse`` from several threads at once fails at random on CPython 3.11 ("AST constructor
#: recursion depth mismatch", measured here with eight MCP clients submitting at once): one at a time.
_PARSING = threading.Lock()


@functools.lru_cache(maxsize=64)
def _parse(source: bytes) -> tuple[ast.Module, list[int]] | None:
    """The file's syntax tree and line offsets (cached: a tuner reads many knobs of one program)."""
    try:
        with _PARSING:
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return tree, starts


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _str(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _env_default(call: ast.Call, name: str) -> ast.expr | None:
    func = _dotted(call.func)
    if not (func.endswith("environ.get") or func in ("os.getenv", "getenv")):
        return None
    if not call.args or _str(call.args[0]) != name:
        return None
    if len(call.args) >= 2:
        return call.args[1]
    return next((k.value for k in call.keywords if k.arg == "default"), None)


def _argparse_default(call: ast.Call, name: str) -> ast.expr | None:
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument"):
        return None
    if name not in [_str(a) for a in call.args]:
        return None
    return next((k.value for k in call.keywords if k.arg == "default"), None)


def _dict_value(tree: ast.Module, name: str) -> list[ast.expr]:
    top, *path = name.split(".")
    found: list[ast.expr] = []
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if not any(isinstance(t, ast.Name) and t.id == top for t in targets) or stmt.value is None:
            continue
        node: ast.expr | None = stmt.value
        for key in path:
            if not isinstance(node, ast.Dict):
                node = None
                break
            node = next((v for k, v in zip(node.keys, node.values) if _str(k) == key), None)
            if node is None:
                break
        if node is not None and path:
            found.append(node)
    return found


def _nodes(tree: ast.Module, name: str, where: str) -> list[ast.expr]:
    if where == "constant":
        out = []
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
                out.append(stmt.value)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name \
                    and stmt.value is not None:
                out.append(stmt.value)
        return out
    if where == "dict":
        return _dict_value(tree, name)
    pick = _env_default if where == "env" else _argparse_default
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            default = pick(node, name)
            if default is not None:
                out.append(default)
    return out


@functools.lru_cache(maxsize=512)
def _sites(source: bytes, name: str, where: str) -> tuple[_Site, ...] | None:
    parsed = _parse(source)
    if parsed is None:
        return None
    tree, starts = parsed
    return tuple(sorted((_Site(n, starts) for n in _nodes(tree, name, where)), key=lambda s: s.start))


_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.Mod: operator.mod}


def _literal(node: ast.expr) -> object:
    """The value of a default: a constant, or arithmetic on numeric constants; ValueError otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        a, b = _literal(node.left), _literal(node.right)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            if type(node.op) is ast.Pow and abs(b) > 64:  # type: ignore[arg-type]
                raise ValueError("exponent too large")
            return _ARITH[type(node.op)](a, b)
    raise ValueError(ast.unparse(node))


def _form(name: str, where: str) -> str:
    return {"constant": f"line `{name} = …`", "env": f"os.environ.get({json.dumps(name)}, default)",
            "argparse": f"add_argument({json.dumps(name)}, …, default=…)",
            "dict": f"dict entry {name} (a top-level dict literal)"}.get(where, where)


def problem(source: bytes, name: str, where: str, file: str) -> str | None:
    """Why the knob cannot be read and set in this file (one line), or None when it can."""
    if where not in WHERE:
        return f"where = {where!r} is not one of {', '.join(WHERE)}"
    if where == "argparse" and not name.startswith("-"):
        return f"an argparse knob is named by its option, e.g. \"--{name.replace('_', '-')}\", not {name!r}"
    sites = _sites(source, name, where)
    if sites is None:
        if where == "constant" and re.search(rf"^{re.escape(name)}\s*=", source.decode(errors="replace"), re.M):
            return None  # not Python: the line form still works
        return f"{file} is not valid Python, so its {_form(name, where)} cannot be found"
    if not sites:
        return f"no {_form(name, where)} in {file}"
    if len(sites) > 1:
        lines = ", ".join(str(s.line) for s in sites)
        return f"{_form(name, where)} occurs {len(sites)} times in {file} (lines {lines}); a knob must name one place"
    try:
        _literal(sites[0].node)
    except ValueError as e:
        return (f"{_form(name, where)} in {file} line {sites[0].line}: default `{e}` is not a number, bool or "
                "string the tuner can set")
    return None


def read(source: bytes, name: str, where: str = "constant") -> str:
    """A knob's value as source text ('' when it cannot be read: see :func:`problem`)."""
    sites = _sites(source, name, where)
    if sites is None and where == "constant":  # not Python: the line form
        return constants(source).get(name, "")
    if not sites or len(sites) != 1:
        return ""
    node = sites[0].node
    try:
        value = _literal(node)
    except ValueError:
        return source[sites[0].start:sites[0].end].decode(errors="replace")
    if isinstance(node, ast.Constant):
        if isinstance(value, str) and where != "constant":
            # A string default (env values always are) read as the recipe parses it: "0.04" → 0.04.
            return value
        return source[sites[0].start:sites[0].end].decode()
    return format_value(value)


def write(source: bytes, name: str, where: str, value: object) -> bytes:
    """The file with the knob set to ``value`` (unchanged when the knob cannot be found once)."""
    sites = _sites(source, name, where)
    if sites is None:
        return set_constant(source, name, value) if where == "constant" else source
    if len(sites) != 1:
        return source
    site = sites[0]
    old = site.node
    if isinstance(old, ast.Constant) and isinstance(old.value, str) and where != "constant":
        # The recipe parses a string (env values always are): keep it a string of the same style.
        if isinstance(value, bool):
            text = ("1" if value else "0") if old.value in ("0", "1") else str(value)
        else:
            text = value if isinstance(value, str) else format_value(value)
        new = json.dumps(text)
    elif isinstance(old, ast.Constant) and isinstance(old.value, float) and isinstance(value, int) \
            and not isinstance(value, bool):
        new = format_value(float(value))
    else:
        new = format_value(value)
    return source[:site.start] + new.encode() + source[site.end:]


def settings(source: bytes) -> dict[str, str]:
    """Every settable value of a file by the name a knob would give it (value as source text).

    Top-level constants, env and argparse defaults found once, and the leaf entries of
    top-level dict literals (``hyp.opt.lr``): what scope checks and lineage compare.
    """
    return dict(_settings(source))


@functools.lru_cache(maxsize=256)
def _settings(source: bytes) -> tuple[tuple[str, str], ...]:
    out = constants(source)
    parsed = _parse(source)
    if parsed is None:
        return tuple(out.items())
    tree, starts = parsed
    seen: dict[str, int] = {}
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        keys = [k for k in (_str(a) for a in node.args) if k]
        for key in keys:
            default = _env_default(node, key)
            if default is None and key.startswith("-"):
                default = _argparse_default(node, key)
            if default is not None:
                seen[key] = seen.get(key, 0) + 1
                site = _Site(default, starts)
                text = _str(default)
                found[key] = text if text is not None else source[site.start:site.end].decode(errors="replace")
    out.update({k: v for k, v in found.items() if seen[k] == 1})
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                and isinstance(stmt.value, ast.Dict):
            out.update(_leaves(stmt.value, stmt.targets[0].id, source, starts))
    return tuple(out.items())


def _leaves(node: ast.Dict, prefix: str, source: bytes, starts: list[int]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in zip(node.keys, node.values):
        key = _str(k)
        if key is None:
            continue
        if isinstance(v, ast.Dict):
            out.update(_leaves(v, f"{prefix}.{key}", source, starts))
        else:
            site = _Site(v, starts)
            text = _str(v)
            out[f"{prefix}.{key}"] = text if text is not None else source[site.start:site.end].decode(errors="replace")
    return out


def constants(source: bytes) -> dict[str, str]:
    """Top-level ``NAME = value`` constants of a recipe file (value as source text)."""
    try:
        text = source.decode()
    except UnicodeDecodeError:
        return {}
    return {m.group(1): m.group(2) for m in _CONSTANT.finditer(text)}


def constant_changes(parent: Mapping[str, bytes], child: Mapping[str, bytes]
                     ) -> dict[str, tuple[str | None, str | None]]:
    """NAME → (old, new) source text for every setting (see :func:`settings`) a Python file changed."""
    changes: dict[str, tuple[str | None, str | None]] = {}
    for path in sorted(parent.keys() | child.keys()):
        if parent.get(path) == child.get(path) or not path.endswith(".py"):
            continue
        a, b = settings(parent.get(path, b"")), settings(child.get(path, b""))
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
        return int(text.replace("_", "")) if re.fullmatch(r"[+-]?\d[\d_]*", text) else int(text)
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

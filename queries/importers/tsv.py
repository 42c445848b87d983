"""Reading a results TSV the way its writers actually wrote it, repairing what can be repaired.

Text fields may be CSV-quoted (``"…"`` holding tabs and newlines); a stray
quote is closed at the end of its line, an unquoted line break is joined back
onto its row, an unquoted tab in a free-text column is re-joined, a truncated
row is padded. A row whose columns were *swallowed* — a tool-call fragment
(``…</hypothesis> <parameter name="notes">…``) in a quoted text field ate the
rest of the row, which survives space-joined at the end of that field — gets
its columns back from the field's tail (:func:`salvage_tail`), aligned by what
the file's well-formed rows show each column to look like.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from arl.queries.importers.core import Flagged, SourceError


@dataclass
class Cells:
    """One record of the file as split, before it is fitted to the header."""

    line: int
    raw: str
    fields: list[str]
    problems: list[str] = field(default_factory=list)


@dataclass
class TsvRow:
    line: int
    raw: str
    values: dict[str, str | None]
    problems: list[str]


class TsvFormat:
    """What differs between TSV sources: header, row start, which columns are text, statuses."""

    name: str
    row_start: re.Pattern[str]
    text_columns: frozenset[str]
    free_text: tuple[str, ...]  # where an unquoted tab most likely sits
    required: frozenset[str]
    status_column = "status"
    statuses: frozenset[str]

    def fatal(self, values: dict[str, str | None]) -> str | None:
        raise NotImplementedError


# --- splitting ------------------------------------------------------------------------------


def tokenize(text: str, row_start: re.Pattern[str], first_line: int) -> list[Cells]:
    """Split TSV text into records, CSV-quoting aware (``"…"`` may hold tabs and newlines).

    A quoted field that runs past a line starting a new row (an unterminated
    quote) is closed at that line break instead of swallowing the rest of the file.
    """
    records: list[Cells] = []
    i, n, line = 0, len(text), first_line
    delim = re.compile(r"[\t\n]")
    while i < n:
        start, fields, problems = i, [], []
        while True:
            if i < n and text[i] == '"':
                value, i, closed = _quoted(text, i + 1, row_start)
                if not closed:
                    # The quote was a stray character: its line splits on tabs as usual.
                    problems.append("unterminated quote closed at the end of its line")
                    fields += value.split("\t")
                    i = min(i + 1, n)  # past the newline
                    break
                m = delim.search(text, i)
                end = m.start() if m else n
                value += text[i:end].rstrip("\r")  # text after a closing quote, as csv does
                fields.append(value)
                i = end
            else:
                m = delim.search(text, i)
                end = m.start() if m else n
                fields.append(text[i:end].rstrip("\r"))
                i = end
            if i < n and text[i] == "\t":
                i += 1
                continue
            i = min(i + 1, n)  # past the newline
            break
        raw = text[start:i].rstrip("\n").rstrip("\r")
        records.append(Cells(line, raw, fields, problems))
        line += text.count("\n", start, i)
    return records


def _quoted(text: str, i: int, row_start: re.Pattern[str]) -> tuple[str, int, bool]:
    """A quoted field's value from just after its opening quote: (value, next index, closed)."""
    parts: list[str] = []
    while True:
        j = text.find('"', i)
        stop = len(text) if j < 0 else j
        k = text.find("\n", i, stop)
        while k >= 0:
            if row_start.match(text, k + 1):
                parts.append(text[i:k].rstrip("\r"))
                return "".join(parts), k, False
            k = text.find("\n", k + 1, stop)
        if j < 0:
            parts.append(text[i:].rstrip("\n"))
            return "".join(parts), len(text), False
        if text.startswith('""', j):
            parts.append(text[i : j + 1])
            i = j + 2
            continue
        parts.append(text[i:j])
        return "".join(parts), j + 1, True


def group(records: list[Cells], row_start: re.Pattern[str]) -> list[Cells]:
    """Join records split by an unquoted line break back onto the row they continue."""
    out: list[Cells] = []
    for r in records:
        if not r.raw.strip():
            continue  # blank line: not a row
        if out and not row_start.match(r.raw + "\n"):
            prev = out[-1]
            prev.fields[-1] += "\n" + r.fields[0]
            prev.fields += r.fields[1:]
            prev.raw += "\n" + r.raw
            prev.problems += r.problems
            if "unquoted line break re-joined" not in prev.problems:
                prev.problems.append("unquoted line break re-joined")
            continue
        out.append(r)
    return out


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- fitting a record to the header ------------------------------------------------------------


def recover(rec: Cells, header: list[str], fmt: TsvFormat) -> TsvRow | Flagged:
    """Fit a record's fields to the header, or say why it cannot be done."""
    width = len(header)
    candidates: list[tuple[list[str | None], str | None]] = []
    fields: list[str | None] = list(rec.fields)
    if len(fields) == width:
        candidates.append((fields, None))
    elif len(fields) > width:
        extra = len(fields) - width
        for col in fmt.free_text:
            if col not in header:
                continue
            at = header.index(col)
            joined = fields[:at] + ["\t".join(rec.fields[at : at + extra + 1])] + fields[at + extra + 1 :]
            candidates.append((joined, f"{extra} unquoted tab(s) in {col} re-joined"))
    else:
        padded = fields + [None] * (width - len(fields))
        candidates.append(
            (padded, f"row has {len(fields)} of {width} fields (truncated); the rest left empty")
        )
    # Of the readings that keep the row's id and status sensible, take the one with
    # the fewest measured fields that are not numbers (a misaligned reading has many).
    best: tuple[int, dict[str, str | None], str | None] | None = None
    first_problem = None
    for values_list, note in candidates:
        values = dict(zip(header, values_list, strict=True))
        problem = fmt.fatal(values)
        if problem is not None:
            first_problem = first_problem or problem
            continue
        bad = sum(1 for c, v in values.items() if v and c not in fmt.text_columns and not is_number(v))
        if best is None or bad < best[0]:
            best = (bad, values, note)
    if best is None:
        if len(fields) != width:
            first_problem = f"{first_problem} (row has {len(fields)} fields, header {width})"
        return Flagged(rec.line, first_problem or "unreadable row", rec.raw, first_field(rec))
    _, values, note = best
    return _checked(rec, values, list(rec.problems) + ([note] if note else []), fmt)


def _checked(rec: Cells, values: dict[str, str | None], problems: list[str], fmt: TsvFormat) -> TsvRow:
    for col, v in values.items():
        if v and col not in fmt.text_columns and not is_number(v):
            problems.append(f"{col}={v[:20]!r} is not a number; left empty")
            values[col] = None
    return TsvRow(rec.line, rec.raw, values, problems)


def first_field(rec: Cells) -> str | None:
    return rec.fields[0] if rec.fields and rec.fields[0] else None


def read_rows(path: Path, fmt: TsvFormat) -> tuple[list[str], list[TsvRow], list[Flagged]]:
    """Every row of a results TSV: recovered rows in file order, and those that could not be."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"no {path.name} in {path.parent}; give the folder of one run") from None
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror}; check the path and permissions") from e
    try:
        text = data.decode("utf-8")
        bad = None
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        bad = "bytes that are not UTF-8 replaced by \ufffd"
    text = text.replace("\r\n", "\n")
    first_nl = text.find("\n")
    header_text = text if first_nl < 0 else text[:first_nl]
    header = [h.strip() for h in header_text.split("\t")]
    missing = fmt.required - set(header)
    if missing:
        raise SourceError(
            f"{path} does not look like a {fmt.name} results.tsv: its header lacks "
            f"{', '.join(sorted(missing))}; check the format (arl import recipes|autoresearch PATH)"
        )
    body = "" if first_nl < 0 else text[first_nl + 1 :]
    got: list[TsvRow | tuple[Cells, Flagged]] = []
    for rec in group(tokenize(body, fmt.row_start, 2), fmt.row_start):
        row = recover(rec, header, fmt)
        got.append((rec, row) if isinstance(row, Flagged) else row)
    # Second pass: rows that failed may have had their columns swallowed by a text field;
    # what the well-formed rows look like tells which tail token is which column.
    model = ColumnModel(header, [r for r in got if isinstance(r, TsvRow) and not r.problems], fmt)
    rows: list[TsvRow] = []
    quarantined: list[Flagged] = []
    for item in got:
        if isinstance(item, tuple):
            rec, flagged = item
            salvaged = salvage_tail(rec, header, fmt, model)
            if salvaged is None:
                quarantined.append(flagged)
                continue
            item = salvaged
        if bad and "\ufffd" in item.raw:
            item.problems.append(bad)
        rows.append(item)
    return header, rows, quarantined


# --- swallowed columns ---------------------------------------------------------------------------

_NUMERIC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NONFINITE = frozenset({"nan", "-nan", "+nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"})
_NUMERIC_SHAPES = frozenset({"int", "sint", "float", "sfloat", "nonfinite"})
#: ``</hypothesis> <parameter name="notes">``: where a model's tool call leaked into a field.
_FRAGMENT = re.compile(r"\s*</[A-Za-z_]\w*>\s*<parameter\s+name=\"([A-Za-z_]\w*)\">\s*")
_CLOSING = re.compile(r"\s*(?:</[A-Za-z_]\w*>\s*)+$")


def shape(token: str) -> str:
    """A token's kind: empty, int / sint (signed), float / sfloat, nonfinite, path or word."""
    if not token:
        return "empty"
    if token.lower() in _NONFINITE:
        return "nonfinite"
    if _NUMERIC.fullmatch(token):
        signed = "s" if token[0] in "+-" else ""
        return signed + ("int" if re.fullmatch(r"[+-]?\d+", token) else "float")
    return "path" if "/" in token else "word"


class ColumnModel:
    """What each column looks like in the file's well-formed rows: its kinds of value, the
    decades its numbers span, and how often it is empty for each status."""

    def __init__(self, header: list[str], rows: list[TsvRow], fmt: TsvFormat) -> None:
        self.fmt = fmt
        self.shapes: dict[str, Counter[str]] = {c: Counter() for c in header}
        self.decades: dict[str, tuple[float, float]] = {}
        self.filled: Counter[tuple[str, str]] = Counter()  # (column, status) → rows with a value
        self.rows_of: Counter[str] = Counter()  # status → rows
        self.status_count: Counter[str] = Counter()
        for r in rows:
            status = (r.values.get(fmt.status_column) or "").strip()
            self.rows_of[status] += 1
            self.status_count[status] += 1
            for c in header:
                v = (r.values.get(c) or "").strip()
                if not v:
                    continue
                self.filled[(c, status)] += 1
                kind = shape(v)
                self.shapes[c][kind] += 1
                if kind in ("int", "sint", "float", "sfloat") and float(v):
                    d = _decade(float(v))
                    lo, hi = self.decades.get(c, (d, d))
                    self.decades[c] = (min(lo, d), max(hi, d))

    def empty_cost(self, col: str, status: str) -> float:
        n = self.rows_of[status]
        filled = self.filled[(col, status)]
        if not n:  # a status no clean row has: the column's emptiness overall
            n = sum(self.rows_of.values())
            filled = sum(v for (c, _), v in self.filled.items() if c == col)
        return -math.log((n - filled + 0.5) / (n + 1.0))

    def value_cost(self, col: str, token: str, status: str) -> float | None:
        """The cost of reading ``token`` as ``col``'s value for a row of ``status``; None: it cannot be."""
        kind = shape(token)
        numeric_col = col not in self.fmt.text_columns
        if numeric_col and kind not in _NUMERIC_SHAPES:
            return None
        if not numeric_col and kind in ("empty",):
            return None
        n = self.rows_of[status] or sum(self.rows_of.values())
        filled = self.filled[(col, status)] if self.rows_of[status] else sum(
            v for (c, _), v in self.filled.items() if c == col)
        cost = -math.log((filled + 0.5) / (n + 1.0))
        seen = self.shapes[col]
        total = sum(seen.values())
        count = float(seen[kind])
        if kind in ("int", "sint", "float", "sfloat"):
            # A sign is a habit of a column, not a law (its zeros are often unsigned).
            sibling = kind[1:] if kind.startswith("s") else "s" + kind
            count = max(seen[sibling] + seen[kind], count) if re.fullmatch(r"[+-]?0*\.?0*", token) \
                else count + 0.25 * seen[sibling]
        cost += -math.log((count + 0.2) / (total + 1.4)) if total else 1.0
        x = float(token) if kind in ("int", "sint", "float", "sfloat") else 0.0
        if x and col in self.decades:  # far outside the column's usual magnitudes: less likely, not impossible
            lo, hi = self.decades[col]
            d = _decade(x)
            cost += min(3.0, max(0.0, lo - d - 0.5, d - hi - 0.5))
        return cost

    def status_cost(self, token: str) -> float | None:
        if token not in self.fmt.statuses:
            return None
        total = sum(self.status_count.values())
        return -math.log((self.status_count[token] + 0.5) / (total + 0.5 * len(self.fmt.statuses)))


def _decade(x: float) -> float:
    return math.log10(abs(x))


def salvage_tail(rec: Cells, header: list[str], fmt: TsvFormat, model: ColumnModel) -> TsvRow | None:
    """Recover columns swallowed by a text field from that field's space-joined tail, or None."""
    fields = [f for f in rec.fields]
    while fields and not fields[-1].strip():
        fields.pop()
    if not fields or len(fields) >= len(header):
        return None
    host_col = header[len(fields) - 1]
    if host_col not in fmt.free_text or fmt.status_column not in header[len(fields):]:
        return None
    host = fields[-1].rstrip().rstrip('"').rstrip()
    # One token per whitespace character between: a doubled space is an empty column's trace,
    # and the text before the tail keeps its own spacing and line breaks.
    tokens = re.split(r"\s", host)
    starts = [0]
    for t in tokens[:-1]:
        starts.append(starts[-1] + len(t) + 1)
    rest = header[len(fields):]
    at_status = rest.index(fmt.status_column)
    before, after = rest[:at_status], rest[at_status + 1:]
    best: tuple[float, int, dict[str, str], int] | None = None  # (cost, start, values, status index)
    for p in range(len(tokens) - 1, 0, -1):
        status = tokens[p]
        s_cost = model.status_cost(status)
        if s_cost is None:
            continue
        tail = _align(tokens[p + 1:], after, status, model)
        if tail is None:
            continue
        for start in range(p, max(0, p - 2 * len(before) - 1) - 1, -1):
            if start == 0:
                continue  # the host field keeps some text of its own
            head = _align(tokens[start:p], before, status, model, free_tail=False)
            if head is None:
                continue
            cost = s_cost + tail[0] + head[0]
            if best is None or cost < best[0] - 1e-9:
                best = (cost, start, {**head[1], fmt.status_column: status, **tail[1]}, p)
    if best is None:
        return None
    _, start, recovered, _ = best
    values: dict[str, str | None] = dict(zip(header, fields[:-1], strict=False))
    text = host[: starts[start]].strip()
    moved: list[str] = []
    parts = _FRAGMENT.split(text)
    values[host_col] = _CLOSING.sub("", parts[0]).strip()
    for name, value in zip(parts[1::2], parts[2::2], strict=True):
        value = _CLOSING.sub("", value).strip()
        if name in header and name != host_col and not (recovered.get(name) or values.get(name)):
            recovered[name] = value
            moved.append(name)
        else:
            values[host_col] = f'{values[host_col]} <parameter name="{name}"> {value}'.strip()
    for col in rest:
        values[col] = recovered.get(col) or None
    if fmt.fatal(values) is not None:
        return None
    shown = ", ".join(f"{c}={recovered[c]!r}" for c in rest if recovered.get(c) and c not in moved)
    note = (f"{len([c for c in rest if recovered.get(c)])} swallowed columns recovered from the tail of "
            f"{host_col} ({shown})")
    if moved:
        note += f"; the tool-call fragment's {', '.join(moved)} moved back to its column"
    return _checked(rec, values, list(rec.problems) + [note], fmt)


def _align(tokens: list[str], columns: list[str], status: str, model: ColumnModel,
           *, free_tail: bool = True) -> tuple[float, dict[str, str]] | None:
    """The cheapest reading of ``tokens`` as ``columns`` in order (each column one token or empty);
    with ``free_tail`` a last free-text column may take every remaining token."""
    n, m = len(tokens), len(columns)
    inf = math.inf
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int, str | None] | None]] = [[None] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    free = columns[-1] if free_tail and columns and columns[-1] in model.fmt.free_text else None
    for i in range(n + 1):
        for j in range(m + 1):
            here = cost[i][j]
            if here == inf:
                continue
            if i < n and tokens[i] == "" and here + 0.5 < cost[i + 1][j]:  # extra spacing
                cost[i + 1][j], back[i + 1][j] = here + 0.5, (i, j, None)
            if j == m:
                continue
            col = columns[j]
            if col == free and j == m - 1:
                step = 0.0 if i == n else 4.0 + 4.0 * (n - i)  # a tail ends its field: text after it is a last resort
                if here + step < cost[n][m]:
                    cost[n][m], back[n][m] = here + step, (i, j, " ".join(tokens[i:]).strip())
                continue
            empty = here + model.empty_cost(col, status)
            if empty + 0.3 < cost[i][j + 1]:  # empty, its spacing collapsed
                cost[i][j + 1], back[i][j + 1] = empty + 0.3, (i, j, "")
            if i < n and tokens[i] == "" and empty < cost[i + 1][j + 1]:  # empty, spacing kept
                cost[i + 1][j + 1], back[i + 1][j + 1] = empty, (i, j, "")
            if i < n and tokens[i]:
                fit = model.value_cost(col, tokens[i], status)
                if fit is not None and here + fit < cost[i + 1][j + 1]:
                    cost[i + 1][j + 1], back[i + 1][j + 1] = here + fit, (i, j, tokens[i])
    if cost[n][m] == inf:
        return None
    values: dict[str, str] = {}
    i, j = n, m
    while (i, j) != (0, 0):
        step = back[i][j]
        assert step is not None
        pi, pj, value = step
        if pj != j and value:
            values[columns[pj]] = value
        i, j = pi, pj
    return cost[n][m], values

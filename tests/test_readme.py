"""The README's examples run, the way eventsourcing runs the snippets of its own docs.

Every fenced ``bash``, ``python``, ``toml`` or ``json`` block of README.md carries a
marker in the line before it:

    <!-- example: runs -->                 every command is run (bash: one per line,
                                           in order), the snippet executed, the file parsed
    <!-- example: not run — REASON -->     with the reason it cannot run here in seconds

A block without a marker fails this test, so a new example is either run or says why not.

Bash commands run with ``arl`` on the PATH in a scratch folder laid out so the README's
paths exist: ``path/to/task`` is the test suite's tiny task, ``path/to/results.tsv`` an
autoresearch log, ``path/to/journal.json``, ``openevolve_output``, ``evolution_db.sqlite`` and
``run.traj`` the other tools' outputs of tests/fixtures/imports, ``../shared`` the shared fixtures, and the default ledger
(``.arl/ledger.db``) already holds a tiny search and the paper's cifar run. The few
placeholders a person replaces (``SEARCH``, ``#12``) are replaced by :data:`PLACEHOLDERS`.
A command must exit 0, or the code its trailing comment names first (``# exit 2: …``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import shared_fixtures
from tests.factories import mlgym_trajectory

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- example: (runs|not run — (?P<why>.+?)) -->$")
CHECKED = ("bash", "python", "toml", "json")
#: What a person types instead of the README's placeholders (applied to run commands only).
PLACEHOLDERS = {
    "SEARCH#12": "tiny-search#1",
    "[SEARCH]": "tiny-search",
    "SEARCH": "tiny-search",
    "sqlite:///tmp/ledger.db": "sqlite:///{ledger}",
}


class Block:
    def __init__(self, lang: str, line: int, text: str, marker: str | None) -> None:
        self.lang, self.line, self.text, self.marker = lang, line, text, marker

    @property
    def runs(self) -> bool:
        return self.marker == "runs"

    def __repr__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before.strip())
        found.append(Block(fence[1], i + 1, "\n".join(lines[i + 1:end]),
                           None if marker is None else marker[1] if marker[1] == "runs" else "not run"))
        i = end + 1
    return found


def test_every_example_says_whether_it_runs():
    unmarked = [b for b in blocks() if b.lang in CHECKED and b.marker is None]
    assert not unmarked, (
        f"README blocks without a marker: {unmarked}; put `<!-- example: runs -->` (and make it run "
        "here in seconds) or `<!-- example: not run — REASON -->` on the line before each")
    for b in blocks():
        if b.marker == "not run":
            assert b.lang in CHECKED, f"{b}: only code blocks take a marker"


def test_the_two_commands_are_there_and_are_what_ci_runs():
    first, second = [b for b in blocks() if b.lang == "bash"][:2]
    assert "arl run golf-mini" in first.text and first.text.startswith("python3 -m venv .venv")
    assert second.text.rstrip().endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest -q" in ci and "pip install -q -e '.[test,tasks]'" in ci


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, Path]:
    """A scratch folder where the README's paths exist, with a ledger worth querying."""
    top = tmp_path_factory.mktemp("readme")
    work = top / "work"
    (work / "path" / "to").mkdir(parents=True)
    shutil.copytree(ROOT / "tests" / "tasks" / "tiny", work / "path" / "to" / "task")
    (work / "path" / "to" / "results.tsv").write_text(
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
        "b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04\n"
        "c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation\n")
    imports = ROOT / "tests" / "fixtures" / "imports"  # other tools' outputs (their README names them)
    shutil.copy(imports / "aide" / "regression" / "journal.json", work / "path" / "to" / "journal.json")
    shutil.copytree(imports / "openevolve" / "arc_task_0",
                    work / "path" / "to" / "openevolve_output" / "checkpoints")
    shutil.copy(imports / "shinka" / "pi" / "evolution_db.sqlite", work / "path" / "to")
    (work / "path" / "to" / "run.traj").write_text(mlgym_trajectory()[0])
    (work / "path" / "to" / "notes.txt").write_text("not a trajectory\n")
    (top / "shared").symlink_to(shared_fixtures().parent)
    env = _env(top)
    for argv in (["run", "path/to/task", "--trials", "2", "--name", "tiny-search"],
                 ["import", "recipes", str(shared_fixtures("auto-research-recipes", "cifar"))],
                 ["import", "recipes", str(shared_fixtures("auto-research-recipes", "pg_ablation_lineage_on"))]):
        done = subprocess.run([sys.executable, "-m", "arl.runners.cli", *argv], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    return {"top": top, "work": work, "ledger": work / ".arl" / "ledger.db"}


def _env(top: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARL_")}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "ARL_CACHE": str(top / "cache"), "HOME": str(top / "home")}


def _commands(block: Block) -> list[str]:
    """One command per line; ``\\`` continues a line; comments and blank lines are not commands."""
    out, pending = [], ""
    for raw in block.text.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


def _expected_exit(command: str) -> int:
    comment = re.search(r"\s#\s*exit (\d+)", command)
    return int(comment[1]) if comment else 0


def _fill(command: str, place: dict[str, Path]) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        command = re.sub(rf"(?<![\w/#-]){re.escape(placeholder)}(?![\w])",
                         value.format(ledger=place["ledger"]), command)
    return command


RUNNABLE = [b for b in blocks() if b.runs]


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}" for b in RUNNABLE])
def test_the_example_runs(block: Block, place):
    if block.lang == "toml":
        tomllib.loads(block.text)
    elif block.lang == "json":
        json.loads(block.text)
    elif block.lang == "python":
        done = subprocess.run([sys.executable, "-c", block.text], cwd=place["work"], env=_env(place["top"]),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{block}: {done.stderr[-2000:]}"
    else:
        assert block.lang == "bash", f"{block}: cannot run a {block.lang or 'plain'} block"
        for command in _commands(block):
            filled = _fill(command, place)
            done = subprocess.run(["bash", "-c", filled], cwd=place["work"], env=_env(place["top"]),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
            assert done.returncode == _expected_exit(command), (
                f"{block}: `{filled}` exited {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")

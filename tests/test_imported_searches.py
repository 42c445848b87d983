"""An imported search is a search: the read tools over MCP, show, replay --verify, report and export.

It has no task folder, so nothing can run in it: ``submit`` is refused with a
readable error and the MCP server keeps answering; commands that would run
something (replay --rerun, fork) say why in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client, types

from arl.ledger import Ledger
from arl.queries.importers import import_openevolve, import_recipes
from tests.test_importers import OPENEVOLVE
from tests.test_queries_import import FIXTURES, needs_fixtures

ROOT = Path(__file__).resolve().parents[1]
CLIENT = types.Implementation(name="arl-test-client", version="2.0")


def _arl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arl.runners.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture
def imported(tmp_path) -> tuple[str, str, str]:
    """A ledger holding an OpenEvolve import (code known) and, with the fixtures, a recipes one."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        evolve = import_openevolve(ledger, OPENEVOLVE, name="arc").search_id
        recipes = import_recipes(ledger, FIXTURES / "pg_ablation_lineage_on").search_id if FIXTURES.is_dir() else ""
    return url, evolve, recipes


async def _json(session: ClientSession, name: str, arguments: dict) -> dict:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


def test_mcp_serves_the_read_tools_of_an_import_and_refuses_submit(imported, tmp_path):
    url, evolve, _ = imported
    params = StdioServerParameters(
        command=sys.executable, cwd=str(tmp_path), env={**os.environ},
        args=["-m", "arl.runners.cli", "mcp", "--store", url, "--search", evolve, "--specialist", "island0"])

    async def script() -> None:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, client_info=CLIENT) as session:
                await session.initialize()
                lineage = await _json(session, "lineage", {})
                assert lineage["best"]["seq"] == 1 and "Current best: trial 1" in lineage["text"]
                query = "SELECT seq, label, source_status FROM trials ORDER BY seq"
                rows = await _json(session, "sql", {"query": query})
                assert rows["rows"] == [[0, "baseline", "initial program"], [1, "keep", "evaluated"]]
                files = await _json(session, "read_program", {"trial": "best"})
                assert [f["path"] for f in files["files"]] == ["program.py"]
                source = await _json(session, "read_program", {"trial": "best", "path": "program.py"})
                assert "transform_grid_attempt_1" in source["text"]
                diff = await _json(session, "diff", {"trial": "#1"})
                assert diff["text"].startswith("diff --git a/program.py b/program.py")
                refused = await session.call_tool("submit", {"hypothesis": "try again", "edits": [
                    {"file": "program.py", "search": "import numpy as np", "replace": "import numpy"}]})
                assert refused.is_error
                message = refused.content[0].text
                assert "is an import from openevolve" in message and "nothing can be submitted" in message
                waited = await _json(session, "wait", {"trial": "#1", "timeout_s": 1})  # still answering
                assert waited["label"] == "keep" and not waited["timed_out"]

    anyio.run(script)
    with Ledger.open(url) as ledger:
        assert len([e for _, e in ledger.iter_events() if type(e).__name__ == "TrialProposed"]) == 2 + (
            201 if FIXTURES.is_dir() else 0)


def test_mcp_names_the_specialists_of_an_import(imported, tmp_path):
    url, evolve, _ = imported
    done = _arl("mcp", "--store", url, "--search", evolve, "--specialist", "optimizer", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.strip().count("\n") == 0
    assert "no specialist 'optimizer'" in done.stderr and "island0" in done.stderr


@needs_fixtures
def test_show_replay_verify_report_and_export_work_on_an_import(imported, tmp_path):
    url, evolve, recipes = imported
    shown = _arl("show", "--store", url, f"{recipes}#176", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "imported (recipes): 176 [keep], line" in shown.stdout and "label: keep" in shown.stdout
    verified = _arl("replay", "--store", url, recipes, "--verify", cwd=tmp_path)
    assert verified.returncode == 0 and "views identical to a rebuild" in verified.stdout
    rerun = _arl("replay", "--store", url, recipes, "--rerun", cwd=tmp_path)
    assert rerun.returncode == 2 and "is an import from recipes" in rerun.stderr
    assert rerun.stderr.strip().count("\n") == 0
    report = _arl("report", "--store", url, "--search", recipes, "-o", str(tmp_path / "r.html"), cwd=tmp_path)
    assert report.returncode == 0 and (tmp_path / "r.html").stat().st_size > 10_000
    exported = _arl("export", "csv", str(tmp_path / "csv"), "--store", url, cwd=tmp_path)
    assert exported.returncode == 0 and "trials.csv  (203 rows)" in exported.stdout
    path = _arl("query", "best_path", "--search", recipes, "--store", url, "--format", "json", cwd=tmp_path)
    steps = json.loads(path.stdout)
    assert steps[0]["label"] == "baseline" and steps[-1]["source_id"] == "176"

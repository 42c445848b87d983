"""The other tools' trajectories (AIDE, OpenEvolve, ShinkaEvolve, MLGym): real outputs and broken ones.

The outputs are in tests/fixtures/imports (origin and licence in its README).
Each test imports a real file, checks labels, lineage and code against what
the file says, then breaks a copy of it the way files break.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from arl.ledger import Ledger
from arl.ledger.verify import verify
from arl.queries.importers import (
    SourceError,
    detect,
    import_aide,
    import_mlgym,
    import_openevolve,
    import_path,
    import_shinka,
)
from arl.queries.load import connect
from arl.queries.named import run_named
from arl.queries.table import run_sql
from tests.factories import mlgym_trajectory

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "fixtures" / "imports"
AIDE = DATA / "aide" / "regression" / "journal.json"
OPENEVOLVE = DATA / "openevolve" / "arc_task_0" / "checkpoint_100"
SHINKA = DATA / "shinka" / "pi" / "evolution_db.sqlite"


@pytest.fixture(scope="module")
def mlgym(tmp_path_factory) -> Path:
    """An MLGym run folder (a trajectory and results.json), written by tests.factories."""
    folder = tmp_path_factory.mktemp("mlgym") / "blotto"
    folder.mkdir()
    traj, results = mlgym_trajectory()
    (folder / "blotto.traj").write_text(traj)
    (folder / "results.json").write_text(results)
    return folder / "blotto.traj"


def _trials(ledger: Ledger) -> list[dict]:
    con = connect(ledger)
    try:
        return run_sql(con, "SELECT t.*, p.source_id AS parent_source FROM trials t "
                            "LEFT JOIN trials p ON p.trial_id = t.parents[1] ORDER BY t.seq").records()
    finally:
        con.close()


def test_every_format_is_detected_from_its_content(mlgym):
    assert detect(AIDE) == "aide" and detect(AIDE.parent) == "aide"
    assert detect(OPENEVOLVE) == "openevolve" and detect(OPENEVOLVE.parent) == "openevolve"
    assert detect(SHINKA) == "shinka" and detect(SHINKA.parent) == "shinka"
    assert detect(mlgym) == "mlgym" and detect(mlgym.parent) == "mlgym"


# --- AIDE ----------------------------------------------------------------------------------


def test_aide_journal_becomes_a_tree_of_programs(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        result = import_aide(ledger, AIDE)
        assert (result.rows, result.trials, result.programs) == (7, 7, 7)
        assert not result.salvaged and not result.quarantined
        assert (result.lineage.named, result.lineage.resolved) == (5, 5)
        rows = _trials(ledger)
        assert [r["label"] for r in rows] == ["keep", "crash", "keep", "discard", "train_budget_overrun",
                                              "discard", "discard"]
        assert [r["surface"] for r in rows] == ["draft", "draft", "debug", "improve", "improve", "improve",
                                                "improve"]
        assert rows[1]["reason"] == "NameError: name 'intercep' is not defined"
        assert rows[4]["reason"].startswith("TimeoutError: Execution exceeded the time limit")
        assert rows[2]["score"] == pytest.approx(0.531581) and rows[2]["parent_source"] == rows[1]["source_id"]
        assert ledger.stream(result.search_id)[0].direction == "min"  # metric.maximize is false
        diff = ledger.get_blob(rows[2]["edit_digest"]).decode()
        assert "-print(f\"Validation RMSE: {rmse(lambda x: slope * x + intercep):.6f}\")" in diff
        best = [r["source_id"] for r in run_named(connect(ledger), "best_path").records()]
        assert best == [rows[1]["source_id"], rows[2]["source_id"]]  # the debug fixed the buggy draft
        assert verify(ledger).ok


def test_aide_journal_damage(tmp_path, sqlite_url):
    journal = json.loads(AIDE.read_text())
    journal["nodes"][0]["metric"]["value"] = float("nan")  # Python's json writes NaN
    journal["nodes"][3]["id"] = ""  # no id: quarantined, and its children lose their parent
    journal["nodes"][5]["ctime"] = 1e300  # not a time
    journal["node2parent"][journal["nodes"][6]["id"]] = "not-a-node"
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(journal))
    with Ledger.open(sqlite_url) as ledger:
        result = import_aide(ledger, path)
        assert (result.rows, result.trials, len(result.quarantined)) == (7, 6, 1)
        assert result.quarantined[0].reason.startswith("node has no id")
        rows = {r["hypothesis"][:12]: r for r in _trials(ledger)}
        assert rows["Draft: predi"]["label"] == "diverged"
        assert "metric.value=nan is not finite" in rows["Draft: predi"]["salvaged"]
        assert "ctime=1e+300 is not a Unix time" in rows["Improve: dro"]["salvaged"]
        assert result.lineage.breaks == {"parent not in the source": 1}
    (tmp_path / "cut.json").write_text(AIDE.read_text()[:500])
    (tmp_path / "other.json").write_text(json.dumps({"steps": []}))
    with Ledger.open(sqlite_url) as ledger:
        with pytest.raises(SourceError, match="is not readable JSON"):
            import_aide(ledger, tmp_path / "cut.json")
        with pytest.raises(SourceError, match="no 'nodes' list"):
            import_aide(ledger, tmp_path / "other.json")


# --- OpenEvolve ------------------------------------------------------------------------------


def test_openevolve_checkpoint_keeps_programs_islands_and_metrics(sqlite_url):
    with Ledger.open(sqlite_url) as ledger:
        result = import_openevolve(ledger, OPENEVOLVE)
        assert (result.trials, result.programs, result.lineage.resolved) == (2, 2, 1)
        base, child = _trials(ledger)
        assert base["label"] == "baseline" and base["score"] == 0.0 and base["agent"] == "island0"
        assert child["label"] == "keep" and child["score"] == 1.0 and child["parent_source"] == base["source_id"]
        assert child["hypothesis"] == "Change 1: Replace 31 lines with 96 lines"
        metrics = json.loads(child["metrics"])
        assert metrics["train_example_0_attempt_0"] == 1.0  # booleans become 0/1
        assert "+    1. Identify the bounding box" in ledger.get_blob(child["edit_digest"]).decode()


def test_openevolve_output_unites_checkpoints_and_flags_broken_programs(tmp_path, sqlite_url):
    out = tmp_path / "openevolve_output" / "checkpoints"
    shutil.copytree(OPENEVOLVE, out / "checkpoint_50")
    shutil.copytree(OPENEVOLVE, out / "checkpoint_100")
    programs = out / "checkpoint_100" / "programs"
    child = next(p for p in programs.glob("*.json") if "ce48590c" in p.name)
    data = json.loads(child.read_text())
    grandchild = {**data, "id": "g-1", "parent_id": data["id"], "timestamp": data["timestamp"] + 5,
                  "metrics": {"combined_score": float("inf")}}
    migrant = {**data, "id": data["id"] + "_migrant_1", "parent_id": data["id"], "timestamp": data["timestamp"] + 9,
               "metadata": {"island": 1, "migrant": True}}
    orphan = {**data, "id": "o-1", "parent_id": "pruned-long-ago", "timestamp": data["timestamp"] + 7,
              "metrics": {"error": 0.0, "combined_score": 0.0}}
    for p in (grandchild, migrant, orphan):
        (programs / f"{p['id']}.json").write_text(json.dumps(p))
    (programs / "broken.json").write_text('{"id": "b-1", "code": ')
    (programs / "linked.json").symlink_to(child)
    with Ledger.open(sqlite_url) as ledger:
        result = import_openevolve(ledger, tmp_path)
        assert result.trials == 5
        assert sorted(f.reason.split(" ")[0] for f in result.quarantined) == ["broken.json", "linked.json"]
        rows = {r["source_id"]: r for r in _trials(ledger)}
        assert rows["g-1"]["label"] == "diverged" and "not finite" in rows["g-1"]["reason"]
        assert rows[migrant["id"]]["label"] == "duplicate" and rows[migrant["id"]]["agent"] == "island1"
        assert rows["o-1"]["label"] == "crash" and rows["o-1"]["parents"] == []
        assert result.lineage.breaks == {"parent not in the source": 1}
        assert "2 checkpoint(s) read" in result.summary()
    with Ledger.open(sqlite_url) as ledger, pytest.raises(SourceError, match="holds no OpenEvolve checkpoint"):
        import_openevolve(ledger, tmp_path / "openevolve_output" / "checkpoints" / "checkpoint_50" / "programs")


# --- ShinkaEvolve ------------------------------------------------------------------------------


def test_shinka_database_is_read_without_writing_to_it(tmp_path, sqlite_url):
    copy = tmp_path / "evolution_db.sqlite"
    shutil.copy(SHINKA, copy)
    copy.chmod(0o444)
    before = copy.read_bytes()
    with Ledger.open(sqlite_url) as ledger:
        result = import_shinka(ledger, tmp_path)
        assert (result.trials, result.programs) == (7, 7)
        assert result.labels == {"baseline": 1, "crash": 1, "discard": 1, "duplicate": 1, "keep": 3}
        rows = {r["hypothesis"].split(" — ")[0]: r for r in _trials(ledger)}
        assert rows["broken_import"]["label"] == "crash"
        assert "No module named 'mpmath_not_installed'" in rows["broken_import"]["reason"]
        assert rows["machin"]["label"] == "keep" and rows["machin"]["parent_source"] == "p2"
        assert rows["fewer_terms"]["label"] == "discard"
        assert rows["machin"]["agent"] == "scripted" and rows["machin"]["surface"].startswith("island")
        assert "+def atan_inv" in ledger.get_blob(rows["machin"]["edit_digest"]).decode()  # Shinka's own diff
    assert copy.read_bytes() == before and not list(tmp_path.glob("*-wal"))


def test_shinka_run_still_writing_is_read_with_its_pending_log(tmp_path, sqlite_url):
    db = tmp_path / "evolution_db.sqlite"
    shutil.copy(SHINKA, db)
    writer = sqlite3.connect(db)  # a live run: its last program only in the write-ahead log
    writer.execute("PRAGMA journal_mode=wal")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO programs (id, code, language, parent_id, generation, timestamp, combined_score, "
                   "correct, children_count) VALUES ('p6', 'x = 1', 'python', 'p4', 6, 9e9, -1e-17, 1, 0)")
    writer.commit()
    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size > 0
    main_before, wal_before = db.read_bytes(), wal.read_bytes()
    try:
        with Ledger.open(sqlite_url) as ledger:
            result = import_shinka(ledger, db)
            assert result.trials == 8 and {r["source_id"] for r in _trials(ledger)} >= {"p6"}
        assert db.read_bytes() == main_before and wal.read_bytes() == wal_before  # untouched
    finally:
        writer.close()


def test_shinka_damage(tmp_path, sqlite_url):
    db = tmp_path / "evolution_db.sqlite"
    shutil.copy(SHINKA, db)
    con = sqlite3.connect(db)
    con.execute("UPDATE programs SET public_metrics = '{not json' WHERE id = 'p1'")
    con.execute("UPDATE programs SET combined_score = 9e999 WHERE id = 'p4'")  # +inf is storable
    con.execute("UPDATE programs SET parent_id = 'gone' WHERE id = 'p5'")
    con.commit()
    con.close()
    with Ledger.open(sqlite_url) as ledger:
        result = import_shinka(ledger, db)
        rows = {r["source_id"]: r for r in _trials(ledger)}
        assert "public_metrics is not JSON; left out" in rows["p1"]["salvaged"]
        assert rows["p4"]["label"] == "diverged"
        assert result.lineage.breaks == {"parent not in the source": 1}
    (tmp_path / "fake.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    (tmp_path / "text.db").write_text("hello")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE programs (id TEXT)").connection.commit()
    with Ledger.open(sqlite_url) as ledger:
        with pytest.raises(SourceError, match="damaged or not ShinkaEvolve|cannot open"):
            import_shinka(ledger, tmp_path / "fake.sqlite")
        with pytest.raises(SourceError, match="is not an SQLite database"):
            import_shinka(ledger, tmp_path / "text.db")
        with pytest.raises(SourceError, match="lacks code, generation, parent_id"):
            import_shinka(ledger, other)


# --- MLGym ------------------------------------------------------------------------------------


def test_mlgym_trajectory_becomes_one_trial_per_evaluation(sqlite_url, mlgym):
    with Ledger.open(sqlite_url) as ledger:
        result = import_mlgym(ledger, mlgym)
        rows = _trials(ledger)
        assert [(r["label"], r["source_status"]) for r in rows] == [
            ("baseline", "baseline"), ("keep", "validated"), ("crash", "failed"), ("keep", "validated"),
            ("keep", "submitted")]
        assert [r["score"] for r in rows] == pytest.approx([-0.24797, -0.00653, None, 0.02345, 0.02429], abs=1e-5)
        assert [r["parent_source"] for r in rows] == [None, "baseline", "step-4", "step-6", "step-8"]
        assert "Failed to decode metrics" not in rows[2]["reason"] and rows[2]["reason"]
        assert result.lineage.resolved == 4 and result.programs == 5
        # the baseline is the file as the agent first opened it; the first trial its first edit
        base_files = ledger.get_blob(rows[1]["edit_digest"]).decode()
        assert base_files.startswith("diff --git a/strategy.py b/strategy.py")
        assert "higher is better" in result.summary()


def test_mlgym_damage(tmp_path, sqlite_url, mlgym):
    traj = json.loads(mlgym.read_text())
    traj["trajectory"][3]["observation"] = traj["trajectory"][3]["observation"].replace(
        "Evaluation Score: {'Score': -0.006530000362545252}", "Evaluation Score: {'Score': nan}")
    traj["trajectory"].insert(5, "not a step")
    path = tmp_path / "run.traj"
    path.write_text(json.dumps(traj))
    with Ledger.open(sqlite_url) as ledger:
        result = import_mlgym(ledger, path, direction="max")
        rows = _trials(ledger)
        assert rows[1]["label"] == "diverged" and len(result.quarantined) == 1
        assert "not an object" in result.quarantined[0].reason
    (tmp_path / "a.traj").write_text("{}")
    (tmp_path / "b.traj").write_text("{}")
    with Ledger.open(sqlite_url) as ledger:
        with pytest.raises(SourceError, match="holds 3 of them"):
            import_mlgym(ledger, tmp_path)
        with pytest.raises(SourceError, match="no 'trajectory' list"):
            import_mlgym(ledger, tmp_path / "a.traj")


# --- the command line ----------------------------------------------------------------------------


def _arl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arl.runners.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_arl_import_detects_each_format_and_refuses_options_that_do_not_apply(tmp_path, mlgym):
    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    for path in (AIDE, OPENEVOLVE, SHINKA, mlgym):
        done = _arl("import", str(path), "--store", store, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "lineage:" in done.stdout and "labels:" in done.stdout
    again = _arl("import", "aide", str(AIDE), "--store", store, cwd=tmp_path)
    assert again.returncode == 0 and "already imported" in again.stdout
    bad = _arl("import", "shinka", str(SHINKA), "--direction", "min", "--store", store, cwd=tmp_path)
    assert bad.returncode == 2 and "--direction does not apply to shinka imports" in bad.stderr
    wrong = _arl("import", "mlgym", str(SHINKA), "--store", store, cwd=tmp_path)
    assert wrong.returncode == 2 and "not readable JSON" in wrong.stderr
    unknown = _arl("import", "weka", str(SHINKA), "--store", store, cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown format 'weka'" in unknown.stderr
    with Ledger.open(store) as ledger:
        assert import_path(ledger, mlgym).already

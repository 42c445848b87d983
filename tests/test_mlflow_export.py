"""MLflow export into a real SQLite tracking store, read back with the MLflow client.

One store for the whole module: creating it runs MLflow's database migrations (seconds);
each test exports into its own experiment.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from arl.ledger import Ledger
from arl.ledger import events as ev
from arl.queries.importers import import_recipes
from tests.needs import require
from tests.test_openlineage import ledger_url  # noqa: F401  (the tiny search, a fixture)
from tests.test_queries_import import FIXTURES, needs_fixtures

try:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType
except ImportError:  # the `mlflow` extra is not installed
    MlflowClient = None

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    require("mlflow", None if MlflowClient is not None else
            "mlflow-skinny is not installed (pip install -e '.[mlflow]')")
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the store (migrations) once
    return uri, tmp


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=5000))


def _export(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arl.runners.cli", "export", "mlflow", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@needs_fixtures
def test_the_imported_201_trial_run_becomes_201_nested_runs(store, tmp_path):
    from arl.queries.mlflow_export import export_mlflow

    uri, _ = store
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        search = import_recipes(ledger, FIXTURES / "pg_ablation_lineage_on").search_id
        first = export_mlflow(ledger, uri, experiment="release")
        labels = {e.originator_id: e for _, e in ledger.iter_events() if isinstance(e, ev.TrialLabeled)}
    assert (first.created, first.updated, first.unchanged) == (202, 0, 0)
    runs = _runs(uri, "release")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["arl.search_id"] == search and parent.info.run_name == "pg_ablation_lineage_on"
    assert parent.data.params["direction"] == "min" and parent.info.status == "FINISHED"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 201 and len(runs) == 202
    by_trial = {r.data.tags["arl.trial_id"]: r for r in nested}
    assert set(by_trial) == set(labels)
    for tid, run in by_trial.items():
        label = labels[tid]
        assert run.data.tags["arl.label"] == label.label.value
        assert run.data.params["agent"] and run.data.params["surface"]
        assert len(run.data.tags["arl.chain_link"]) == 64
        if label.score is not None:
            assert run.data.metrics["score"] == pytest.approx(label.score)
    scored = sum("score" in r.data.metrics for r in nested)
    assert scored == 190  # every trial but the 11 crashes, which have no score
    assert Counter(r.data.tags["arl.label"] for r in nested) == {
        "discard": 124, "eval_budget_overrun": 38, "keep": 16, "crash": 11, "size_violation": 11, "baseline": 1}
    assert Counter(r.info.status for r in nested) == {"FINISHED": 141, "FAILED": 60}
    with Ledger.open(url, read_only=True) as ledger:  # again: nothing new, nothing twice
        again = export_mlflow(ledger, uri, experiment="release")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 202)
    assert len(_runs(uri, "release")) == 202


def test_a_real_search_gets_params_metrics_and_artifacts(store, ledger_url, tmp_path):
    uri, _ = store
    url, search = ledger_url
    done = _export("--tracking-uri", uri, "--experiment", "tiny", "--store", url, "--search", search[:8], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run(s) created, 0 updated, 0 unchanged" in done.stdout
    client = MlflowClient(tracking_uri=uri)
    runs = _runs(uri, "tiny")
    with Ledger.open(url, read_only=True) as ledger:
        proposed = {e.originator_id: e for _, e in ledger.iter_events() if isinstance(e, ev.TrialProposed)}
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["arl.trial_id"] for r in nested} == set(proposed)
    legal = [r for r in nested if r.data.tags["arl.label"] in ("baseline", "keep", "discard")]
    assert legal and all("score" in r.data.metrics and r.data.metrics["run.wall_s"] > 0 for r in legal)
    changed = [r for r in nested if r.data.params["knobs_changed"] != "none"]
    assert changed, "the tuner changes knobs"
    for r in changed:
        for name in r.data.params["knobs_changed"].split(","):
            assert " -> " in r.data.params[f"knob.{name}"]
    for r in nested:
        p = proposed[r.data.tags["arl.trial_id"]]
        files = {a.path for a in client.list_artifacts(r.info.run_id)}
        if p.edit_digest:
            assert "diff.patch" in files
            text = Path(client.download_artifacts(r.info.run_id, "diff.patch", str(tmp_path))).read_text()
            assert text.startswith(("---", "diff")) or "@@" in text
        if r.data.tags["arl.label"] in ("keep", "discard"):
            assert files & {"run.log", "stdout_tail.txt", "stderr_tail.txt"}
        assert r.data.params["parents"] == (",".join(str(proposed[x].seq) for x in p.parents) or "none")
    # Artifacts of a local store go beside its database, not into the folder arl ran in.
    assert not (tmp_path / "mlruns").exists() and (Path(uri[len("sqlite:///"):]).parent / "mlflow-artifacts").is_dir()


def test_an_export_of_a_growing_ledger_is_incremental(store, ledger_url, tmp_path):
    """Half the log exported, then all of it: runs are brought up to date, none made twice, and the
    result is the same as one export of the whole log."""
    from arl.queries.mlflow_export import export_mlflow

    uri, _ = store
    source, _ = ledger_url
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(source, read_only=True) as a, Ledger.open(url) as b:
        b.put_blobs([row[2] for row in a.read_blob_rows(0, 1_000_000)])
        events = [e for _, e in a.iter_events()]
        half = len(events) // 2
        b.append(*events[:half])
        first = export_mlflow(b, uri, experiment="growing")
        pending = [r for r in _runs(uri, "growing") if r.data.tags.get("arl.label") == "pending"]
        assert pending and all(r.info.status == "RUNNING" for r in pending)
        b.append(*events[half:])
        second = export_mlflow(b, uri, experiment="growing")
        third = export_mlflow(b, uri, experiment="growing")
        whole = export_mlflow(b, uri, experiment="whole")
    assert first.created > 0 and second.updated >= len(pending) and second.created > 0
    assert (third.created, third.updated) == (0, 0)
    assert first.created + second.created == whole.created

    def view(experiment: str):
        return sorted((r.data.tags.get("arl.trial_id", ""), r.data.tags.get("arl.label"), r.info.status,
                       {k: v for k, v in r.data.metrics.items()}, dict(r.data.params))
                      for r in _runs(uri, experiment))

    assert view("growing") == view("whole")


def test_mlflow_usage_errors_are_one_line(store, ledger_url, tmp_path):
    from arl.queries.mlflow_export import MlflowError, export_mlflow

    uri, _ = store
    url, _ = ledger_url
    missing = _export("--store", url, cwd=tmp_path)
    assert missing.returncode == 2 and "give the MLflow tracking store" in missing.stderr
    stray = _export(str(tmp_path / "out"), "--tracking-uri", uri, "--store", url, cwd=tmp_path)
    assert stray.returncode == 2 and "mlflow writes to --tracking-uri" in stray.stderr
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("gone"))
    with Ledger.open(url, read_only=True) as ledger, pytest.raises(MlflowError, match="is deleted"):
        export_mlflow(ledger, uri, experiment="gone")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    with Ledger.open(empty) as ledger, pytest.raises(MlflowError, match="no search to export"):
        export_mlflow(ledger, uri)

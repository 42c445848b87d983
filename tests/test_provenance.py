"""Provenance export: PROV-JSON / PROV-N read back with `prov`, an RO-Crate read back with `rocrate`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from prov.model import ProvDerivation, ProvDocument
from rocrate.rocrate import ROCrate

from arl.ledger import Ledger
from arl.ledger.projections import rebuild
from arl.queries.provenance import export_prov, export_ro_crate
from arl.runners.search import SearchConfig, run_search

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "tasks" / "tiny")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prov")
    with pytest.MonkeyPatch.context() as patch:  # ARL_CACHE for this search only, not later tests
        patch.setenv("ARL_CACHE", str(tmp / "cache"))
        url = f"sqlite:///{tmp / 'ledger.db'}"
        with Ledger.open(url) as ledger:
            summary = run_search(ledger, TINY, SearchConfig(trials=8, workers=2, seed=5), out=io.StringIO())
    return url, summary.search_id, tmp


def test_prov_reads_back_and_matches_the_lineage(searched):
    url, search, tmp = searched
    with Ledger.open(url) as ledger:
        paths = export_prov(ledger, tmp / "prov", search)
        state = rebuild(ledger)
    doc = ProvDocument.deserialize(source=str(paths[0]), format="json")
    assert paths[1].read_text().startswith("document")
    ids = {str(r.identifier) for r in doc.get_records() if r.identifier is not None}
    rows = state.trials_of(search)
    for row in rows:  # every trial is there, with its proposal and labelling
        assert f"arl:proposal/{row.trial_id}" in ids and f"arl:labelling/{row.trial_id}" in ids
    program = {r.trial_id: r.program_digest for r in rows}
    expected = {(program[r.trial_id], program[p]) for r in rows for p in r.parents
                if program.get(r.trial_id) and program.get(p) and program[p] != program[r.trial_id]}
    derived = {(str(d.args[0]).split("/")[-1], str(d.args[1]).split("/")[-1])
               for d in doc.get_records(ProvDerivation)}
    assert derived == expected and expected
    kinds = {r.get_type().localpart for r in doc.get_records()}
    assert {"Usage", "Generation", "Derivation", "Association", "Communication"} <= kinds
    agents = {str(r.identifier) for r in doc.get_records() if r.get_type().localpart == "Agent"}
    assert any(a.startswith("arl:specialist/") for a in agents)
    assert any(a.startswith("arl:runner/") for a in agents) and any(a.startswith("arl:evaluator/") for a in agents)
    assert any(i.startswith("arl:data/") for i in ids) and any(i.startswith("arl:evaluator/tiny/") for i in ids)


def test_ro_crate_holds_prov_tables_and_kept_programs(searched):
    url, search, tmp = searched
    out = tmp / "crate"
    table = tmp / "trials.parquet"
    import duckdb

    duckdb.sql("COPY (SELECT 1 AS x) TO '%s' (FORMAT parquet)" % table)
    with Ledger.open(url) as ledger:
        metadata = export_ro_crate(ledger, out, search, tables=[table])
        kept = [r for r in rebuild(ledger).trials_of(search) if r.label.value in ("keep", "baseline")]
    crate = ROCrate(str(out))
    assert "https://w3id.org/ro/wfrun/process/0.5" in str(crate.root_dataset.properties())
    ids = {e.id for e in crate.get_entities()}
    assert "provenance/prov.json" in ids and "tables/trials.parquet" in ids
    for row in kept:
        assert f"programs/{row.trial_id}/" in ids
        assert (out / "programs" / row.trial_id / "train.py").is_file()
    assert json.loads(metadata.read_text())["@graph"]


def test_export_commands(searched, tmp_path):
    import subprocess
    import sys

    url, search, _ = searched
    arl = [sys.executable, "-m", "arl.runners.cli", "export"]
    prov = subprocess.run([*arl, "prov", str(tmp_path / "p"), "--store", url, "--search", search[:8]],
                          capture_output=True, text=True, cwd=ROOT)
    assert prov.returncode == 0, prov.stderr
    assert ProvDocument.deserialize(source=str(tmp_path / "p" / "prov.json"), format="json").get_records()
    crate = subprocess.run([*arl, "ro-crate", str(tmp_path / "c"), "--store", url],
                           capture_output=True, text=True, cwd=ROOT)
    assert crate.returncode == 0, crate.stderr
    ids = {e.id for e in ROCrate(str(tmp_path / "c")).get_entities()}
    assert {"tables/trials.parquet", "tables/events.parquet", "provenance/prov.provn"} <= ids

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


def test_prov_o_turtle_and_json_ld_give_the_best_trials_derivation_chain(searched, tmp_path):
    """PROV-O parsed by rdflib: a SPARQL property path walks from the best trial's program back to
    the base program, through exactly the programs of the best trial's lineage."""
    import rdflib

    url, search, _ = searched
    with Ledger.open(url) as ledger:
        paths = export_prov(ledger, tmp_path, search, formats=("ttl", "jsonld"))
        state = rebuild(ledger)
    assert [p.name for p in paths] == ["prov.ttl", "prov.jsonld"]
    best = state.searches[search].best_trial
    chain = [state.trials[t] for t in state.lineage(best)]
    assert chain[0].seq == 0 and len({r.program_digest for r in chain}) >= 2, "the best improved on the base"
    arl = "https://arl.dev/ns/prov#"
    query = f"""
        PREFIX prov: <http://www.w3.org/ns/prov#>
        SELECT ?ancestor ?trial WHERE {{
            <{arl}program/{state.trials[best].program_digest}> prov:wasDerivedFrom* ?ancestor .
            ?ancestor prov:wasGeneratedBy|prov:qualifiedGeneration/prov:activity ?proposal .
            ?proposal a <{arl}Proposal> ; <{arl}trial> ?trial .
        }}"""
    base = f"{arl}program/{chain[0].program_digest}"
    for path, fmt in zip(paths, ("turtle", "json-ld"), strict=True):
        g = rdflib.Graph().parse(path, format=fmt)
        found = {(str(a), str(t)) for a, t in g.query(query)}
        ancestors = {a for a, _ in found}
        assert ancestors == {f"{arl}program/{r.program_digest}" for r in chain}
        assert {t for _, t in found} >= {r.trial_id for r in chain}
        assert base in ancestors
        roots = g.query(f"PREFIX prov: <http://www.w3.org/ns/prov#> ASK {{ <{base}> prov:wasDerivedFrom ?x }}")
        assert not roots.askAnswer  # the base program derives from nothing
        kinds = {str(o) for o in g.objects(None, rdflib.RDF.type)}
        assert {f"{arl}Proposal", f"{arl}Run", f"{arl}Evaluation", "http://www.w3.org/ns/prov#Activity"} <= kinds


def test_export_prov_format_option(searched, tmp_path):
    import subprocess
    import sys

    import rdflib

    url, search, _ = searched
    arl = [sys.executable, "-m", "arl.runners.cli", "export", "prov", str(tmp_path), "--store", url]
    done = subprocess.run([*arl, "--format", "ttl"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "prov.ttl"), done.stderr
    assert len(rdflib.Graph().parse(tmp_path / "prov.ttl", format="turtle")) > 100
    wrong = subprocess.run([*arl, "--format", "xml"], capture_output=True, text=True, cwd=ROOT)
    assert wrong.returncode == 2 and "invalid choice: 'xml'" in wrong.stderr
    crate = subprocess.run([sys.executable, "-m", "arl.runners.cli", "export", "ro-crate", str(tmp_path / "c"),
                            "--format", "ttl", "--store", url], capture_output=True, text=True, cwd=ROOT)
    assert crate.returncode == 2 and "--format is for prov" in crate.stderr

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


CONTEXT_11 = ROOT / "tests" / "fixtures" / "ro-crate" / "context-1.1.jsonld"


@pytest.fixture(scope="module")
def offline_validator(tmp_path_factory):
    """roc-validator, offline: the RO-Crate 1.1 context it would fetch is put into its HTTP cache
    (tests/fixtures/ro-crate); its profiles ship with it."""
    try:
        import requests
        import urllib3
        from requests_cache import CachedSession
        from rocrate_validator import models, services
    except ImportError as e:
        from tests.needs import require

        require("rocrate_validator", f"roc-validator is not installed ({e.name}); pip install roc-validator")
    cache = tmp_path_factory.mktemp("roc-http") / "cache"
    url = "https://w3id.org/ro/crate/1.1/context"
    body = CONTEXT_11.read_bytes()
    response = requests.Response()
    response.status_code, response.reason, response.url, response._content = 200, "OK", url, body
    response.headers["Content-Type"] = "application/ld+json"
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers={"Content-Type": "application/ld+json"},
                                        status=200, preload_content=False, request_url=url)
    response.request = requests.Request("GET", url).prepare()
    CachedSession(cache_name=str(cache), backend="sqlite", expire_after=-1).cache.save_response(response)

    def validate(crate: Path, severity: str = "REQUIRED"):
        settings = models.ValidationSettings(
            rocrate_uri=str(crate), profile_identifier="provenance-run-crate-0.5",
            requirement_severity=models.Severity[severity], offline=True, cache_path=cache)
        return services.validate(settings)

    return validate


def test_the_crate_is_a_valid_provenance_run_crate(searched, tmp_path, offline_validator):
    url, search, _ = searched
    out = tmp_path / "crate"
    with Ledger.open(url) as ledger:
        export_ro_crate(ledger, out, search)
        state = rebuild(ledger)
    result = offline_validator(out)
    issues = [(i.check.name, i.message) for i in result.get_issues()]
    assert result.passed() and not issues, issues[:5]
    graph = {e["@id"]: e for e in json.loads((out / "ro-crate-metadata.json").read_text())["@graph"]}
    assert graph["ro-crate-metadata.json"]["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"}
    assert {"@id": "https://w3id.org/ro/wfrun/provenance/0.5"} in graph["./"]["conformsTo"]
    assert "url" not in graph["#arl"] and graph["#arl"]["softwareVersion"]  # arl is on no package index
    rows = state.trials_of(search)
    actions = {k: v for k, v in graph.items() if k.startswith("#trial/")}
    assert set(actions) == {f"#trial/{r.trial_id}" for r in rows}  # one action per trial
    for r in rows:
        a = actions[f"#trial/{r.trial_id}"]
        assert a["@type"] == "CreateAction" and a["instrument"]["@id"].startswith(f"#specialist/{search}/")
        assert a["startTime"] <= a["endTime"]
        if r.label.legal:
            assert a["actionStatus"]["@id"] == "http://schema.org/CompletedActionStatus"
            results = [x["@id"] for x in a["result"]] if isinstance(a["result"], list) else [a["result"]["@id"]]
            assert any(graph[x].get("identifier") == f"sha256:{r.program_digest}" for x in results)
        if r.parents:
            objects = a["object"] if isinstance(a["object"], list) else [a["object"]]
            assert any("program" in o["@id"] for o in objects)
        control = graph[f"#control/{r.trial_id}"]
        assert control["object"] == {"@id": f"#trial/{r.trial_id}"}
        assert graph[control["instrument"]["@id"]]["@type"] == "HowToStep"
    organize = graph[f"#organize/{search}"]
    assert organize["@type"] == "OrganizeAction" and organize["instrument"] == {"@id": "#arl"}
    assert organize["result"] == {"@id": f"#search/{search}"} and len(organize["object"]) == len(rows)
    assert graph[f"#search/{search}"]["instrument"] == {"@id": "workflow/searches.json"}


def test_the_validator_catches_a_crate_without_its_organising_action(searched, tmp_path, offline_validator):
    """The check above can fail: an OrganizeAction without its engine is refused."""
    url, search, _ = searched
    out = tmp_path / "crate"
    with Ledger.open(url) as ledger:
        metadata = export_ro_crate(ledger, out, search)
    doc = json.loads(metadata.read_text())
    for e in doc["@graph"]:
        if e["@id"] == f"#organize/{search}":
            del e["instrument"]
    metadata.write_text(json.dumps(doc))
    result = offline_validator(out)
    assert not result.passed()
    assert "OrganizeAction instrument" in {i.check.name for i in result.get_issues()}


@pytest.mark.shared("auto-research-recipes")
def test_the_imported_release_run_is_a_valid_provenance_run_crate(tmp_path, offline_validator):
    from arl.queries.importers import import_recipes
    from tests.test_queries_import import FIXTURES

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        search = import_recipes(ledger, FIXTURES / "pg_ablation_lineage_on").search_id
        export_ro_crate(ledger, tmp_path / "crate", search)
    result = offline_validator(tmp_path / "crate")
    assert result.passed(), [(i.check.name, i.message) for i in result.get_issues()][:5]
    graph = json.loads((tmp_path / "crate" / "ro-crate-metadata.json").read_text())["@graph"]
    assert sum(e["@id"].startswith("#trial/") for e in graph) == 201
    assert sum(e["@id"].startswith("#control/") for e in graph) == 201

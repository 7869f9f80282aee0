"""The CLI's one error path: every expected failure prints one clean line and exits 2, no traceback;
catalogue text reaches the terminal with its control characters escaped."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from kgrec.cli import app
from kgrec.cli.output import plain, safe
from kgrec.ingest.tables import CatalogTables, write_tables

ESC_TITLE = "\x1b[2J\x1b[Hfake prompt $ rm -rf /"


def kgrec(*args, code: int = 0, env: dict | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


@pytest.fixture(scope="module")
def shop(tiny_tables, tiny_bert_dir, tmp_path_factory):
    """A store whose product P03 has an escape sequence in its title, and two artifacts on it (MF-BPR, text)."""
    root = tmp_path_factory.mktemp("errors")
    products = tiny_tables.products.copy()
    products.loc[products["product_id"] == "P03", "title"] = ESC_TITLE
    write_tables(CatalogTables(products, tiny_tables.users, tiny_tables.interactions), root / "data")
    kgrec("ingest", root / "data", "--store", root / "store", "--no-progress")
    kgrec("train", "--store", root / "store", "--out", root / "mf", "--model", "mf-bpr", "--epochs", 1, "--json")
    bert = root / "bert"
    shutil.copytree(tiny_bert_dir, bert)
    kgrec("train", "--store", root / "store", "--out", root / "text", "--model", "text-zero-shot", "--text-model", bert, "--json")
    return root


def test_plain_escapes_control_characters_and_broken_unicode():
    assert plain("a\x1b[2Jb\r\n") == "a\\x1b[2Jb\\x0d\\x0a"
    assert plain("line one\nline two", lines=True) == "line one\nline two"
    assert plain("bad \udcff byte") == "bad \\udcff byte"
    assert safe("[red]x[/red]") == "\\[red]x\\[/red]"


def test_titles_with_escape_sequences_are_printed_escaped(shop):
    table = kgrec("similar", "P03", "-a", shop / "mf", "-k", 3).output
    assert "\x1b" not in table and "\\x1b[2J" in table
    out = kgrec("recommend", "U0", "-a", shop / "mf", "-k", 24, "--include-seen").output
    assert "\x1b" not in out and "\\x1b" in out
    why = kgrec("explain", "U0", "P03", "-a", shop / "mf").output
    assert "\x1b" not in why
    # JSON keeps the title as data (JSON escapes it)
    items = json.loads(kgrec("similar", "P01", "-a", shop / "mf", "-k", 24, "--json").stdout)[0]["items"]
    assert ESC_TITLE in {i["title"] for i in items}


@pytest.mark.parametrize("args, message", [
    (["similar", "x[/y]"], "unknown product id 'x[/y]'"),
    (["recommend", "U0", "--session", "NOPE"], "NOPE"),
    (["search", "drill", "--user-weight", "nan"], "must be a finite number"),
    (["search", "drill", "--lexical-weight", "2"], "--lexical-weight"),
    (["search", "bad \udcff bytes"], "is not valid UTF-8 text"),
    (["search", "   "], "is empty"),
    (["recommend", "U0", "-k", "0"], "-k"),
])
def test_bad_arguments(shop, args, message):
    result = kgrec(*args, "-a", shop / "mf" if args[0] != "search" else shop / "text", code=2)
    assert message in result.output


def test_missing_or_moved_text_model(shop, tmp_path):
    moved = kgrec("search", "drill", "-a", shop / "text", "--text-model", "/nonexistent", code=2)
    assert "/nonexistent" in moved.output and "not found" in moved.output
    artifact = tmp_path / "artifact"
    shutil.copytree(shop / "text", artifact)
    shutil.move(shop / "bert", tmp_path / "bert-moved")
    try:
        gone = kgrec("search", "drill", "-a", artifact, code=2)
        assert "bert" in gone.output and "not found" in gone.output
        assert kgrec("search", "drill", "-a", artifact, "--text-model", tmp_path / "bert-moved").output
    finally:
        shutil.move(tmp_path / "bert-moved", shop / "bert")
    bad = kgrec("evaluate", "--store", shop / "store", "--out", tmp_path / "r", "--text-model", tmp_path / "nope", code=2)
    assert "text model" in bad.output and "nope" in bad.output


def test_bad_stores_artifacts_and_ingest_options(shop, tmp_path):
    (tmp_path / "file").write_text("not a store")
    assert "is a file, not a store folder" in kgrec("ingest", shop / "data", "--store", tmp_path / "file", code=2).output
    assert "no knowledge-graph store here" in kgrec("train", "--store", tmp_path / "nothing", "--out", tmp_path / "a",
                                                    code=2).output
    assert "artifact folder not found" in kgrec("similar", "P01", "-a", tmp_path / "missing", code=2).output
    assert "--chunk-mb must be a number" in kgrec("ingest", shop / "data", "--store", tmp_path / "s", "--chunk-mb", "nan",
                                                  code=2).output
    bad_prior = kgrec("train", "--store", shop / "store", "--out", tmp_path / "p", "--text-prior", "nan", code=2).output
    assert "--text-prior" in bad_prior and "finite number" in bad_prior
    for bad, says in (("-1", "--cold-boost"), ("inf", "the cold boost must be a finite number")):
        assert says in kgrec("train", "--store", shop / "store", "--out", tmp_path / "c", "--cold-boost", bad, code=2).output
    assert "the graph encoder must be auto, sage or rgcn, got 'gat'" in kgrec(
        "train", "--store", shop / "store", "--out", tmp_path / "g", "--graph-encoder", "gat", code=2).output
    (tmp_path / "bad.yaml").write_text("ingest:\n  dangling: [1,\n")
    assert "mapping config" in kgrec("ingest", shop / "data", "--store", tmp_path / "s", "--config", tmp_path / "bad.yaml",
                                     code=2).output
    (tmp_path / "enc.toml").write_text('[csv]\nencoding = "klingon"\n')
    assert "unknown encoding: klingon" in kgrec("ingest", shop / "data", "--store", tmp_path / "s", "--config",
                                                tmp_path / "enc.toml", code=2).output
    assert "exists and is not empty" in kgrec("train", "--store", shop / "store", "--out", shop / "mf",
                                              "--model", "mf-bpr", code=2).output
    assert "unknown model 'nope'" in kgrec("train", "--store", shop / "store", "--out", tmp_path / "n", "--model", "nope",
                                           code=2).output


def test_unreachable_neo4j_is_a_message(shop):
    env = {"KGREC_NEO4J_URI": "bolt://127.0.0.1:1", "KGREC_NEO4J_USER": "neo4j", "KGREC_NEO4J_PASSWORD": "secret"}
    result = kgrec("ingest", shop / "data", "--store", "neo4j", code=2, env=env)
    assert "127.0.0.1:1" in result.output and "connect" in result.output.lower()

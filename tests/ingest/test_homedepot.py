"""kgrec.ingest.homedepot on a small hand-made file with known problems, through kgrec's own ingest,
and (when present) on the real Home Depot file in ../shared."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest

from kgrec.ingest.homedepot import convert_homedepot, read_homedepot, write_homedepot_tables
from kgrec.ingest.pipeline import IngestConfig, Ingestor
from kgrec.ingest.readers import SourceError
from kgrec.ingest.sources import discover
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.export import export_judgements, export_snapshot

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "homedepot-search" / "train.csv.zip"

HEADER = '"id","product_uid","product_title","search_term","relevance"'
ROWS = [  # data row number: (line, expected outcome)
    '2,100001,"Simpson Angle","angle bracket",3',                # 1 loaded
    '3,100001,"Simpson Angle, other title","l bracket",2.5',     # 2 loaded (second title ignored)
    '9,100002,"Café table","Café  Table",2.33',                  # 3 loaded, latin-1 é
    '10,100002,"x","CAFÉ table",2',                              # 4 duplicate of row 3 after normalisation
    '11,100003,"","drill",1',                                    # 5 loaded (empty title)
    '12,100003,"Drill 18V","drill bits",1.67',                   # 6 loaded: 100003's first non-empty title
    '13,,"No uid","saw",3',                                      # 7 product_uid missing
    '14,100004,"Saw","   ",3',                                   # 8 search_term missing
    '15,100004,"Saw","saw",abc',                                 # 9 relevance not_number
    '16,100004,"Saw","saw blade",3.5',                           # 10 out_of_range
    '17,100004,"Saw","saw blade",0.5',                           # 11 out_of_range
    '18,100004,"Saw","saw",',                                    # 12 relevance missing
    '19,100005,"Extra field","x",2,extra',                       # 13 field_count (reader)
    '20,100005,"Bulb","light bulb",inf',                         # 14 not_finite
    '21,,"Both bad","",xyz',                                     # 15 product_uid missing (first field wins)
    '22,100004,"Saw","Saw",3',                                   # 16 loaded, query spelled "Saw"
    '23,100005,"Bulb","light bulb",1',                           # 17 loaded
]
EXPECTED_REJECTS = [
    (4, "search_term", "duplicate"), (7, "product_uid", "missing"), (8, "search_term", "missing"),
    (9, "relevance", "not_number"), (10, "relevance", "out_of_range"), (11, "relevance", "out_of_range"),
    (12, "relevance", "missing"), (13, None, "field_count"), (14, "relevance", "not_finite"),
    (15, "product_uid", "missing"),
]
EXPECTED_JUDGEMENTS = [
    ("angle bracket", "angle bracket", "100001", 3.0),
    ("l bracket", "l bracket", "100001", 2.5),
    ("café table", "Café  Table", "100002", 2.33),
    ("drill", "drill", "100003", 1.0),
    ("drill bits", "drill bits", "100003", 1.67),
    ("saw", "Saw", "100004", 3.0),
    ("light bulb", "light bulb", "100005", 1.0),
]
EXPECTED_PRODUCTS = [
    ("100001", "Simpson Angle"), ("100002", "Café table"), ("100003", "Drill 18V"), ("100004", "Saw"), ("100005", "Bulb"),
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    """The sample as a latin-1 CSV and as a zip holding it in a folder."""
    out = tmp_path_factory.mktemp("homedepot")
    data = ("\r\n".join([HEADER, *ROWS]) + "\r\n").encode("latin-1")
    csv_path = out / "train.csv"
    csv_path.write_bytes(data)
    zip_path = out / "train.csv.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr("data/", "")
        z.writestr("data/train.csv", data)
    return {"csv": csv_path, "zip": zip_path, "dir": out}


def _rejects(data) -> list[tuple]:
    return [(int(r), f if isinstance(f, str) else None, why) for r, f, why in data.rejects[["row", "field", "reason"]].values]


@pytest.mark.parametrize("kind", ["csv", "zip"])
def test_every_row_is_loaded_or_rejected(sample, kind):
    data = read_homedepot(sample[kind])
    assert data.rows_read == len(ROWS) == len(data.judgements) + len(data.rejects)
    assert _rejects(data) == EXPECTED_REJECTS
    assert [tuple(r) for r in data.judgements[["query_id", "query", "product_id", "label"]].values] == EXPECTED_JUDGEMENTS
    assert data.judgements["label"].dtype == "float64"
    assert [tuple(r) for r in data.products[["product_id", "title"]].values] == EXPECTED_PRODUCTS
    dup = data.rejects.set_index("row").loc[4]
    assert "café table" in dup["message"] and "(row 3)" in dup["message"]
    assert data.rejects.set_index("row").loc[10, "value"] == "3.5"


def test_bad_sources(tmp_path):
    with pytest.raises(SourceError, match="file not found"):
        read_homedepot(tmp_path / "nope.csv")
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as z:
        z.writestr("a.csv", HEADER + "\n")
        z.writestr("b.csv", HEADER + "\n")
    with pytest.raises(SourceError, match="exactly one .csv"):
        read_homedepot(two)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a readable zip"):
        read_homedepot(tmp_path / "bad.zip")
    (tmp_path / "cols.csv").write_text("id,product_uid,search_term\n1,2,x\n")
    with pytest.raises(SourceError, match=r"cols.csv: missing columns \['product_title', 'relevance'\]"):
        read_homedepot(tmp_path / "cols.csv")
    with zipfile.ZipFile(tmp_path / "cols.zip", "w") as z:
        z.write(tmp_path / "cols.csv", "cols.csv")
    with pytest.raises(SourceError, match=r"cols.zip \(cols.csv\): missing columns"):
        read_homedepot(tmp_path / "cols.zip")


def test_converted_tables_go_through_kgrec_ingest(sample, tmp_path):
    tables = tmp_path / "tables"
    counts = convert_homedepot(sample["zip"], tables)
    assert counts == {"rows_read": 17, "loaded": 7, "rejected": 10, "queries": 7, "products": 5,
                      "reject_reasons": {"duplicate": 1, "field_count": 1, "missing": 4, "not_finite": 1,
                                         "not_number": 1, "out_of_range": 2}}
    assert sorted(p.name for p in tables.iterdir()) == ["judgements.csv", "products.jsonl"]
    # export_snapshot needs interactions, which Home Depot has none of: add two purchases
    pd.DataFrame({"user_id": ["u1", "u1"], "product_id": ["100001", "100004"], "order": [0, 1]}).to_csv(
        tables / "interactions.csv", index=False)
    found = discover([tables])
    assert sorted(s.kind for s in found.sources) == ["interaction", "judgement", "product"] and not found.skipped
    store = EmbeddedStore(tmp_path / "store")
    report = Ingestor(store, IngestConfig(state_dir=tmp_path / "store" / "_ingest")).run(found.sources)
    assert report.rejected == 0, report.rejects
    nodes = store.nodes("Product").set_index("product_id")["title"].to_dict()
    assert nodes == dict(EXPECTED_PRODUCTS)
    snapshot = export_snapshot(store)
    judged = export_judgements(store, snapshot)
    index = {p: i for i, p in enumerate(snapshot.id_maps["product"])}
    expected = sorted((q, text, index[p], label - 1.0) for q, text, p, label in EXPECTED_JUDGEMENTS)  # grades 0..2
    assert [tuple(r) for r in judged[["query_id", "query", "product", "label"]].values] == expected


def test_write_tables_round_trip(sample, tmp_path):
    data = read_homedepot(sample["csv"])
    paths = write_homedepot_tables(data, tmp_path / "out")
    back = pd.read_csv(paths["judgements"], dtype={"product_id": str}, keep_default_na=False)
    # the written label is the grade: the raters' mean minus 1 (0 = irrelevant)
    pd.testing.assert_frame_equal(back, data.judgements.assign(label=data.judgements["label"] - 1.0))
    products = pd.read_json(paths["products"], lines=True, dtype={"product_id": str})
    pd.testing.assert_frame_equal(products, data.products)


@pytest.mark.skipif(not REAL.exists(), reason=f"{REAL} is not present")
def test_real_home_depot_file():
    data = read_homedepot(REAL)
    assert data.rows_read == 74_067
    assert len(data.products) == 54_667
    # 11,795 distinct raw search terms; "fence  mesh" / "slide  bolt" fold into "fence mesh" / "slide bolt"
    assert data.judgements["query_id"].nunique() == 11_793
    assert data.rejects["reason"].tolist() == ["duplicate"] * 5
    assert len(data.judgements) == 74_062
    assert data.judgements["label"].between(1.0, 3.0).all() and data.judgements["label"].nunique() == 13


def test_cli_convert_homedepot_writes_tables_and_rejects(tmp_path):
    from typer.testing import CliRunner

    from kgrec.cli import app

    src = tmp_path / "train.csv"
    src.write_bytes(
        "id,product_uid,product_title,search_term,relevance\n"
        "1,100001,Angle Bracket,angle bracket,3\n"
        "2,100001,Angle Bracket,Angle  Bracket,2\n"
        "3,100002,L Bracket,l bracket,4\n".encode("latin-1")
    )
    result = CliRunner().invoke(app, ["convert-homedepot", str(src), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 judgements" in result.output and "2 rejected" in result.output
    rejects = (tmp_path / "out" / "rejects.csv").read_text()
    assert "duplicate" in rejects and "out_of_range" in rejects
    assert (tmp_path / "out" / "judgements.csv").read_text().count("\n") == 2

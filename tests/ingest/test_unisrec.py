from pathlib import Path

import pytest

from kgrec.ingest.unisrec import parse_item_text, read_unisrec, split_category_paths

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-scientific"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Glue, 8 oz. Tools Adhesives. Gorilla. ", ("Glue, 8 oz", "Tools Adhesives", "Gorilla")),
        ("Fan. . TPI. ", ("Fan", "", "TPI")),
        ("WD-40 Spray, 12 oz. (Pack of 1). . WD-40. ", ("WD-40 Spray, 12 oz. (Pack of 1)", "", "WD-40")),
        ("Tape. Tools Tapes. . ", ("Tape", "Tools Tapes", "")),
        ("Only a title", ("Only a title", "", "")),
    ],
)
def test_parse_item_text_from_the_right(text, expected):
    assert parse_item_text(text) == expected


def test_split_category_paths_cuts_where_paths_part():
    paths = [
        "Industrial & Scientific Tapes, Adhesives & Sealants Duct Tape",
        "Industrial & Scientific Tapes, Adhesives & Sealants Glue Sticks",
        "Industrial & Scientific Fasteners Screws",
        "",
    ]
    assert split_category_paths(paths) == [
        ["Industrial & Scientific", "Tapes, Adhesives & Sealants", "Duct Tape"],
        ["Industrial & Scientific", "Tapes, Adhesives & Sealants", "Glue Sticks"],
        ["Industrial & Scientific", "Fasteners Screws"],
        [],
    ]


def _write_unisrec(directory: Path) -> None:
    (directory / "X.item2index").write_text("A1\t0\nA2\t1\nA3\t2\nA4\t3\n")
    (directory / "X.user2index").write_text("u-one\t0\nu-two\t1\n")
    (directory / "X.text").write_text(
        "item_id:token\ttext:token_seq\n"
        "A1\tRed drill. Tools Power Drills. Acme. \n"
        "A2\tBlue saw. Tools Power Saws. Acme. \n"
        "A3\tGloves. . Bolt. \n"
        "A4\tTape. Tools Tape. . \n"
    )
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    # user 0 bought 0,1,2,3,0 ; the test file caps its history at 3 items
    (directory / "X.train.inter").write_text(head + "0\t0 1\t2\n0\t0\t1\n1\t3\t2\n")
    (directory / "X.valid.inter").write_text(head + "0\t0 1 2\t3\n1\t3 2\t1\n")
    (directory / "X.test.inter").write_text(head + "0\t1 2 3\t0\n1\t3 2 1\t0\n")


def test_read_unisrec_rebuilds_full_sequences(tmp_path):
    _write_unisrec(tmp_path)
    tables = read_unisrec(tmp_path, "X")
    inter = tables.interactions
    one = inter[inter.user_id == "u-one"].sort_values("order")
    assert one.product_id.tolist() == ["A1", "A2", "A3", "A4", "A1"]  # the capped first item is kept
    assert one.order.tolist() == [0, 1, 2, 3, 4]
    two = inter[inter.user_id == "u-two"].sort_values("order")
    assert two.product_id.tolist() == ["A4", "A3", "A2", "A1"]
    assert set(inter.event) == {"purchase"}
    products = tables.products.set_index("product_id")
    assert products.loc["A3", "category_path"] == [] and products.loc["A3", "brand"] == "Bolt"
    assert products.loc["A4", "brand"] == "" and products.loc["A1", "title"] == "Red drill"
    assert tables.users.user_id.tolist() == ["u-one", "u-two"]


def test_read_unisrec_reports_disagreeing_files(tmp_path):
    _write_unisrec(tmp_path)
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (tmp_path / "X.test.inter").write_text(head + "0\t1 2 3\t0\n1\t3 2 0\t1\n")
    with pytest.raises(ValueError, match="user 1: train, valid and test files disagree"):
        read_unisrec(tmp_path, "X")


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/amazon-scientific is absent")
def test_real_scientific_counts_and_committed_tables_agree():
    from kgrec.ingest.tables import read_tables

    tables = read_unisrec(SHARED)
    assert (len(tables.products), len(tables.users)) == (4385, 8442)
    # 59,384 interactions in the test sequences plus 43 older ones the 50-item cap cut off
    assert len(tables.interactions) == 59427
    committed = read_tables(Path(__file__).resolve().parents[2] / "data" / "amazon-scientific")
    assert committed.interactions.astype(str).equals(tables.interactions.astype(str))
    assert committed.products["product_id"].tolist() == tables.products["product_id"].tolist()

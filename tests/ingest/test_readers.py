"""The chunked readers: row/line numbers, encodings, quoting, block boundaries, file errors."""
from __future__ import annotations

import gzip

import pandas as pd
import pytest

from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source
from kgrec.ingest.readers import CsvDialect, CsvReader, ParquetReader, SourceError, detect_format
from kgrec.kg.embedded import EmbeddedStore

MESSY = (
    b'\xef\xbb\xbfa,b,c\r\n'            # BOM + CRLF header
    b'1,2,3\r\n'                        # row 1
    b'"x\ny",2,3\n'                      # row 2 spans lines 3-4
    b'4,5\n'                            # row 3: too few fields
    b'\n'                               # row 4: blank
    b'7,"unterminated,9\n'              # row 5: quote never closed
    b'10,11,12\n'                       # row 6
    b'\xff,1,2\n'                       # row 7: not UTF-8
    b'13,"a ""quoted"" word",15'        # row 8: no final newline
)


def read_all(reader):
    frames, rejects = [], []
    for chunk in reader:
        frames.append(chunk.frame.assign(_row=chunk.rows, _line=chunk.lines))
        rejects += [(r.row, r.line, r.reason) for r in chunk.rejects]
    return pd.concat(frames, ignore_index=True), rejects


@pytest.mark.parametrize("chunk", [1, 7, 30, 1 << 20])
def test_csv_rows_lines_and_reasons_do_not_depend_on_block_size(tmp_path, chunk):
    path = tmp_path / "messy.csv"
    path.write_bytes(MESSY)
    frame, rejects = read_all(CsvReader(path, chunk_bytes=chunk))
    assert frame[["a", "b", "c", "_row", "_line"]].values.tolist() == [
        ["1", "2", "3", 1, 2], ["x\ny", "2", "3", 2, 3], ["10", "11", "12", 6, 8], ["13", 'a "quoted" word', "15", 8, 10]]
    assert rejects == [(3, 5, "field_count"), (4, 6, "empty_line"), (5, 7, "malformed"), (7, 9, "bad_encoding")]


def test_gzip_latin1_and_tsv_without_quotes(tmp_path):
    path = tmp_path / "users.tsv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write("user_id\tcity\nu1\tK\xf6ln\nu2\t\"quoted\"\n".encode("latin-1"))
    assert detect_format(path) == "tsv"
    frame, rejects = read_all(CsvReader(path, CsvDialect(sep="\t", quote=None, encoding="latin-1")))
    assert frame["city"].tolist() == ["Köln", '"quoted"'] and rejects == []


def test_file_level_problems(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    reader = CsvReader(tmp_path / "empty.csv")
    assert list(reader) == [] and reader.warnings == ["empty file: no header, no rows"]
    (tmp_path / "dup.csv").write_bytes(b"a,a,,b\n1,2,3,4\n")
    reader = CsvReader(tmp_path / "dup.csv")
    assert list(next(iter(reader)).frame.columns) == ["a", "a__2", "column_3", "b"]
    assert len(reader.warnings) == 2
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        list(ParquetReader(tmp_path / "bad.parquet"))
    with pytest.raises(SourceError, match="cannot tell the format"):
        detect_format(tmp_path / "x.xlsx")
    store = EmbeddedStore(tmp_path / "store")
    report = Ingestor(store, IngestConfig()).run([Source("user", path=tmp_path / "bad.parquet"),
                                                  Source("user", path=tmp_path / "missing.csv")])
    assert [f.error is not None for f in report.files] == [True, True] and len(report.errors) == 2


def test_truncated_gzip_is_a_file_error_not_a_crash(tmp_path):
    path = tmp_path / "interactions.csv.gz"
    data = gzip.compress(b"user_id,product_id,order\n" + b"".join(b"u1,p1,%d\n" % i for i in range(6000)))
    path.write_bytes(data[: len(data) // 2])
    report = Ingestor(EmbeddedStore(tmp_path / "s"), IngestConfig(dangling={"product": "create"}, chunk_bytes=16_384)).run(
        [Source("interaction", path=path)])
    f = report.files[0]
    assert f.error and "reading stopped after row" in f.error and f.read == f.loaded + f.rejected


BIG = "x" * (140 * 1024)  # over csv's default field size limit of 128 KiB


@pytest.mark.parametrize("chunk", [1, 4096, 1 << 20])
@pytest.mark.parametrize(
    ("body", "titles"),
    [
        (f'1,"{BIG}"\n2,ok\n', [BIG, "ok"]),
        (f'1,"{BIG}\n{BIG}"\n2,ok\n', [f"{BIG}\n{BIG}", "ok"]),
        (f'1,"a ""{BIG}"""\n2,ok\n', [f'a "{BIG}"', "ok"]),
    ],
    ids=["one-line", "two-lines", "escaped-quotes"],
)
def test_a_quoted_field_over_128_kib_is_one_record(tmp_path, body, titles, chunk):
    path = tmp_path / "products.csv"
    path.write_text("product_id,title\n" + body)
    frame, rejects = read_all(CsvReader(path, chunk_bytes=chunk))
    assert rejects == []
    assert frame["product_id"].tolist() == ["1", "2"] and frame["title"].tolist() == titles
    assert frame["_row"].tolist() == [1, 2]
    store = EmbeddedStore(tmp_path / "store")
    report = Ingestor(store, IngestConfig(chunk_bytes=chunk)).run([Source("product", path=path)])
    assert (report.read, report.loaded, report.rejected) == (2, 2, 0)
    assert store.nodes("Product").set_index("product_id")["title"].str.len().to_dict() == {"1": len(titles[0]), "2": 2}


STRAY = [
    # (csv body after the header, loaded (id, row, line), rejects (row, line, reason))
    ('1,"abc\n2,fine\n3,fine\n4,x"y\n5,ok\n',
     [("2", 2, 3), ("3", 3, 4), ("4", 4, 5), ("5", 5, 6)], [(1, 2, "malformed")]),
    ('1,"abc\n2,fine\n3,"quoted ok"\n4,fine\n',
     [("2", 2, 3), ("3", 3, 4), ("4", 4, 5)], [(1, 2, "malformed")]),
    ('1,"abc\n2,fine\n3,"def\n4,fine\n5,ok\n',
     [("2", 2, 3), ("4", 4, 5), ("5", 5, 6)], [(1, 2, "malformed"), (3, 4, "malformed")]),
    ('1,ok\n2,"ab"c\n3,fine\n',
     [("1", 1, 2), ("3", 3, 4)], [(2, 3, "malformed")]),
    ('1,"abc\n2,fine\n3,fine\n',
     [("2", 2, 3), ("3", 3, 4)], [(1, 2, "malformed")]),
    ('1,"two\nlines"x\n2,fine\n',  # a two-line record broken after its closing quote: its lines are read apart
     [("2", 3, 4)], [(1, 2, "malformed"), (2, 3, "field_count")]),
]


@pytest.mark.parametrize("chunk", [1, 9, 1 << 20])
@pytest.mark.parametrize(("body", "loaded", "rejected"), STRAY, ids=[f"case{i}" for i in range(len(STRAY))])
def test_a_stray_quote_rejects_its_own_row_only(tmp_path, body, loaded, rejected, chunk):
    path = tmp_path / "users.csv"
    path.write_text("user_id,name\n" + body)
    frame, rejects = read_all(CsvReader(path, chunk_bytes=chunk))
    assert list(zip(frame["user_id"], frame["_row"], frame["_line"])) == loaded
    assert rejects == rejected
    report = Ingestor(EmbeddedStore(tmp_path / "store"), IngestConfig(chunk_bytes=chunk)).run([Source("user", path=path)])
    assert (report.read, report.loaded, report.rejected) == (len(loaded) + len(rejected), len(loaded), len(rejected))

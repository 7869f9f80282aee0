"""Fuzz target for the CLI's error path: arbitrary bytes in the files `kgrec ingest` reads end in
exit 0 (all loaded), 1 (rows rejected, each reported) or 2 (a clean one-line error) — never a
traceback — and the totals line always says read = loaded + rejected."""
from __future__ import annotations

import os
import re
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kgrec.cli import app

SETTINGS = settings(
    max_examples=int(os.environ.get("KGREC_HYPOTHESIS_EXAMPLES", "25")), deadline=timedelta(seconds=20), database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TOKENS = [b"", b",", b'"', b"\n", b"\r\n", b"u1", b"p1", b"purchase", b"nan", b"inf", b"1e400", b"\xff\xfe", b"\x1b[2J",
          b"[red]", b"x" * 200, b"\xc3\xa9", b"{", b"}", b'"a":', b"0", b"-1"]
HEADERS = [b"user_id,product_id,event,order\n", b"product_id,title,brand,category_path\n", b""]
NAMES = ["interactions.csv", "products.csv", "products.jsonl", "interactions.jsonl"]
TOTALS = re.compile(r"([\d,]+) rows read = ([\d,]+) loaded \+ ([\d,]+) rejected")


@SETTINGS
@given(name=st.sampled_from(NAMES), header=st.sampled_from(HEADERS),
       body=st.one_of(st.binary(max_size=400), st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)))
def test_any_bytes_end_in_rows_rejects_or_one_clean_error(name, header, body):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / name).write_bytes(header + body)
        result = CliRunner().invoke(app, ["ingest", str(data), "--store", str(Path(tmp) / "store"), "--no-progress",
                                          "--dangling", "product=create", "--dangling", "user=create"])
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    totals = TOTALS.search(result.output)
    if totals:
        read, loaded, rejected = (int(g.replace(",", "")) for g in totals.groups())
        assert read == loaded + rejected
        assert (result.exit_code == 1) == (rejected > 0) or result.exit_code == 2
    else:
        assert result.exit_code == 2 and "error:" in result.output

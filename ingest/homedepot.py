"""The Home Depot product search relevance data (Kaggle 2016) -> kgrec's judgement and product tables.

The source is ``train.csv`` (latin-1, inside ``train.csv.zip`` as distributed) with columns
``id, product_uid, product_title, search_term, relevance``: one row per (search term,
product) pair, ``relevance`` the mean of at least three raters' grades on 1 (irrelevant)
.. 3 (exactly relevant). :func:`read_homedepot` checks every row and returns

* ``products``: ``product_id`` (the product_uid as text), ``title`` (the first non-empty
  title the product has in the file; a product appears once per judged query and its
  titles are the same product, so later ones are ignored without a report);
* ``judgements``: ``query_id`` (:func:`normalise_query` of the search
  term, so spelling variants in case, Unicode form or spacing are one query), ``query``
  (the first spelling met, surrounding whitespace stripped), ``product_id``, ``label``
  (the raw 1..3 mean, float);
* ``rejects``: every row not loaded, once, with its 1-based data row number (the header
  is not a row), the field and a reason:

  ========================  ==============================================================
  reason                    when
  ========================  ==============================================================
  ``malformed`` ...         the CSV record cannot be parsed (see :mod:`kgrec.ingest.readers`)
  ``missing``               empty ``product_uid``, ``search_term`` (after normalisation)
                            or ``relevance``
  ``not_id``                ``product_uid`` with control characters / over 1024 characters,
                            or a normalised search term over 1024 characters
  ``not_number``            ``relevance`` is not a number (``not_finite``: inf / nan)
  ``out_of_range``          ``relevance`` outside [1, 3]
  ``duplicate``             the (query_id, product_id) pair of an earlier loaded row
  ========================  ==============================================================

  A row with several problems is listed once, for the first of product_uid, search_term,
  relevance. Products are taken from every row with a valid ``product_uid``, also rows
  whose judgement is rejected.

:func:`write_homedepot_tables` writes ``products.jsonl`` and ``judgements.csv`` which
``kgrec ingest DIR`` (:func:`kgrec.ingest.sources.discover`) recognises by name;
:func:`convert_homedepot` does both and returns the counts.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kgrec.ingest.readers import CsvDialect, CsvReader, SourceError, excerpt
from kgrec.ingest.validate import MAX_ID_LENGTH, convert_float, convert_id
from kgrec.kg.schema import normalise_queries

#: Columns the source must have (``id`` is optional and not used).
REQUIRED_COLUMNS = ("product_uid", "product_title", "search_term", "relevance")
#: The label scale: the mean of raters' grades 1 (irrelevant), 2 (partly), 3 (exactly relevant).
LABEL_RANGE = (1.0, 3.0)
REJECT_COLUMNS = ["row", "field", "reason", "message", "value"]

@dataclass
class HomeDepotData:
    """What :func:`read_homedepot` read (see the module docstring for the columns).

    Attributes:
        products: ``product_id`` (str), ``title`` (str), one row per product, file order.
        judgements: ``query_id``, ``query``, ``product_id`` (str), ``label`` (float), file order.
        rejects: ``row`` (1-based data row), ``field`` (or None), ``reason``, ``message``,
            ``value`` (an excerpt of the raw value), sorted by row.
        rows_read: data rows in the file (``len(judgements) + len(rejects)``).
        source: the path read.
    """

    products: pd.DataFrame
    judgements: pd.DataFrame
    rejects: pd.DataFrame
    rows_read: int = 0
    source: str = ""


def _csv_path(path: Path, workdir: Path) -> Path:
    """``path`` itself, or the single ``.csv`` member of a ``.zip`` extracted into ``workdir``."""
    if path.suffix.lower() != ".zip":
        return path
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{path}: not a readable zip file ({exc})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and m.filename.lower().endswith(".csv")
                   and not m.filename.startswith("__MACOSX/")]
        if len(members) != 1:
            names = [m.filename for m in members]
            raise SourceError(f"{path}: expected exactly one .csv file in the zip, found {names or 'none'}")
        out = workdir / Path(members[0].filename).name
        with archive.open(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def _read_rows(path: Path, encoding: str, name: str) -> tuple[pd.DataFrame, np.ndarray, list[dict]]:
    """Every parsable row (raw strings), its row numbers, and the reader's rejects; errors name ``name``."""
    reader = CsvReader(path, CsvDialect(encoding=encoding))
    frames, rows, rejects = [], [], []
    try:
        for chunk in reader:
            frames.append(chunk.frame)
            rows.append(chunk.rows)
            rejects += [{"row": r.row, "field": r.field, "reason": r.reason, "message": r.message, "value": r.value}
                        for r in chunk.rejects]
    except SourceError as exc:
        raise SourceError(str(exc).replace(str(path), name)) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in reader.columns]
    if missing:
        raise SourceError(f"{name}: missing columns {missing}; the file has {reader.columns}")
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype=str) for c in reader.columns}), np.zeros(0, np.int64), rejects
    frame = pd.concat(frames, ignore_index=True)
    return frame, np.concatenate(rows), rejects


def read_homedepot(path: str | Path, encoding: str = "latin-1") -> HomeDepotData:
    """Read and check the Home Depot ``train.csv`` (or the ``.zip`` holding it).

    Args:
        path: ``train.csv.zip`` (exactly one ``.csv`` member) or a plain ``.csv``.
        encoding: the CSV's encoding (default ``"latin-1"``, as distributed).

    Returns:
        :class:`HomeDepotData`; every data row is either a judgement or a reject.

    Raises:
        SourceError: the file is missing, not a zip with one CSV, has no header or lacks a
            required column (:data:`REQUIRED_COLUMNS`).
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: file not found")
    with tempfile.TemporaryDirectory(prefix="kgrec-homedepot-") as tmp:
        csv_path = _csv_path(path, Path(tmp))
        name = str(path) if csv_path == path else f"{path} ({csv_path.name})"
        frame, rows, reader_rejects = _read_rows(csv_path, encoding, name)

    n = len(frame)
    reason = np.full(n, "", dtype=object)
    field = np.full(n, None, dtype=object)
    message = np.full(n, "", dtype=object)

    def fail(mask: np.ndarray, column: str, why: str, text: str) -> None:
        new = mask & (reason == "")
        reason[new], field[new], message[new] = why, column, text

    pid = convert_id(frame["product_uid"])
    fail(pid.missing, "product_uid", "missing", "empty product_uid")
    fail(pid.bad, "product_uid", "not_id", "product_uid has control characters or is longer than 1024 characters")

    query_id = normalise_queries(frame["search_term"])
    fail((query_id == "").to_numpy(), "search_term", "missing", "empty search term")
    fail((query_id.str.len() > MAX_ID_LENGTH).to_numpy(), "search_term", "not_id",
         f"normalised search term longer than {MAX_ID_LENGTH} characters")

    label = convert_float(frame["relevance"])
    fail(label.missing, "relevance", "missing", "empty relevance")
    not_finite = np.zeros(n, bool)
    not_finite[list(label.reasons)] = True
    fail(label.bad & not_finite, "relevance", "not_finite", "relevance is not a finite number")
    fail(label.bad, "relevance", "not_number", "relevance is not a number")
    values = label.values.to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        outside = ~label.missing & ~label.bad & ((values < LABEL_RANGE[0]) | (values > LABEL_RANGE[1]))
    fail(outside, "relevance", "out_of_range", f"relevance outside [{LABEL_RANGE[0]:g}, {LABEL_RANGE[1]:g}]")

    pids = pid.values.astype(object).where(~pd.Series(pid.missing | pid.bad, index=frame.index), None)
    key = pd.DataFrame({"query_id": query_id, "product_id": pids})
    ok = reason == ""
    dup = np.zeros(n, bool)
    dup[ok] = key[ok].duplicated(keep="first").to_numpy()
    if dup.any():
        first_pos = key[ok].drop_duplicates(keep="first").reset_index().set_index(["query_id", "product_id"])["index"]
        firsts = first_pos.reindex(pd.MultiIndex.from_frame(key[dup])).to_numpy()
        fail(dup, "search_term", "duplicate", "")
        message[dup] = [f"query {q!r} already judges product {p} (row {rows[f]})"
                        for q, p, f in zip(key["query_id"][dup], key["product_id"][dup], firsts)]
    ok = reason == ""

    raw_query = frame["search_term"].astype(str).str.strip()
    judgements = pd.DataFrame({
        "query_id": query_id[ok].to_numpy(),
        "product_id": pids[ok].astype(str).to_numpy(),
        "label": values[ok].astype(np.float64),
    })
    first_spelling = pd.Series(raw_query[ok].to_numpy(), index=judgements["query_id"]).groupby(level=0, sort=False).first()
    judgements.insert(1, "query", judgements["query_id"].map(first_spelling).to_numpy())

    valid_pid = ~(pid.missing | pid.bad)
    titles = frame["product_title"].astype(str).str.strip()
    cat = pd.DataFrame({"product_id": pids[valid_pid].astype(str).to_numpy(), "title": titles[valid_pid].to_numpy()})
    cat["empty"] = cat["title"] == ""
    order = cat.reset_index().sort_values(["empty", "index"], kind="stable")  # first non-empty title wins
    chosen = order.drop_duplicates("product_id", keep="first").set_index("product_id")["title"]
    product_ids = cat["product_id"].drop_duplicates(keep="first")
    products = pd.DataFrame({"product_id": product_ids.to_numpy(), "title": chosen.reindex(product_ids).to_numpy()})

    bad = ~ok
    raw_values = np.full(n, None, dtype=object)
    for column in REQUIRED_COLUMNS:
        sel = bad & (field == column)
        raw_values[sel] = [excerpt(v) for v in frame[column].to_numpy()[sel]]
    row_rejects = pd.DataFrame({"row": rows[bad], "field": field[bad], "reason": reason[bad],
                                "message": message[bad], "value": raw_values[bad]})
    rejects = pd.concat([pd.DataFrame(reader_rejects, columns=REJECT_COLUMNS), row_rejects], ignore_index=True) \
        if reader_rejects else row_rejects
    rejects = rejects.astype({"row": "int64"}).sort_values("row", kind="stable", ignore_index=True)
    return HomeDepotData(products=products, judgements=judgements.reset_index(drop=True), rejects=rejects,
                         rows_read=n + len(reader_rejects), source=str(path))


def write_homedepot_tables(data: HomeDepotData, directory: str | Path) -> dict[str, Path]:
    """Write ``products.jsonl`` (product_id, title) and ``judgements.csv`` (query_id, query,
    product_id, label; UTF-8) into ``directory`` (created if needed), ready for
    ``kgrec ingest DIR``. Rejects are not written (see :attr:`HomeDepotData.rejects`).

    The written ``label`` is kgrec's relevance grade, ``relevance - 1``: 0 = irrelevant,
    2 = exact match (a judgement's gain is ``2^label - 1``, so an irrelevant product gains 0).

    Returns:
        ``{"products": path, "judgements": path}``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"products": directory / "products.jsonl", "judgements": directory / "judgements.csv"}
    products = data.products[["product_id", "title"]].astype({"product_id": str, "title": str})
    products.to_json(paths["products"], orient="records", lines=True, force_ascii=False)
    judgements = data.judgements[["query_id", "query", "product_id", "label"]]
    judgements = judgements.assign(label=judgements["label"] - LABEL_RANGE[0])
    judgements.to_csv(paths["judgements"], index=False, encoding="utf-8")
    return paths


def convert_homedepot(src: str | Path, directory: str | Path, encoding: str = "latin-1") -> dict[str, int | dict[str, int]]:
    """:func:`read_homedepot` ``src`` and :func:`write_homedepot_tables` into ``directory``.

    Returns:
        ``{"rows_read", "loaded", "rejected", "queries", "products"}`` counts, plus
        ``"reject_reasons"``: ``{reason: count}``.
    """
    data = read_homedepot(src, encoding=encoding)
    write_homedepot_tables(data, directory)
    return {
        "rows_read": data.rows_read,
        "loaded": len(data.judgements),
        "rejected": len(data.rejects),
        "queries": int(data.judgements["query_id"].nunique()),
        "products": len(data.products),
        "reject_reasons": {str(k): int(v) for k, v in data.rejects["reason"].value_counts().sort_index().items()},
    }

"""Adapter for RecBole atomic files (``.inter``, ``.item``, ``.user``, ``.kg``, ``.link``).

RecBole data sets are tab-separated files named ``<dataset>.<suffix>`` whose
header names every column ``name:type`` (``token``, ``token_seq``, ``float``,
``float_seq``), without quoting. They map onto kgrec's record kinds:

===========  ===========  ==================================================================
file         kind         columns
===========  ===========  ==================================================================
``.inter``   interaction  ``user_id``, ``item_id`` -> product_id, ``rating`` -> weight
                          (event ``rating``; without a rating column ``purchase``),
                          ``timestamp`` (seconds) -> timestamp and order
``.item``    product      ``item_id`` -> product_id, ``title`` / ``movie_title`` /
                          ``item_name`` -> title, ``brand``, ``price``
``.user``    user         ``user_id``
``.kg``      triple       ``head_id``, ``relation_id``, ``tail_id``: each relation becomes
                          its own relationship type (``film.film.directed_by`` ->
                          ``FILM_FILM_DIRECTED_BY``) between ``Entity`` nodes
``.link``    link         ``item_id``, ``entity_id`` -> ``(Entity)-[DESCRIBES]->(Product)``
===========  ===========  ==================================================================

Every other column is kept as a free attribute (``token_seq`` / ``float_seq``
values as their space-separated text). Without an ``.item`` file, products are
created from the interactions (dangling policy ``product=create``).
"""
from __future__ import annotations

from pathlib import Path

from kgrec.ingest.pipeline import Source
from kgrec.ingest.readers import CsvDialect, SourceError
from kgrec.ingest.validate import SourceOptions

SUFFIXES = {".inter": "interaction", ".item": "product", ".user": "user", ".kg": "triple", ".link": "link"}
TYPES = ("token", "token_seq", "float", "float_seq")
TITLE_COLUMNS = ("title", "movie_title", "item_name", "name")


def recbole_header(names: list[str]) -> list[str]:
    """``["item_id:token", "rating:float"]`` -> ``["item_id", "rating"]`` (names without a type stay)."""
    return [n.strip().rsplit(":", 1)[0] if ":" in n else n.strip() for n in names]


recbole_header.__name__ = "recbole_header"

DIALECT = CsvDialect(sep="\t", quote=None, header=recbole_header)


def _columns(path: Path) -> tuple[list[str], list[str]]:
    """(column names, warnings) from the header of an atomic file."""
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", "replace").rstrip("\r\n")
    raw = first.split("\t") if first else []
    warnings = []
    for name in raw:
        if ":" not in name:
            warnings.append(f"column {name!r} has no ':type'")
        elif name.rsplit(":", 1)[1] not in TYPES:
            warnings.append(f"column {name!r}: unknown RecBole type")
    return recbole_header(raw), warnings


def is_recbole_file(path: Path) -> bool:
    return path.suffix in SUFFIXES


def find_atomic_files(directory: Path, dataset: str | None = None) -> list[Path]:
    """The atomic files of ``dataset`` (default: the one data set in ``directory``)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    if dataset is None:
        names = sorted({p.stem for p in files})
        if len(names) > 1:
            raise SourceError(f"{directory}: several RecBole data sets {names}; name one")
    else:
        files = [p for p in files if p.stem == dataset]
    return files


def recbole_sources(paths: list[Path]) -> tuple[list[Source], dict[str, str]]:
    """Sources for RecBole atomic files, and the dangling-policy overrides they need."""
    sources: list[Source] = []
    kinds = {SUFFIXES[p.suffix] for p in paths}
    for path in paths:
        kind = SUFFIXES[path.suffix]
        columns, warnings = _columns(path)
        mapping: dict[str, str] = {}
        options = SourceOptions()
        if kind == "interaction":
            if "item_id" in columns:
                mapping["product_id"] = "item_id"
            if "rating" in columns:
                mapping["weight"] = "rating"
                options.default_event = "rating"
        elif kind == "product":
            if "item_id" in columns:
                mapping["product_id"] = "item_id"
            for name in TITLE_COLUMNS:
                if name in columns:
                    mapping["title"] = name
                    break
        elif kind == "link":
            if "item_id" in columns:
                mapping["product_id"] = "item_id"
        elif kind == "triple":
            mapping.update({f: c for f, c in (("head", "head_id"), ("relation", "relation_id"), ("tail", "tail_id"))
                            if c in columns})
        options.columns = mapping
        sources.append(Source(kind, path=path, format="tsv", dialect=DIALECT, options=options, warnings=warnings))
    overrides = {} if "product" in kinds else {"product": "create"}
    return sources, overrides

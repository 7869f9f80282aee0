"""Adapter for the Amazon/UniSRec files (``Scientific.text``, ``*.inter``, ``*2index``).

Turns the raw research files into the tables an e-commerce team would export:

* products: ``product_id`` (ASIN), ``title``, ``brand``, ``category_path`` (list of levels)
* users: ``user_id`` (reviewer id)
* interactions: ``user_id``, ``product_id``, ``event``, ``order`` (position in the
  user's history, 0 = oldest)

The text of an item is ``title. category path. brand. `` with the category levels
joined by spaces, so it is parsed from the right. The levels themselves carry no
separator; :func:`split_category_paths` recovers them from the shared prefixes of
all paths (see its docstring for the rule and its limits).

A review in the Amazon data is taken as a purchase (``event = "purchase"``), as in
the recommendation literature that uses these files.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from kgrec.ingest.tables import CatalogTables


def parse_item_text(text: str) -> tuple[str, str, str]:
    """Split ``"title. category path. brand. "`` into its three fields, from the right.

    Titles may themselves contain ``". "``; missing fields come back empty.

    >>> parse_item_text("Glue, 8 oz. Tools Adhesives. Gorilla. ")
    ('Glue, 8 oz', 'Tools Adhesives', 'Gorilla')
    >>> parse_item_text("Fan. . TPI. ")
    ('Fan', '', 'TPI')
    """
    body = text.rstrip(" ")
    if body.endswith("."):
        body = body[:-1]
    parts = body.rsplit(". ", 2)
    while len(parts) < 3:
        parts.insert(1, "")
    title, category, brand = (p.strip() for p in parts)
    return title, category, brand


_JOINERS = {"&", "and", "or", "of", "for", "the", "with", "to", "in"}


def split_category_paths(paths: list[str]) -> list[list[str]]:
    """Recover category levels from space-joined paths.

    Builds a token trie over all non-empty paths and cuts a path where the trie
    branches or where another path ends, i.e. where two categories of the catalogue
    part ways. A cut is skipped when it would leave a level ending in a joining word
    (``&``, ``and``, ``of``...) or ending with a comma, or when the next level
    would start with a lower-case word. Levels that no other path ever parts from
    stay merged (a chain ``A B`` with a single child is one level) — the names are a
    heuristic reading of the flattened text, the hierarchy they form is exact.

    Returns one list of levels per input path ([] for an empty path).
    """
    children: dict[tuple[str, ...], set[str]] = defaultdict(set)
    ends: set[tuple[str, ...]] = set()
    tokenised = [p.split() for p in paths]
    for tokens in tokenised:
        for i in range(len(tokens)):
            children[tuple(tokens[:i])].add(tokens[i])
        if tokens:
            ends.add(tuple(tokens))

    out: list[list[str]] = []
    for tokens in tokenised:
        levels: list[str] = []
        start = 0
        for i in range(1, len(tokens)):
            prefix = tuple(tokens[:i])
            if len(children[prefix]) < 2 and prefix not in ends:
                continue
            last, nxt = tokens[i - 1], tokens[i]
            if last.lower() in _JOINERS or last.endswith(",") or nxt[:1].islower():
                continue
            levels.append(" ".join(tokens[start:i]))
            start = i
        if tokens:
            levels.append(" ".join(tokens[start:]))
        out.append(levels)
    return out


def _read_inter(path: Path) -> list[tuple[str, list[str], str]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header[:3] != ["user_id:token", "item_id_list:token_seq", "item_id:token"]:
            raise ValueError(f"{path}: unexpected header {header}")
        for lineno, line in enumerate(fh, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(fields)}")
            user, history, target = fields
            rows.append((user, history.split(), target))
    return rows


def _read_index(path: Path) -> dict[str, str]:
    """``external id<TAB>index`` -> {index: external id}."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 tab-separated fields")
            out[fields[1]] = fields[0]
    return out


def read_unisrec(directory: str | Path, name: str = "Scientific") -> CatalogTables:
    """Read a UniSRec data set directory into :class:`CatalogTables`.

    Each user's full sequence is rebuilt from the train prefixes (oldest first)
    plus the validation and test targets, so histories that the test file caps at
    50 items keep their older interactions.
    """
    directory = Path(directory)
    items = _read_index(directory / f"{name}.item2index")
    users = _read_index(directory / f"{name}.user2index")

    train = _read_inter(directory / f"{name}.train.inter")
    valid = {u: t for u, _, t in _read_inter(directory / f"{name}.valid.inter")}
    test = {u: (h, t) for u, h, t in _read_inter(directory / f"{name}.test.inter")}

    # Train rows list each user's prefixes longest first.
    by_user: dict[str, list[tuple[list[str], str]]] = defaultdict(list)
    for u, h, t in train:
        by_user[u].append((h, t))
    sequences: dict[str, list[str]] = {}
    for u, (test_history, test_target) in test.items():
        rows = by_user.get(u, [])[::-1]
        if rows:
            seq = rows[0][0] + [t for _, t in rows] + [valid[u], test_target]
        else:
            seq = test_history + [test_target]
        if seq[-len(test_history) - 1 :] != test_history + [test_target]:
            raise ValueError(f"user {u}: train, valid and test files disagree on the sequence")
        sequences[u] = seq

    records = [
        (users[u], items[p], "purchase", order)
        for u, seq in sequences.items()
        for order, p in enumerate(seq)
    ]
    interactions = pd.DataFrame(records, columns=["user_id", "product_id", "event", "order"])

    texts = pd.read_csv(
        directory / f"{name}.text", sep="\t", header=0, names=["product_id", "text"],
        dtype=str, keep_default_na=False, quoting=3,
    )
    parsed = [parse_item_text(t) for t in texts["text"]]
    paths = split_category_paths([c for _, c, _ in parsed])
    products = pd.DataFrame(
        {
            "product_id": texts["product_id"],
            "title": [t for t, _, _ in parsed],
            "brand": [b for _, _, b in parsed],
            "category_path": paths,
        }
    )
    missing = set(interactions["product_id"]) - set(products["product_id"])
    if missing:
        raise ValueError(f"{len(missing)} interacted products have no text row, e.g. {sorted(missing)[:3]}")
    users_frame = pd.DataFrame({"user_id": sorted(set(interactions["user_id"]))})
    return CatalogTables(products=products, users=users_frame, interactions=interactions)

"""The knowledge-graph schema: node labels, relationship types and their keys.

Everything that becomes a Neo4j label, relationship type or property key passes
through this module, so names that arrive with data can never inject Cypher:
labels and relationship types must be declared here (or pass
:func:`check_identifier`), property keys must be plain identifiers.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class SchemaError(ValueError):
    """A label, relationship type or property key outside the schema."""


@dataclass(frozen=True)
class NodeType:
    """A node label and the property that identifies a node of it."""

    label: str
    key: str


@dataclass(frozen=True)
class RelType:
    """A relationship type between two labels.

    ``key`` lists the properties (besides the two endpoints) that make an edge
    unique: an interaction can repeat (a user buys the same product twice), so
    its position ``order`` is part of its identity; a structural edge such as
    ``IN_CATEGORY`` is unique per endpoint pair.

    ``single``: a source node has at most one edge of this type (a product's brand,
    its category). Writing an edge for a source replaces the source's edge to any
    other target, and an edge frame row with an empty target removes the source's
    edge (the product no longer has a brand).
    """

    name: str
    source: str
    target: str
    key: tuple[str, ...] = ()
    interaction: bool = False
    single: bool = False


NODE_TYPES: dict[str, NodeType] = {
    nt.label: nt
    for nt in (
        NodeType("Product", "product_id"),
        NodeType("Category", "category_id"),
        NodeType("Brand", "brand_id"),
        NodeType("User", "user_id"),
        # Free knowledge-graph triples (ingest: triples, RecBole ``.kg``) talk about entities;
        # an entity is linked to the product it stands for by ``DESCRIBES``.
        NodeType("Entity", "entity_id"),
        # Search queries with judged / clicked products (``JUDGED {label}``).
        NodeType("Query", "query_id"),
        # The graph describes its own data-defined relationship types (see
        # :func:`register_relation`): one node per type, so any process reading the
        # store can register them again before it reads their edges.
        NodeType("KgRelation", "rel_type"),
    )
}

#: Interaction events as they appear in data -> relationship type in the graph.
EVENT_TYPES: dict[str, str] = {
    "view": "VIEWED",
    "cart": "ADDED_TO_CART",
    "purchase": "PURCHASED",
    "rating": "RATED",
}

REL_TYPES: dict[str, RelType] = {
    rt.name: rt
    for rt in (
        RelType("IN_CATEGORY", "Product", "Category", single=True),
        RelType("SUBCATEGORY_OF", "Category", "Category"),
        RelType("MADE_BY", "Product", "Brand", single=True),
        RelType("DESCRIBES", "Entity", "Product"),
        RelType("JUDGED", "Query", "Product"),
        *(
            RelType(rel, "User", "Product", key=("order",), interaction=True)
            for rel in EVENT_TYPES.values()
        ),
    )
}

#: Separator between category levels in a category id ("A > B > C").
CATEGORY_SEPARATOR = " > "


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a safe Cypher identifier, else raise SchemaError."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise SchemaError(
            f"{what} {name!r} is not allowed: use letters, digits and '_' "
            "(starting with a letter, at most 64 characters)"
        )
    return name


def node_type(label: str) -> NodeType:
    """Look up a node label declared in the schema."""
    try:
        return NODE_TYPES[label]
    except KeyError:
        raise SchemaError(f"unknown node label {label!r}; known: {sorted(NODE_TYPES)}") from None


def rel_type(name: str) -> RelType:
    """Look up a relationship type declared in the schema."""
    try:
        return REL_TYPES[name]
    except KeyError:
        pass
    try:
        return KG_RELATIONS[name]
    except KeyError:
        raise SchemaError(
            f"unknown relationship type {name!r}; known: {sorted(REL_TYPES)} "
            f"and the registered knowledge-graph relations {sorted(KG_RELATIONS)}"
        ) from None


def interaction_types() -> list[str]:
    """Relationship types that record user behaviour (supervision candidates)."""
    return [rt.name for rt in REL_TYPES.values() if rt.interaction]


# -- names that come with data ------------------------------------------------------
#
# Relationship types of free knowledge-graph triples (``head, relation, tail``) and
# property keys of free attributes arrive with the data. They never reach Cypher as
# given: :func:`relation_type_name` and :func:`property_key` turn them into safe
# identifiers (or raise), and a relation must be registered
# (:func:`register_relation`) before a store accepts its edges. Registered
# relations always run ``Entity -> Entity`` and live apart from the static
# :data:`REL_TYPES` (which the store contract, Cypher linting and counts iterate).

#: Data-defined relationship types (``Entity -> Entity``), by name.
KG_RELATIONS: dict[str, RelType] = {}

#: Relationship types that data may not take: the static ones and model output.
RESERVED_REL_TYPES = frozenset({*REL_TYPES, "RECOMMENDED"})

_UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _snake(raw: str) -> str:
    text = _NON_WORD.sub("_", _CAMEL.sub("_", raw)).strip("_")
    return re.sub("_+", "_", text)


def relation_type_name(raw: str) -> str:
    """The UPPER_SNAKE relationship type for a relation name found in data.

    ``"film.film.directed_by"`` -> ``FILM_FILM_DIRECTED_BY``, ``"madeOf"`` ->
    ``MADE_OF``, ``"0"`` -> ``R_0``. Names with no letter or digit become
    ``REL_<hash>``; names longer than 64 characters are cut and get a hash
    suffix; a name equal to a static or reserved type gets the prefix ``KG_``.
    The result always passes :func:`check_identifier`.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise SchemaError(f"relation name {raw!r} is empty")
    name = _snake(raw.strip()).upper()
    if not name:
        name = f"REL_{_short_hash(raw).upper()}"
    elif not name[0].isalpha():
        name = f"R_{name}"
    if name in RESERVED_REL_TYPES:
        name = f"KG_{name}"
    if len(name) > 64:
        name = f"{name[:55].rstrip('_')}_{_short_hash(raw).upper()}"
    return check_relation_name(name)


def check_relation_name(name: str) -> str:
    """Return ``name`` if it can be a data-defined relationship type, else raise SchemaError."""
    check_identifier(name, "relationship type")
    if not _UPPER_SNAKE.match(name):
        raise SchemaError(f"relationship type {name!r} is not UPPER_SNAKE")
    if name in RESERVED_REL_TYPES:
        raise SchemaError(f"relationship type {name!r} is reserved")
    return name


def register_relation(name: str) -> RelType:
    """Declare the data-defined relationship type ``name`` (``Entity -> Entity``).

    Idempotent. ``name`` must already be UPPER_SNAKE (use :func:`relation_type_name`
    on raw names) and must not be a static or reserved type.
    """
    check_relation_name(name)
    rt = KG_RELATIONS.get(name)
    if rt is None:
        rt = KG_RELATIONS[name] = RelType(name, "Entity", "Entity")
    return rt


def register_relations(names: Iterable[object]) -> list[str]:
    """Register every name of an iterable (e.g. the ``rel_type`` column of ``KgRelation``)."""
    return [register_relation(str(n)).name for n in names]


def kg_relation_types() -> list[str]:
    """Data-defined relationship types registered in this process, sorted."""
    return sorted(KG_RELATIONS)


def property_key(raw: str) -> str:
    """The lower_snake property key for a column / attribute name found in data.

    ``"Colour (EU)"`` -> ``colour_eu``, ``"3d"`` -> ``a_3d``; names with no letter
    or digit become ``attr_<hash>``; longer than 64 characters: cut + hash suffix.
    The result always passes :func:`check_identifier`.
    """
    if not isinstance(raw, str):
        raise SchemaError(f"property key {raw!r} is not a string")
    key = _snake(raw.strip()).lower()
    if not key:
        key = f"attr_{_short_hash(raw)}"
    elif not key[0].isalpha():
        key = f"a_{key}"
    if len(key) > 64:
        key = f"{key[:55].rstrip('_')}_{_short_hash(raw)}"
    return check_identifier(key, "property key")


# --------------------------------------------------------------------------- query ids

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


def normalise_query(text: str) -> str:
    """The query id of a query text: NFKC, lower-case, control characters and runs of
    whitespace turned into one space, stripped.

    ``normalise_query("  Cordless\\tDRILL ") == "cordless drill"``; full-width and other
    compatibility characters fold to their plain form (``"ｄｒｉｌｌ"`` -> ``"drill"``).
    """
    if not isinstance(text, str):
        raise TypeError(f"normalise_query expects a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def normalise_queries(texts: pd.Series) -> pd.Series:
    """:func:`normalise_query` of every value of a Series; missing values -> ``""``.

    Each distinct value is normalised once (search logs repeat queries), with Python's own
    Unicode tables, so the result equals ``texts.map(normalise_query)`` exactly (pandas'
    Arrow-backed ``str.lower`` differs from ``str.lower`` on a few characters such as ``"İ"``).
    """
    codes, uniques = pd.factorize(texts.astype(object), use_na_sentinel=True)
    done = np.array([normalise_query(str(u)) for u in uniques] + [""], dtype=object)
    return pd.Series(done[codes], index=texts.index, dtype=object)

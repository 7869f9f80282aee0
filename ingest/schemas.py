"""Typed record schemas: what each kind of input row holds, and which fields identify it.

A *record kind* is one kind of input table. Its fields have a *type* that the
validator (:mod:`kgrec.ingest.validate`) checks and converts, vectorised per chunk:

============  ===========================================================================
type          accepted input -> stored value
============  ===========================================================================
``id``        non-empty string (surrounding whitespace stripped), or an integer
              (``3`` / ``3.0`` -> ``"3"``); at most 1024 characters, no control characters
``text``      string, number (-> its text) or list of strings (joined with a newline)
``float``     finite number, or a string holding one
``int``       integral number, or a string holding one (int64)
``timestamp`` number (seconds since the epoch, or the source's ``timestamp_unit``)
              or an ISO-8601 string (no zone = UTC) -> float seconds
``event``     one of :data:`kgrec.kg.schema.EVENT_TYPES` after lower-casing and
              :data:`EVENT_ALIASES` / the source's own event map
``path``      list of strings, a JSON list in a string, or one string split at the
              source's ``category_separator`` (default ``" > "``); empty levels rejected
``relation``  non-empty text; becomes an UPPER_SNAKE relationship type
              (:func:`kgrec.kg.schema.relation_type_name`)
============  ===========================================================================

Columns that map to no field are *free attributes*: their names become property
keys through :func:`kgrec.kg.schema.property_key`, their values strings (numbers,
booleans, lists and objects as JSON text). Nothing in a row is dropped.

``key`` lists the fields that identify a record: two rows of one ingest run with
the same key are duplicates (see :mod:`kgrec.ingest.pipeline` for the rule). ``ref``
names the kind a field points to; a value no node of that kind has is a
*dangling reference*, handled by the run's policy for that kind.
"""
from __future__ import annotations

from dataclasses import dataclass

from kgrec.kg.schema import EVENT_TYPES

FIELD_TYPES = ("id", "text", "float", "int", "timestamp", "event", "path", "relation")


@dataclass(frozen=True)
class Field:
    """One field of a record kind (see the module docstring for ``type``)."""

    name: str
    type: str
    required: bool = False
    ref: str | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise ValueError(f"field {self.name}: unknown type {self.type!r}")


@dataclass(frozen=True)
class RecordSchema:
    """A record kind: its fields, identifying key and the file stems it is recognised by."""

    kind: str
    fields: tuple[Field, ...]
    key: tuple[str, ...]
    stems: tuple[str, ...]
    doc: str = ""

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.kind} has no field {name!r}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


#: Referenced kind -> (node label, key property). "create" makes a bare node of it.
REFERENCE_LABELS: dict[str, tuple[str, str]] = {
    "product": ("Product", "product_id"),
    "user": ("User", "user_id"),
    "category": ("Category", "category_id"),
    "brand": ("Brand", "brand_id"),
    "entity": ("Entity", "entity_id"),
}

#: Default dangling-reference policy per referenced kind ("reject" or "create").
DEFAULT_DANGLING: dict[str, str] = {
    "product": "reject",
    "user": "create",
    "category": "create",
    "brand": "create",
    "entity": "create",
}

#: Event names accepted besides the canonical ones (lower-case, after stripping).
EVENT_ALIASES: dict[str, str] = {
    **{e: e for e in EVENT_TYPES},
    "viewed": "view", "page_view": "view", "pageview": "view", "detail_view": "view", "click": "view",
    "add_to_cart": "cart", "addtocart": "cart", "add-to-cart": "cart", "basket": "cart", "carted": "cart",
    "buy": "purchase", "bought": "purchase", "order": "purchase", "purchased": "purchase",
    "transaction": "purchase",
    "rate": "rating", "rated": "rating", "review": "rating",
}

SCHEMAS: dict[str, RecordSchema] = {
    s.kind: s
    for s in (
        RecordSchema(
            "category",
            (
                Field("category_id", "id", True, doc="category id; paths use levels joined by ' > '"),
                Field("name", "text"),
                Field("parent_id", "id", ref="category", doc="parent category -> SUBCATEGORY_OF"),
            ),
            key=("category_id",),
            stems=("categories", "category"),
            doc="Category nodes (optional: products' category paths create their categories)",
        ),
        RecordSchema(
            "brand",
            (Field("brand_id", "id", True), Field("name", "text")),
            key=("brand_id",),
            stems=("brands", "brand"),
            doc="Brand nodes (optional: products' brands create theirs)",
        ),
        RecordSchema(
            "product",
            (
                Field("product_id", "id", True),
                Field("title", "text"),
                Field("description", "text"),
                Field("brand", "id", ref="brand", doc="brand id -> MADE_BY"),
                Field("category_path", "path", ref="category", doc="levels, root first -> IN_CATEGORY the deepest"),
                Field("category_id", "id", ref="category", doc="alternative to category_path -> IN_CATEGORY"),
                Field("price", "float"),
            ),
            key=("product_id",),
            stems=("products", "product", "items", "item", "catalog", "catalogue"),
            doc="Product nodes",
        ),
        RecordSchema(
            "user",
            (Field("user_id", "id", True),),
            key=("user_id",),
            stems=("users", "user", "customers"),
            doc="User nodes (optional: interactions create their users by default)",
        ),
        RecordSchema(
            "entity",
            (Field("entity_id", "id", True), Field("name", "text")),
            key=("entity_id",),
            stems=("entities", "entity"),
            doc="Knowledge-graph entities (optional: triples and links create theirs)",
        ),
        RecordSchema(
            "triple",
            (
                Field("head", "id", True, ref="entity"),
                Field("relation", "relation", True),
                Field("tail", "id", True, ref="entity"),
            ),
            key=("head", "relation", "tail"),
            stems=("triples", "triple", "kg", "knowledge_graph"),
            doc="Free knowledge-graph triples -> (Entity)-[RELATION]->(Entity)",
        ),
        RecordSchema(
            "link",
            (Field("entity_id", "id", True, ref="entity"), Field("product_id", "id", True, ref="product")),
            key=("entity_id", "product_id"),
            stems=("links", "link", "entity_links", "item_entity"),
            doc="Entity-product links -> (Entity)-[DESCRIBES]->(Product)",
        ),
        RecordSchema(
            "interaction",
            (
                Field("user_id", "id", True, ref="user"),
                Field("product_id", "id", True, ref="product"),
                Field("event", "event", doc="view / cart / purchase / rating; default: the source's default_event"),
                Field("order", "int", doc="position in the user's history; default: from timestamp"),
                Field("timestamp", "timestamp"),
                Field("weight", "float", doc="e.g. the rating value or a quantity"),
            ),
            key=("user_id", "product_id", "event", "order"),
            stems=("interactions", "interaction", "events", "inter", "ratings", "orders", "purchases", "views"),
            doc="User behaviour -> (User)-[VIEWED|ADDED_TO_CART|PURCHASED|RATED {order}]->(Product)",
        ),
        RecordSchema(
            "judgement",
            (
                Field("query", "text", True),
                Field("query_id", "id", doc="default: the query text"),
                Field("product_id", "id", True, ref="product"),
                Field("label", "float", doc="graded relevance or click count; default 1"),
            ),
            key=("query_id", "product_id"),
            stems=("judgements", "judgments", "qrels", "clicks", "search", "queries"),
            doc="Search judgements / clicks -> (Query)-[JUDGED {label}]->(Product)",
        ),
    )
}

#: Processing order: every kind after the kinds it references.
KIND_ORDER = ("category", "brand", "product", "user", "entity", "triple", "link", "interaction", "judgement")

#: Singular and plural spellings a user may write for a kind.
KIND_NAMES: dict[str, str] = {
    **{k: k for k in SCHEMAS},
    **{f"{k}s": k for k in SCHEMAS},
    "categories": "category",
    "entities": "entity",
    "judgments": "judgement",
    "judgment": "judgement",
    "items": "product",
    "item": "product",
    "kg": "triple",
}

#: Column names recognised for a field when the field's own name is not a column.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "product_id": ("item_id",),
    "head": ("head_id",),
    "tail": ("tail_id",),
    "relation": ("relation_id",),
}


def kind_of(name: str) -> str:
    """Canonical kind for a user-written kind name (``"products"`` -> ``"product"``)."""
    try:
        return KIND_NAMES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown record kind {name!r}; known: {sorted(SCHEMAS)}") from None


def kind_for_stem(stem: str) -> str | None:
    """The kind a file stem names (``"products"`` / ``"shop.interactions"`` -> kind), or None."""
    stem = stem.lower()
    for part in (stem, stem.rsplit(".", 1)[-1], stem.rsplit("_", 1)[-1], stem.rsplit("-", 1)[-1]):
        for kind, schema in SCHEMAS.items():
            if part in schema.stems:
                return kind
    return None

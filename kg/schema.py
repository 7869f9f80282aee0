"""The knowledge-graph schema: node labels, relationship types and their keys.

Everything that becomes a Neo4j label, relationship type or property key passes
through this module, so names that arrive with data can never inject Cypher:
labels and relationship types must be declared here (or pass
:func:`check_identifier`), property keys must be plain identifiers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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
    """

    name: str
    source: str
    target: str
    key: tuple[str, ...] = ()
    interaction: bool = False


NODE_TYPES: dict[str, NodeType] = {
    nt.label: nt
    for nt in (
        NodeType("Product", "product_id"),
        NodeType("Category", "category_id"),
        NodeType("Brand", "brand_id"),
        NodeType("User", "user_id"),
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
        RelType("IN_CATEGORY", "Product", "Category"),
        RelType("SUBCATEGORY_OF", "Category", "Category"),
        RelType("MADE_BY", "Product", "Brand"),
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
        raise SchemaError(f"unknown relationship type {name!r}; known: {sorted(REL_TYPES)}") from None


def interaction_types() -> list[str]:
    """Relationship types that record user behaviour (supervision candidates)."""
    return [rt.name for rt in REL_TYPES.values() if rt.interaction]

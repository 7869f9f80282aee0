"""Validated records -> node and edge frames of the knowledge graph.

One builder per record kind; each takes the chunk's valid rows (canonical
columns, free attributes, ``_row``/``_line``) and a :class:`BuildContext`, and
returns node frames by label and edge frames by relationship type. A frame only
has the columns the input had, so an upsert never clears a property the input
did not mention (see :mod:`kgrec.kg.embedded`).

============  ===========================================================================
kind          graph
============  ===========================================================================
product       ``Product {product_id, title, description, brand, category_path, price, ...}``;
              every prefix of ``category_path`` a ``Category {category_id, name, level}``
              (id = levels joined by ``" > "``) with ``SUBCATEGORY_OF`` its parent;
              ``IN_CATEGORY`` ``category_id``, else the path's deepest level; ``MADE_BY``
              the brand (both single-valued: an update replaces the product's edge, an
              empty value removes it)
category      ``Category {category_id, name, ...}``; ``SUBCATEGORY_OF`` its ``parent_id``
brand, user,  ``Brand`` / ``User`` / ``Entity`` with their fields and attributes
entity
interaction   ``(User)-[VIEWED|ADDED_TO_CART|PURCHASED|RATED {order, timestamp, weight, ...}]->(Product)``
judgement     ``Query {query_id, text}``, ``(Query)-[JUDGED {label, ...}]->(Product)``
triple        ``(Entity)-[RELATION]->(Entity)`` with the relation's UPPER_SNAKE type and a
              ``KgRelation {rel_type, name, source, target}`` node per new type
link          ``(Entity)-[DESCRIBES]->(Product)``
============  ===========================================================================
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kgrec.ingest.schemas import SCHEMAS
from kgrec.kg.schema import CATEGORY_SEPARATOR, EVENT_TYPES, register_relation, relation_type_name

Frames = dict[str, list[pd.DataFrame]]


@dataclass
class BuildContext:
    """What builders need beyond the rows: ids known so far and the relation registry."""

    known: Callable[[str], set[str]]
    #: raw relation name -> relationship type (from the store's KgRelation nodes, then this run)
    relations: dict[str, str] = field(default_factory=dict)
    #: triples: an entity whose id is a known product id DESCRIBES that product
    link_by_id: bool = False

    def relation(self, raw: str, nodes: Frames) -> str:
        """The relationship type of a raw relation name, registering a new one."""
        name = self.relations.get(raw)
        if name is not None:
            return name
        name = relation_type_name(raw)
        taken = set(self.relations.values())
        if name in taken:  # another raw name sanitised to the same type: keep them apart
            from kgrec.kg.schema import _short_hash

            name = f"{name[:55].rstrip('_')}_{_short_hash(raw).upper()}"
        register_relation(name)
        self.relations[raw] = name
        nodes.setdefault("KgRelation", []).append(
            pd.DataFrame({"rel_type": [name], "name": [raw], "source": ["Entity"], "target": ["Entity"]})
        )
        return name


def attribute_columns(kind: str, clean: pd.DataFrame) -> list[str]:
    fields = set(SCHEMAS[kind].field_names)
    return [c for c in clean.columns if c not in fields and not c.startswith("_")]


def _with(frame: pd.DataFrame, clean: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for c in columns:
        frame[c] = clean[c].array
    return frame


def _col(clean: pd.DataFrame, name: str, mask: np.ndarray | None = None) -> Any:
    """A column's values without a detour through Python objects (Arrow strings stay Arrow)."""
    values = clean[name].array
    return values if mask is None else values[mask]


def _add(target: Frames, name: str, frame: pd.DataFrame) -> None:
    if len(frame):
        target.setdefault(name, []).append(frame)


def build(kind: str, clean: pd.DataFrame, ctx: BuildContext) -> tuple[Frames, Frames]:
    """Node and edge frames for ``clean`` rows of ``kind``."""
    nodes: Frames = {}
    edges: Frames = {}
    if len(clean):
        BUILDERS[kind](clean.reset_index(drop=True), ctx, nodes, edges)
    return nodes, edges


def _node_kind(label: str, key: str, fields: tuple[str, ...]) -> Callable:
    kind = {"Brand": "brand", "User": "user", "Entity": "entity"}[label]

    def builder(clean: pd.DataFrame, ctx: BuildContext, nodes: Frames, edges: Frames) -> None:
        cols = [f for f in fields if f in clean.columns]
        frame = pd.DataFrame({key: _col(clean, key)})
        _add(nodes, label, _with(_with(frame, clean, cols), clean, attribute_columns(kind, clean)))

    return builder


def _product(clean: pd.DataFrame, ctx: BuildContext, nodes: Frames, edges: Frames) -> None:
    frame = pd.DataFrame({"product_id": _col(clean, "product_id")})
    _with(frame, clean, [c for c in ("title", "description", "brand", "category_path", "price") if c in clean.columns])
    _add(nodes, "Product", _with(frame, clean, attribute_columns("product", clean)))

    if "category_path" in clean.columns or "category_id" in clean.columns:
        # A product is in one category (IN_CATEGORY is single-valued): its category_id, else the
        # deepest level of its category_path; None (neither given) removes an earlier one.
        category = pd.Series([None] * len(clean), dtype=object)
        if "category_path" in clean.columns:
            paths = clean["category_path"].astype(object)
            category = paths.where(paths != "", None)
        if "category_id" in clean.columns:
            ids = clean["category_id"].astype(object)
            category = ids.where(ids.notna(), category)
        _add(edges, "IN_CATEGORY", pd.DataFrame({"source": _col(clean, "product_id"), "target": category.to_numpy()}))
    if "category_path" in clean.columns:
        # category_path holds the deepest category's id: levels joined by " > " ("" = none)
        paths = clean["category_path"].astype(object)
        has = (paths != "").to_numpy(dtype=bool)
        known = ctx.known("category")
        new_categories: dict[str, tuple[str, int]] = {}
        sub: dict[str, str] = {}
        for path in pd.unique(paths.to_numpy()[has]).tolist():
            parent = None
            for depth, level in enumerate(path.split(CATEGORY_SEPARATOR)):
                cid = level if parent is None else parent + CATEGORY_SEPARATOR + level
                if cid not in known and cid not in new_categories:
                    new_categories[cid] = (level, depth)
                if parent is not None:
                    sub[cid] = parent
                parent = cid
        if new_categories:
            known.update(new_categories)
            _add(nodes, "Category", pd.DataFrame(
                {"category_id": list(new_categories), "name": [v[0] for v in new_categories.values()],
                 "level": np.asarray([v[1] for v in new_categories.values()], dtype=np.int64)}))
        _add(edges, "SUBCATEGORY_OF", pd.DataFrame({"source": list(sub), "target": list(sub.values())}))
    if "brand" in clean.columns:
        # MADE_BY is single-valued: a new brand replaces the old one, an empty brand removes it
        brand = clean["brand"].astype(object)
        _add(edges, "MADE_BY", pd.DataFrame({"source": _col(clean, "product_id"),
                                             "target": brand.where(brand.notna(), None).to_numpy()}))


def _category(clean: pd.DataFrame, ctx: BuildContext, nodes: Frames, edges: Frames) -> None:
    frame = pd.DataFrame({"category_id": _col(clean, "category_id")})
    _with(frame, clean, [c for c in ("name",) if c in clean.columns])
    _add(nodes, "Category", _with(frame, clean, attribute_columns("category", clean)))
    if "parent_id" in clean.columns:
        has = clean["parent_id"].notna().to_numpy()
        _add(edges, "SUBCATEGORY_OF", pd.DataFrame({"source": _col(clean, "category_id", has),
                                                    "target": _col(clean, "parent_id", has)}))


def _interaction(clean: pd.DataFrame, ctx: BuildContext, nodes: Frames, edges: Frames) -> None:
    props = [c for c in ("timestamp", "weight") if c in clean.columns] + attribute_columns("interaction", clean)
    codes, events = pd.factorize(clean["event"])
    if (codes < 0).any():  # validation gives every loaded row an event; a row without one would be lost here
        raise ValueError(f"{int((codes < 0).sum())} interaction rows without an event reached the graph builder")
    for code, event in enumerate(events.tolist()):
        part = clean if len(events) == 1 else clean[codes == code].reset_index(drop=True)
        frame = pd.DataFrame({
            "source": _col(part, "user_id"),
            "target": _col(part, "product_id"),
            "order": part["order"].to_numpy(dtype=np.int64),
        })
        _add(edges, EVENT_TYPES[str(event)], _with(frame, part, props))


def _judgement(clean: pd.DataFrame, ctx: BuildContext, nodes: Frames, edges: Frames) -> None:
    _add(nodes, "Query", pd.DataFrame({"query_id": _col(clean, "query_id"), "text": _col(clean, "query")}))
    frame = pd.DataFrame({"source": _col(clean, "query_id"), "target": _col(clean, "product_id"),
                          "label": clean["label"].to_numpy(dtype=float)})
    _add(edges, "JUDGED", _with(frame, clean, attribute_columns("judgement", clean)))


def _triple(clean: pd.DataFrame, ctx: BuildContext, nodes: Frames, edges: Frames) -> None:
    attrs = attribute_columns("triple", clean)
    codes, relations = pd.factorize(clean["relation"])
    for code, raw in enumerate(relations.tolist()):
        rel = ctx.relation(str(raw), nodes)
        part = clean if len(relations) == 1 else clean[codes == code].reset_index(drop=True)
        frame = pd.DataFrame({"source": _col(part, "head"), "target": _col(part, "tail")})
        _add(edges, rel, _with(frame, part, attrs))
    if ctx.link_by_id:
        products = ctx.known("product")
        ids = pd.unique(np.concatenate([clean["head"].to_numpy(dtype=object), clean["tail"].to_numpy(dtype=object)]))
        linked = [i for i in ids.tolist() if i in products]
        _add(edges, "DESCRIBES", pd.DataFrame({"source": linked, "target": linked}))


def _link(clean: pd.DataFrame, ctx: BuildContext, nodes: Frames, edges: Frames) -> None:
    frame = pd.DataFrame({"source": _col(clean, "entity_id"), "target": _col(clean, "product_id")})
    _add(edges, "DESCRIBES", _with(frame, clean, attribute_columns("link", clean)))


BUILDERS: dict[str, Callable] = {
    "product": _product,
    "category": _category,
    "brand": _node_kind("Brand", "brand_id", ("name",)),
    "user": _node_kind("User", "user_id", ()),
    "entity": _node_kind("Entity", "entity_id", ("name",)),
    "interaction": _interaction,
    "judgement": _judgement,
    "triple": _triple,
    "link": _link,
}


def created_nodes(kind: str, ids: list[str]) -> tuple[str, pd.DataFrame]:
    """Nodes made for dangling references under the ``create`` policy (brands/categories get a name)."""
    from kgrec.ingest.schemas import REFERENCE_LABELS

    label, key = REFERENCE_LABELS[kind]
    frame = pd.DataFrame({key: ids})
    if kind in ("brand", "category"):
        frame["name"] = ids
    return label, frame

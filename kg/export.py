"""Export a store to a PyG snapshot: stable id maps, structure, split interactions.

The snapshot keeps message passing apart from supervision:

* :meth:`GraphSnapshot.message_passing` builds a :class:`~torch_geometric.data.HeteroData`
  whose ``edge_index`` tensors hold the catalogue structure (categories, brands)
  and only the interactions of the splits allowed at that point of time
  (``"train"`` for training and validation; ``"train"`` and ``"valid"`` when
  scoring the test split);
* :meth:`GraphSnapshot.edge_label_index` returns the ``(user, product)`` pairs of
  a split, the supervision targets, which never enter message passing of that
  split.

The split is leave-one-out by each user's ``order``: the last interaction is
``test``, the second-to-last ``valid``, the rest ``train``; users with fewer than
three interactions keep all of them in ``train``.

Free knowledge-graph triples (ingest: triples files, RecBole ``.kg`` + ``.link``)
join the structure when the store has ``Entity`` nodes: node type ``entity``,
one edge type ``('entity', '<relation>', 'entity')`` per data-defined relation
(:func:`kgrec.kg.schema.register_relation`; the store's ``KgRelation`` nodes list
them) and ``('entity', 'describes', 'product')`` from entity-product links, each
with its ``rev_*`` in :meth:`GraphSnapshot.message_passing`. A store without
entities exports exactly as before. Search judgements (``Query -[JUDGED]->
Product``) are supervision for search, not structure: see :func:`export_judgements`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from kgrec.kg.schema import CATEGORY_SEPARATOR, REL_TYPES, interaction_types, node_type
from kgrec.kg.store import GraphStore

#: Node label in the store -> node type in HeteroData.
NODE_TYPE_NAMES = {"Product": "product", "Category": "category", "Brand": "brand", "User": "user"}
SPLITS = ("train", "valid", "test")


@dataclass
class GraphSnapshot:
    """A frozen, index-based view of the knowledge graph.

    Attributes:
        id_maps: node type -> external ids; position = internal index.
        product_text: one text per product, ``"title. category levels. brand."``.
        structure: catalogue edges (no interactions), edge type -> ``[2, E]`` long tensor.
        interactions: frame with ``user``, ``product`` (internal indices), ``order``,
            ``rel`` (relationship type) and ``split``.
    """

    id_maps: dict[str, list[str]]
    product_text: list[str]
    structure: dict[tuple[str, str, str], torch.Tensor]
    interactions: pd.DataFrame

    @property
    def num_nodes(self) -> dict[str, int]:
        return {t: len(ids) for t, ids in self.id_maps.items()}

    @property
    def num_users(self) -> int:
        return len(self.id_maps["user"])

    @property
    def num_products(self) -> int:
        return len(self.id_maps["product"])

    def visible(self, upto: str) -> pd.DataFrame:
        """Interactions known before the targets of split ``upto`` are predicted.

        ``"train"`` -> train only; ``"valid"`` -> train (valid targets hidden);
        ``"test"`` -> train and valid (test targets hidden).
        """
        if upto not in SPLITS:
            raise ValueError(f"unknown split {upto!r}; expected one of {SPLITS}")
        allowed = {"train": ("train",), "valid": ("train",), "test": ("train", "valid")}[upto]
        return self.interactions[self.interactions["split"].isin(allowed)]

    def message_passing(self, upto: str = "train") -> HeteroData:
        """The message-passing graph for predicting split ``upto`` (see :meth:`visible`).

        Interaction edges of all relationship types are merged into
        ``('user', 'interacted', 'product')``; every edge type has its reverse
        (``rev_*``), so information flows both ways.
        """
        data = HeteroData()
        for kind, ids in self.id_maps.items():
            data[kind].num_nodes = len(ids)
        edges = dict(self.structure)
        seen = self.visible(upto)
        edges[("user", "interacted", "product")] = torch.as_tensor(
            np.stack([seen["user"].to_numpy(), seen["product"].to_numpy()]), dtype=torch.long
        )
        for (src, rel, dst), index in edges.items():
            data[src, rel, dst].edge_index = index
            data[dst, f"rev_{rel}", src].edge_index = index.flip(0)
        return data

    def edge_label_index(self, split: str) -> torch.Tensor:
        """Supervision pairs ``[2, N]`` (user, product) of ``split``."""
        part = self.interactions[self.interactions["split"] == split]
        return torch.as_tensor(np.stack([part["user"].to_numpy(), part["product"].to_numpy()]), dtype=torch.long)

    def fingerprint(self) -> str:
        """A short hash of ids and interactions, to tie artifacts to their data."""
        import hashlib

        h = hashlib.sha256()
        for t in sorted(self.id_maps):
            h.update("\x1f".join(self.id_maps[t]).encode())
        h.update(self.interactions[["user", "product", "order"]].to_numpy().tobytes())
        return h.hexdigest()[:16]


def leave_one_out(interactions: pd.DataFrame) -> pd.Series:
    """Split labels by each user's ``order``: last = test, second-to-last = valid.

    Users with fewer than three interactions keep everything in train.
    """
    rank = interactions.groupby("user")["order"].rank(method="first", ascending=False)
    size = interactions.groupby("user")["order"].transform("size")
    split = np.where((rank == 1) & (size >= 3), "test", np.where((rank == 2) & (size >= 3), "valid", "train"))
    return pd.Series(split, index=interactions.index, name="split")


def export_snapshot(store: GraphStore, require_interactions: bool = True) -> GraphSnapshot:
    """Read the whole graph out of ``store`` into a :class:`GraphSnapshot`.

    Ids are sorted, so the same graph always gives the same indices. A catalogue with no
    interactions (e.g. search judgements only) needs ``require_interactions=False``.
    """
    id_maps: dict[str, list[str]] = {}
    index: dict[str, dict[str, int]] = {}
    frames = {}
    for label, name in NODE_TYPE_NAMES.items():
        frame = store.nodes(label)
        key = node_type(label).key
        frame = frame.sort_values(key).reset_index(drop=True)
        frames[label] = frame
        id_maps[name] = frame[key].astype(str).tolist()
        index[name] = {k: i for i, k in enumerate(id_maps[name])}

    products = frames["Product"]
    text = [
        f"{t}. {c.replace(CATEGORY_SEPARATOR, ' ')}. {b}."
        for t, c, b in zip(
            products.get("title", pd.Series([""] * len(products))).fillna(""),
            products.get("category_path", pd.Series([""] * len(products))).fillna(""),
            products.get("brand", pd.Series([""] * len(products))).fillna(""),
        )
    ]

    structure: dict[tuple[str, str, str], torch.Tensor] = {}
    for name, rt in REL_TYPES.items():
        if rt.interaction or rt.source not in NODE_TYPE_NAMES or rt.target not in NODE_TYPE_NAMES:
            continue  # Entity / Query edges: see _add_knowledge_graph, export_judgements
        edges = store.edges(name)
        src_t, dst_t = NODE_TYPE_NAMES[rt.source], NODE_TYPE_NAMES[rt.target]
        src = edges["source"].astype(str).map(index[src_t])
        dst = edges["target"].astype(str).map(index[dst_t])
        if src.isna().any() or dst.isna().any():
            bad = edges[src.isna() | dst.isna()].iloc[0]
            raise ValueError(f"{name} edge {bad['source']!r} -> {bad['target']!r} names a node that does not exist")
        structure[(src_t, name.lower(), dst_t)] = torch.as_tensor(
            np.stack([src.to_numpy(dtype=np.int64), dst.to_numpy(dtype=np.int64)]), dtype=torch.long
        )

    _add_knowledge_graph(store, id_maps, index, structure)

    parts = []
    for name in interaction_types():
        edges = store.edges(name)
        if len(edges) == 0:
            continue
        parts.append(
            pd.DataFrame(
                {
                    "user": edges["source"].astype(str).map(index["user"]),
                    "product": edges["target"].astype(str).map(index["product"]),
                    "order": edges["order"].astype("int64"),
                    "rel": name,
                }
            )
        )
    if not parts:
        if require_interactions:
            raise ValueError("the store holds no interactions: nothing to train or evaluate on")
        parts.append(pd.DataFrame({"user": pd.Series(dtype="int64"), "product": pd.Series(dtype="int64"),
                                   "order": pd.Series(dtype="int64"), "rel": pd.Series(dtype=str)}))
    inter = pd.concat(parts, ignore_index=True)
    if inter[["user", "product"]].isna().any().any():
        raise ValueError("an interaction names a user or product that is not a node of the graph")
    inter = inter.astype({"user": "int64", "product": "int64"})
    inter = inter.sort_values(["user", "order"], kind="stable").reset_index(drop=True)
    inter["split"] = leave_one_out(inter)
    return GraphSnapshot(id_maps=id_maps, product_text=text, structure=structure, interactions=inter)


#: Node label of free knowledge-graph entities -> node type in HeteroData.
ENTITY_TYPE_NAME = "entity"


def store_kg_relations(store: GraphStore) -> list[str]:
    """The data-defined relationship types a store lists in its ``KgRelation`` nodes, registered."""
    from kgrec.kg.schema import register_relations

    frame = store.nodes("KgRelation")
    key = node_type("KgRelation").key
    if len(frame) == 0 or key not in frame.columns:
        return []
    return sorted(register_relations(frame[key].astype(str)))


def _edge_tensor(store: GraphStore, name: str, src_index: dict[str, int], dst_index: dict[str, int]) -> torch.Tensor:
    edges = store.edges(name)
    src = edges["source"].astype(str).map(src_index)
    dst = edges["target"].astype(str).map(dst_index)
    if src.isna().any() or dst.isna().any():
        bad = edges[src.isna() | dst.isna()].iloc[0]
        raise ValueError(f"{name} edge {bad['source']!r} -> {bad['target']!r} names a node that does not exist")
    return torch.as_tensor(
        np.stack([src.to_numpy(dtype=np.int64), dst.to_numpy(dtype=np.int64)]).reshape(2, -1), dtype=torch.long
    )


def _add_knowledge_graph(
    store: GraphStore,
    id_maps: dict[str, list[str]],
    index: dict[str, dict[str, int]],
    structure: dict[tuple[str, str, str], torch.Tensor],
) -> None:
    """Add entities, their typed relations and entity-product links (nothing when there are no entities)."""
    entities = store.nodes("Entity")
    if len(entities) == 0:
        return
    key = node_type("Entity").key
    ids = sorted(entities[key].astype(str).tolist())
    id_maps[ENTITY_TYPE_NAME] = ids
    index[ENTITY_TYPE_NAME] = {k: i for i, k in enumerate(ids)}
    ent = index[ENTITY_TYPE_NAME]
    structure[(ENTITY_TYPE_NAME, "describes", "product")] = _edge_tensor(store, "DESCRIBES", ent, index["product"])
    for name in store_kg_relations(store):
        structure[(ENTITY_TYPE_NAME, name.lower(), ENTITY_TYPE_NAME)] = _edge_tensor(store, name, ent, ent)


def export_judgements(store: GraphStore, snapshot: GraphSnapshot) -> pd.DataFrame:
    """Search judgements / clicks as ``query_id``, ``query`` (text), ``product`` (index), ``label``.

    Judgements of products that are not in ``snapshot`` are dropped.
    """
    edges = store.edges("JUDGED")
    queries = store.nodes("Query")
    text = dict(zip(queries.get("query_id", pd.Series(dtype=str)).astype(str),
                    queries.get("text", pd.Series(dtype=str)).astype(str)))
    product = {p: i for i, p in enumerate(snapshot.id_maps["product"])}
    out = pd.DataFrame(
        {
            "query_id": edges["source"].astype(str),
            "query": edges["source"].astype(str).map(lambda q: text.get(q, q)),
            "product": edges["target"].astype(str).map(product),
            "label": edges["label"].astype(float) if "label" in edges.columns else 1.0,
        }
    )
    out = out.dropna(subset=["product"]).astype({"product": "int64"})
    return out.sort_values(["query_id", "product"], ignore_index=True)

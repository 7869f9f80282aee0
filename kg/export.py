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
join the structure when the store has ``Entity`` nodes, the way KG recommenders
(RecBole, KGAT) read them: an entity linked to a product (``Entity -[DESCRIBES]->
Product``) *is* that product, so its relations become the product's own edges, one
hop away. Each data-defined relation (:func:`kgrec.kg.schema.register_relation`; the
store's ``KgRelation`` nodes list them) gives edge types ``(src, '<relation>', dst)``
with ``src``/``dst`` ``product`` or ``entity`` (the entities linked to no product),
each with its ``rev_*`` in :meth:`GraphSnapshot.message_passing`. Two reductions keep
message passing small without losing what a GNN of ``kg_hops`` layers can use
(:class:`KgExport`): a relation that is exactly another's inverse (``film.director.film``
against ``film.film.directed_by``) is dropped, since the ``rev_*`` edges carry it; and
an entity that fewer than ``min_products`` products reach within ``kg_hops`` KG hops
is left out unless it relays such an entity to a product within those hops (alone
it ties no two products together; its only use would be a private parameter of one
product, which the product's own embedding already is). A store
without entities exports exactly as before. Search judgements (``Query -[JUDGED]->
Product``) are supervision for search, not structure: see :func:`export_judgements`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
        product_text: one text per product, ``"title. category levels. brand."`` followed by the
            product's other text attributes, ``" name: value."`` each (e.g. a MovieLens genre).
        structure: catalogue edges (no interactions), edge type -> ``[2, E]`` long tensor.
        interactions: frame with ``user``, ``product`` (internal indices), ``order``,
            ``rel`` (relationship type) and ``split``.
        kg_summary: what the knowledge-graph export did (entities merged into products, kept,
            left out; relations dropped as inverses); empty without entities.
    """

    id_maps: dict[str, list[str]]
    product_text: list[str]
    structure: dict[tuple[str, str, str], torch.Tensor]
    interactions: pd.DataFrame
    kg_summary: dict = field(default_factory=dict)

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


#: Product columns that are not free text attributes: the key, the fields the text names
#: already, and numbers or references that read as noise.
NOT_TEXT_ATTRIBUTES = frozenset({"product_id", "title", "description", "brand", "category_path", "category_id", "price"})


def _attribute_text(products: pd.DataFrame) -> list[str]:
    """Per product, ``" name: value."`` for each free string attribute (columns in name order;
    missing and empty values left out); empty strings when there are none."""
    columns = sorted(c for c in products.columns if c not in NOT_TEXT_ATTRIBUTES
                     and (pd.api.types.is_string_dtype(products[c]) or products[c].dtype == object))
    out = [""] * len(products)
    for column in columns:
        label = column.replace("_", " ")
        values = products[column].astype("string").fillna("").str.strip()
        out = [o + (f" {label}: {v}." if v else "") for o, v in zip(out, values)]
    return out


def leave_one_out(interactions: pd.DataFrame) -> pd.Series:
    """Split labels by each user's ``order``: last = test, second-to-last = valid.

    Users with fewer than three interactions keep everything in train.
    """
    rank = interactions.groupby("user")["order"].rank(method="first", ascending=False)
    size = interactions.groupby("user")["order"].transform("size")
    split = np.where((rank == 1) & (size >= 3), "test", np.where((rank == 2) & (size >= 3), "valid", "train"))
    return pd.Series(split, index=interactions.index, name="split")


@dataclass(frozen=True)
class KgExport:
    """How free knowledge-graph triples enter a snapshot (see the module docstring).

    Attributes:
        kg_hops: the GNN's reach in KG hops: an entity is kept when at least ``min_products``
            products reach it within this many hops over the KG relations, or when it lies on
            a path of at most this many hops from a product to such an entity (default 2, the
            fused model's ``gnn_layers``). 0 keeps every entity.
        min_products: see ``kg_hops`` (default 2).
        drop_inverse: drop a relation whose edges are exactly another relation's reversed
            (default True).
    """

    kg_hops: int = 2
    min_products: int = 2
    drop_inverse: bool = True

    def __post_init__(self) -> None:
        if self.kg_hops < 0 or self.min_products < 1:
            raise ValueError(f"kg_hops must be >= 0 and min_products >= 1, got {self.kg_hops}, {self.min_products}")


def export_snapshot(store: GraphStore, require_interactions: bool = True, kg: KgExport | None = None) -> GraphSnapshot:
    """Read the whole graph out of ``store`` into a :class:`GraphSnapshot`.

    Ids are sorted, so the same graph always gives the same indices. A catalogue with no
    interactions (e.g. search judgements only) needs ``require_interactions=False``.
    ``kg``: how KG triples enter (default :class:`KgExport`).
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
        f"{t}. {c.replace(CATEGORY_SEPARATOR, ' ')}. {b}." + extra
        for t, c, b, extra in zip(
            products.get("title", pd.Series([""] * len(products))).fillna(""),
            products.get("category_path", pd.Series([""] * len(products))).fillna(""),
            products.get("brand", pd.Series([""] * len(products))).fillna(""),
            _attribute_text(products),
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

    kg_summary = _add_knowledge_graph(store, id_maps, index, structure, kg or KgExport())

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
    return GraphSnapshot(id_maps=id_maps, product_text=text, structure=structure, interactions=inter,
                         kg_summary=kg_summary)


#: Node label of free knowledge-graph entities -> node type in HeteroData.
ENTITY_TYPE_NAME = "entity"
PRODUCT_TYPE_NAME = NODE_TYPE_NAMES["Product"]


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
    options: KgExport,
) -> dict:
    """Add the KG relations with linked entities merged into their products, the free entities
    kept (:class:`KgExport`) and their edges; returns the counts (empty when there are no entities)."""
    entities = store.nodes("Entity")
    if len(entities) == 0:
        return {}
    key = node_type("Entity").key
    num_products = len(id_maps["product"])
    links = store.edges("DESCRIBES")
    link_entity = links["source"].astype(str) if len(links) else pd.Series([], dtype=str)
    link_product = links["target"].astype(str).map(index["product"]) if len(links) else pd.Series([], dtype=float)
    if link_product.isna().any():
        bad = links[link_product.isna()].iloc[0]
        raise ValueError(f"DESCRIBES edge {bad['source']!r} -> {bad['target']!r} names a product that does not exist")
    all_entities = set(entities[key].astype(str))
    unknown = sorted(set(link_entity) - all_entities)
    if unknown:
        raise ValueError(f"DESCRIBES edge {unknown[0]!r} -> ... names an entity that does not exist")
    free = sorted(all_entities - set(link_entity))
    entity_index = pd.Index(sorted(all_entities))
    # one node space for the KG: products 0..P-1, then the free entities
    to_node = pd.concat([
        pd.DataFrame({"entity": link_entity.to_numpy(), "node": link_product.to_numpy(dtype=np.int64)}),
        pd.DataFrame({"entity": free, "node": np.arange(num_products, num_products + len(free), dtype=np.int64)}),
    ], ignore_index=True)
    relations: dict[str, np.ndarray] = {}
    for name in store_kg_relations(store):
        edges = store.edges(name)
        pairs = pd.DataFrame({"source": edges["source"].astype(str), "target": edges["target"].astype(str)})
        for side in ("source", "target"):
            missing = entity_index.get_indexer(pairs[side]) < 0
            if missing.any():
                bad = pairs[missing].iloc[0]
                raise ValueError(f"{name} edge {bad['source']!r} -> {bad['target']!r} names a node that does not exist")
        merged = (pairs.merge(to_node.rename(columns={"entity": "source", "node": "src"}), on="source")
                  .merge(to_node.rename(columns={"entity": "target", "node": "dst"}), on="target"))
        index_pairs = merged[["src", "dst"]].to_numpy(dtype=np.int64).reshape(-1, 2)
        index_pairs = index_pairs[index_pairs[:, 0] != index_pairs[:, 1]]  # an entity about its own product
        relations[name] = np.unique(index_pairs, axis=0)
    num_nodes = num_products + len(free)
    dropped = _inverse_relations(relations, num_nodes) if options.drop_inverse else []
    for name in dropped:
        del relations[name]
    keep = np.ones(num_nodes, dtype=bool)
    if options.kg_hops > 0:
        keep[num_products:] = _useful_entities(list(relations.values()), num_nodes, num_products, options.kg_hops,
                                               options.min_products)[num_products:]
    kept = np.flatnonzero(keep[num_products:])
    id_maps[ENTITY_TYPE_NAME] = [free[i] for i in kept]
    index[ENTITY_TYPE_NAME] = {k: i for i, k in enumerate(id_maps[ENTITY_TYPE_NAME])}
    # KG node -> (is it an entity, its index within its type); -1 marks a left-out entity
    local = np.full(num_nodes, -1, dtype=np.int64)
    local[:num_products] = np.arange(num_products)
    local[num_products + kept] = np.arange(len(kept))
    kinds = (PRODUCT_TYPE_NAME, ENTITY_TYPE_NAME)
    edge_count = 0
    for name, pairs in relations.items():
        pairs = pairs[keep[pairs[:, 0]] & keep[pairs[:, 1]]]
        is_entity = pairs >= num_products
        for src_kind in (0, 1):
            for dst_kind in (0, 1):
                part = pairs[(is_entity[:, 0] == bool(src_kind)) & (is_entity[:, 1] == bool(dst_kind))]
                if len(part):
                    structure[(kinds[src_kind], name.lower(), kinds[dst_kind])] = torch.as_tensor(local[part].T.copy())
                    edge_count += len(part)
    return {"linked_entities": int(len(set(link_entity))), "free_entities": len(free), "kept_entities": int(len(kept)),
            "relations": sorted(relations), "inverse_relations_dropped": dropped, "kg_edges": int(edge_count),
            "kg_hops": options.kg_hops, "min_products": options.min_products}



def _inverse_relations(relations: dict[str, np.ndarray], num_nodes: int) -> list[str]:
    """Relations whose edge set is exactly an earlier (sorted by name) relation's reversed."""
    seen: dict[bytes, str] = {}
    dropped = []
    for name in sorted(relations):
        pairs = relations[name]
        codes = np.sort(pairs[:, 0] * num_nodes + pairs[:, 1])
        reversed_codes = np.sort(pairs[:, 1] * num_nodes + pairs[:, 0])
        if len(pairs) and reversed_codes.tobytes() in seen:
            dropped.append(name)
            continue
        seen.setdefault(codes.tobytes(), name)
    return dropped


def _useful_entities(relations: list[np.ndarray], num_nodes: int, num_products: int, hops: int,
                     min_products: int) -> np.ndarray:
    """``[N]`` bool over the KG nodes (products first): the entities a GNN of ``hops`` layers can use.

    An entity is *shared* when at least ``min_products`` products reach it within ``hops`` hops
    (its embedding ties those products together). An entity is kept when it is shared or relays
    one: it lies on a path of at most ``hops`` hops from a product to a shared entity."""
    edges = [p for p in relations if len(p)]
    pairs = np.concatenate(edges) if edges else np.empty((0, 2), dtype=np.int64)
    src = torch.as_tensor(np.concatenate([pairs[:, 0], pairs[:, 1]]))
    dst = torch.as_tensor(np.concatenate([pairs[:, 1], pairs[:, 0]]))
    reached = _products_within(src, dst, num_nodes, num_products, hops, min_products)
    shared = (reached >= min_products) & (torch.arange(num_nodes) >= num_products)
    to_product = _hops_from(torch.arange(num_nodes) < num_products, src, dst, hops)
    to_shared = _hops_from(shared, src, dst, hops)
    return ((to_product + to_shared) <= hops).numpy()


def _hops_from(sources: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, hops: int) -> torch.Tensor:
    """``[N]`` hops from the nearest of ``sources`` (``[N]`` bool) along undirected edges, up to
    ``hops``; farther nodes get ``hops + 1``."""
    distance = torch.where(sources, 0, hops + 1)
    for _ in range(hops):
        step = torch.full_like(distance, hops + 1)
        step.scatter_reduce_(0, dst, distance[src] + 1, reduce="amin")
        distance = torch.minimum(distance, step)
    return distance


def _products_within(src: torch.Tensor, dst: torch.Tensor, num_nodes: int, num_products: int, hops: int,
                     most: int) -> torch.Tensor:
    """``[N]``: how many distinct products (counted up to ``most``) each node reaches within
    ``hops`` undirected hops. Exact without an ``N x P`` matrix: each node keeps its ``most``
    smallest reachable product ids; the smallest of a union are among the smallest of its parts."""
    none = num_nodes  # larger than any product id
    smallest = torch.full((num_nodes, most), none, dtype=torch.long)
    smallest[:num_products, 0] = torch.arange(num_products)
    nodes = torch.arange(num_nodes)
    for _ in range(hops):
        # candidates of node v: its own and each neighbour's ``most`` smallest
        owner = torch.cat([nodes.repeat_interleave(most), dst.repeat_interleave(most)])
        value = torch.cat([smallest.flatten(), smallest[src].flatten()])
        new = torch.full((num_nodes, most), none, dtype=torch.long)
        previous = torch.full((num_nodes,), -1, dtype=torch.long)
        for j in range(most):
            allowed = value > previous[owner]
            column = torch.full((num_nodes,), none, dtype=torch.long)
            column.scatter_reduce_(0, owner[allowed], value[allowed], reduce="amin")
            new[:, j] = column
            previous = column
        smallest = new
    return (smallest < none).sum(1)


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

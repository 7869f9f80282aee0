"""Knowledge-graph paths that link a user to a recommended product.

Three path shapes, read from an artifact's stored structure (no store needed):

* ``brand``:       (user) -[PURCHASED]-> (X) -[MADE_BY]-> (brand) <-[MADE_BY]- (Y)
* ``category``:    (user) -[PURCHASED]-> (X) -[IN_CATEGORY]-> (category) <-[IN_CATEGORY]- (Y)
* ``co_purchase``: (user) -[PURCHASED]-> (X) <-[*]- (other users) -[*]-> (Y)

``X`` runs over the products in the user's visible history (the interaction type
of the first hop is the one recorded, e.g. ``VIEWED``); ``category`` means the
same leaf category. Each path gets a score, a documented heuristic:

    score = max(cos(user, X), 0) * max(cos(X, Y), 0) * link

with ``cos`` taken between the model's own vectors (the serving state's product
vectors and the user vector the scorer computes; 1 when the model has no user
vector) and ``link`` = 1 for a shared brand or category, ``n / (n + 1)`` for
``n`` co-buyers. So a path counts when the user leans towards ``X`` and the model
puts ``X`` near ``Y``. It is a reading of the model, not the model's own
reasoning: the fused scorer does not walk these paths.

Paths are ranked by score, with the best path of each history product first (so
the top few show different products ``X``), then the remaining paths.

Each path comes with a parameterised Cypher query to open in the Neo4j Browser:
labels, relationship types and keys come from :mod:`kgrec.kg.schema` (checked and
back-quoted), values travel only as parameters.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from kgrec.kg.schema import check_identifier, interaction_types, node_type, rel_type

PATH_KINDS = ("brand", "category", "co_purchase")


def _label(label: str) -> str:
    return f"`{check_identifier(node_type(label).label, 'label')}`"


def _key(label: str) -> str:
    return f"`{check_identifier(node_type(label).key, 'property key')}`"


def _rel(name: str) -> str:
    return f"`{check_identifier(rel_type(name).name, 'relationship type')}`"


def _node(var: str, label: str, param: str | None) -> str:
    if param is None:
        return f"({var}:{_label(label)})"
    return f"({var}:{_label(label)} {{{_key(label)}: ${check_identifier(param, 'parameter')}}})"


@dataclass
class KGPath:
    """One path from the user to the product.

    Attributes:
        kind: ``brand``, ``category`` or ``co_purchase``.
        via: the history product ``X`` the path runs through.
        nodes: ``(label, id)`` along the path, user first, product last (for
            ``co_purchase`` the middle user is one representative co-buyer, the one
            with the smallest index; the Cypher query shows all of them).
        rels: ``(type, direction)`` between consecutive nodes, direction ``"->"``
            (stored from the earlier node to the later) or ``"<-"``.
        score: the heuristic above. support: co-buyers (``co_purchase``), else 1.
        text: the path in words. cypher / params: a query that shows the path.
    """

    kind: str
    via: str
    nodes: list[tuple[str, str]]
    rels: list[tuple[str, str]]
    score: float
    support: int
    text: str
    cypher: str
    params: dict[str, object] = field(default_factory=dict)

    def browser_params(self) -> str:
        """The Neo4j Browser command that sets the parameters (``:params {...}``)."""
        body = ", ".join(f"{check_identifier(k, 'parameter')}: {json.dumps(v)}" for k, v in self.params.items())
        return f":params {{{body}}}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["nodes"] = [list(n) for n in self.nodes]
        out["rels"] = [list(r) for r in self.rels]
        out["browser_params"] = self.browser_params()
        return out


@dataclass
class Explanation:
    """Why ``product_id`` is recommended to ``user_id``: the best paths, best first."""

    user_id: str
    product_id: str
    source: str
    model_score: float
    paths: list[KGPath]

    def to_dict(self) -> dict:
        return {
            "user_id": self.user_id,
            "product_id": self.product_id,
            "source": self.source,
            "model_score": self.model_score,
            "paths": [p.to_dict() for p in self.paths],
        }


#: First hop of a path from a session (a visitor the graph does not hold): not a stored edge.
SESSION = "SESSION"


def _cypher(kind: str, first_rel: str) -> str:
    """The query; a ``SESSION`` first hop is left out (the query starts at ``x``)."""
    product, via = _node("y", "Product", "product_id"), _node("x", "Product", "via_id")
    if first_rel == SESSION:
        user, first = "", ""
    else:
        user, first = _node("u", "User", "user_id"), f"-[:{_rel(first_rel)}]->"
    if kind == "brand":
        made = _rel("MADE_BY")
        return f"MATCH p = {user}{first}{via}-[:{made}]->{_node('b', 'Brand', 'brand_id')}<-[:{made}]-{product} RETURN p"
    if kind == "category":
        inside = _rel("IN_CATEGORY")
        return (f"MATCH p = {user}{first}{via}-[:{inside}]->{_node('c', 'Category', 'category_id')}"
                f"<-[:{inside}]-{product} RETURN p")
    if kind == "co_purchase":
        events = "|".join(_rel(r) for r in interaction_types())
        return (f"MATCH p = {user}{first}{via}<-[:{events}]-{_node('v', 'User', None)}-[:{events}]->{product} "
                + ("WHERE v <> u " if user else "") + "RETURN p LIMIT $limit")
    raise ValueError(f"unknown path kind {kind!r}; known: {PATH_KINDS}")


def find_paths(
    *,
    user_id: str,
    user_index: int,
    history: list[tuple[int, str]],
    target: int,
    product_ids: list[str],
    titles: list[str],
    brand: np.ndarray,
    category: np.ndarray,
    buyers: dict[int, dict[int, str]],
    user_ids: list[str],
    product_vectors: torch.Tensor,
    user_vector: torch.Tensor | None,
    max_paths: int = 5,
    kinds: tuple[str, ...] = PATH_KINDS,
) -> list[KGPath]:
    """The best ``max_paths`` paths from the user (through ``history``) to ``target``.

    Args:
        user_index: the user's index (-1 for a session user, who has no node in the graph).
        history: ``(product index, relationship type)``, oldest first; the type
            :data:`SESSION` marks a session item (not in the graph).
        brand, category: per product the brand / leaf category id (``""`` when none).
        buyers: product index -> {user index: relationship type} of the users who
            interacted with it (visible; the latest interaction's type).
        product_vectors: ``[P, d]`` the model's product vectors; user_vector ``[d]`` or None.
    """
    if max_paths < 1:
        raise ValueError(f"max_paths must be >= 1, got {max_paths}")
    unknown = set(kinds) - set(PATH_KINDS)
    if unknown:
        raise ValueError(f"unknown path kinds {sorted(unknown)}; known: {PATH_KINDS}")
    latest: dict[int, str] = {}
    for product, rel in history:  # the last interaction with X names the first hop
        latest.pop(product, None)
        latest[product] = rel
    latest.pop(target, None)
    if not latest:
        return []
    via = torch.as_tensor(list(latest), dtype=torch.long)
    vectors = F.normalize(product_vectors.float(), dim=-1)
    to_target = (vectors[via] @ vectors[target]).clamp(min=0)
    if user_vector is None:
        to_user = torch.ones(len(via))
    else:
        to_user = (vectors[via] @ F.normalize(user_vector.float(), dim=-1)).clamp(min=0)
    strength = (to_user * to_target).tolist()

    target_buyers = set(buyers.get(target, {})) - {user_index}
    y_id, y_title = product_ids[target], _short(titles[target])
    out: list[KGPath] = []
    for (x, rel), base in zip(latest.items(), strength):
        x_id, x_title = product_ids[x], _short(titles[x])
        common = {"via_id": x_id, "product_id": y_id} if rel == SESSION else {"user_id": user_id, "via_id": x_id, "product_id": y_id}
        start = [("User", user_id), ("Product", x_id)]
        if "brand" in kinds and brand[x] and brand[x] == brand[target]:
            out.append(KGPath(
                "brand", x_id, [*start, ("Brand", str(brand[x])), ("Product", y_id)],
                [(rel, "->"), ("MADE_BY", "->"), ("MADE_BY", "<-")], base, 1,
                f"{rel.lower()} {x_id} ({x_title}) -> same brand {brand[x]} -> {y_id} ({y_title})",
                _cypher("brand", rel), {**common, "brand_id": str(brand[x])},
            ))
        if "category" in kinds and category[x] and category[x] == category[target]:
            out.append(KGPath(
                "category", x_id, [*start, ("Category", str(category[x])), ("Product", y_id)],
                [(rel, "->"), ("IN_CATEGORY", "->"), ("IN_CATEGORY", "<-")], base, 1,
                f"{rel.lower()} {x_id} ({x_title}) -> in category {category[x]} <- {y_id} ({y_title})",
                _cypher("category", rel), {**common, "category_id": str(category[x])},
            ))
        if "co_purchase" in kinds:
            shared = (set(buyers.get(x, {})) - {user_index}) & target_buyers
            if shared:
                n = len(shared)
                v = min(shared)
                out.append(KGPath(
                    "co_purchase", x_id, [*start, ("User", user_ids[v]), ("Product", y_id)],
                    [(rel, "->"), (buyers[x][v], "<-"), (buyers[target][v], "->")], base * n / (n + 1), n,
                    f"{rel.lower()} {x_id} ({x_title}) <- also bought by {n} user{'s' if n > 1 else ''} -> {y_id} ({y_title})",
                    _cypher("co_purchase", rel), {**common, "limit": 25},
                ))
    out.sort(key=lambda p: (-p.score, PATH_KINDS.index(p.kind), p.via))
    first: list[KGPath] = []
    rest: list[KGPath] = []
    vias: set[str] = set()
    for path in out:  # the best path of each history product first, then the others
        (rest if path.via in vias else first).append(path)
        vias.add(path.via)
    return (first + rest)[:max_paths]


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"

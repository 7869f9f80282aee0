"""Search training inputs: judged-query examples, the search graph, personalised examples.

Two sources of graded search examples, one format (:class:`~kgrec.fusion.data.SearchBatch`):

* **judged queries** (Home Depot): each query's judged products with their grades
  (:func:`judged_examples`); the query-disjoint split keeps test queries unseen. The
  message-passing graph gains the *train* queries as nodes with ``judged`` edges to their
  relevant products (:func:`search_graph`), so a product's graph vector carries the text of
  the queries it is known to answer — never a valid/test judgement;
* **personalised product search** (the demo data, the protocol of HEM / ZAM): every purchase
  becomes a query made of the purchased product's category path, issued by that user with
  the history before it, the purchased product the one relevant answer
  (:func:`category_path_examples`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from kgrec.fusion.data import RecBatch, SearchBatch, evaluation_examples, training_examples
from kgrec.fusion.models import QUERY_EDGE, REV_QUERY_EDGE
from kgrec.kg.export import GraphSnapshot
from kgrec.kg.judgements import judgements_from_frame

# --------------------------------------------------------------------------- judged queries


def judged_examples(
    judgements: pd.DataFrame,
    query_vectors: torch.Tensor,
    query_index: dict[str, int],
    query_nodes: dict[str, int] | None = None,
    max_history: int = 1,
) -> SearchBatch:
    """One example per query from a judgement table.

    Args:
        judgements: ``query_id``, ``query``, ``product`` (index), ``grade`` columns.
        query_vectors: ``[Q_all, d_text]`` text vectors; ``query_index`` maps a query_id to its row.
        query_nodes: query_id -> node index in the search graph (train queries), or None.
    """
    judged = judgements_from_frame(judgements.assign(label=judgements["grade"]))
    n = len(judged)
    rows = torch.as_tensor([query_index[q] for q in judged.query_ids], dtype=torch.long)
    nodes = torch.as_tensor([(query_nodes or {}).get(q, -1) for q in judged.query_ids], dtype=torch.long)
    return SearchBatch(
        queries=query_vectors[rows], products=judged.products, grades=judged.grades,
        users=torch.full((n,), -1, dtype=torch.long),
        history=torch.full((n, max_history), -1, dtype=torch.long),
        query_nodes=nodes, texts=list(judged.queries),
    )


def search_graph(graph: HeteroData, judgements: pd.DataFrame, query_nodes: dict[str, int], min_grade: float = 1.0) -> HeteroData:
    """``graph`` plus query nodes and ``(query)-[judged]->(product)`` edges (and reverse) for the
    judgements of ``query_nodes`` (train queries only!) with ``grade >= min_grade``."""
    out = graph.clone()
    keep = judgements[judgements["query_id"].isin(query_nodes) & (judgements["grade"] >= min_grade)]
    src = torch.tensor(keep["query_id"].map(query_nodes).to_numpy(), dtype=torch.long)
    dst = torch.tensor(keep["product"].to_numpy(), dtype=torch.long)
    out["query"].num_nodes = len(query_nodes)
    out[QUERY_EDGE].edge_index = torch.stack([src, dst])
    out[REV_QUERY_EDGE].edge_index = torch.stack([src, dst]).flip(0)
    return out


# --------------------------------------------------------------------------- personalised search


def category_query(path: Sequence[str], skip_root: bool = True) -> str:
    """The query of a category path (HEM / ZAM): its level names, root dropped, joined."""
    levels = [str(p).strip() for p in path if str(p).strip()]
    if skip_root and len(levels) > 1:
        levels = levels[1:]
    return " ".join(levels)


def category_path_examples(
    snapshot: GraphSnapshot,
    split: str,
    product_queries: Sequence[str],
    query_vectors: torch.Tensor,
    max_history: int = 50,
) -> SearchBatch:
    """Personalised search examples: one per interaction of ``split`` (``"train"``: every train
    interaction after the user's first), query = the target's category-path query, the user's
    history before it, the target the only relevant product (grade 1).

    Args:
        product_queries: ``[P]`` query text of each product (:func:`category_query`).
        query_vectors: ``[P, d_text]`` text vectors of ``product_queries``.
    """
    batch: RecBatch = training_examples(snapshot, max_history) if split == "train" else evaluation_examples(snapshot, split, max_history)[0]
    targets = batch.targets
    return SearchBatch(
        queries=query_vectors[targets], products=targets.unsqueeze(1).clone(),
        grades=torch.ones(len(targets), 1), users=batch.users.clone(), history=batch.history.clone(),
        query_nodes=torch.full((len(targets),), -1, dtype=torch.long),
        texts=[product_queries[int(t)] for t in targets],
    )


def anonymous(batch: SearchBatch) -> SearchBatch:
    """The same examples without users or history (non-personalised search)."""
    return SearchBatch(batch.queries, batch.products, batch.grades, torch.full_like(batch.users, -1),
                       torch.full_like(batch.history, -1), batch.query_nodes, batch.texts)


def unique_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(distinct texts in first-seen order, index of each input in them)."""
    codes, uniques = pd.factorize(pd.Series(list(texts), dtype=object))
    return list(uniques), codes

"""Text features of a dataset: product and query vectors from one local BERT, cached on disk."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kgrec.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig
from kgrec.kg.judgements import QUERY_NODE_TYPE
from kgrec.workflow.data import Dataset
from kgrec.workflow.store import WorkflowError


@dataclass
class TextFeatures:
    """Frozen text vectors of a :class:`~kgrec.workflow.data.Dataset`.

    Attributes:
        encoder: the :class:`~kgrec.encoders.text.TextEncoder` that made them.
        products: ``[P, d]`` vectors of ``snapshot.product_text`` (title, category levels, brand).
        queries: ``[Q, d]`` vectors of ``dataset.queries["query"]``, in row order (``[0, d]`` without judgements).
        query_nodes: ``[Qn, d]`` vectors of the snapshot's ``query`` nodes (the train queries), in id order.
    """

    encoder: TextEncoder
    products: torch.Tensor
    queries: torch.Tensor
    query_nodes: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.products.shape[1])


def load_text_encoder(text_model: str | os.PathLike[str] | None = None) -> TextEncoder:
    """The text encoder of ``text_model`` (a local BERT-family folder; default the packaged
    all-MiniLM-L6-v2). Raises :class:`WorkflowError` for a folder that holds no such model."""
    try:
        return TextEncoder(TextEncoderConfig(model_path=str(text_model) if text_model else None))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise WorkflowError(f"text model {str(text_model) if text_model else '(packaged MiniLM)'}: {exc}") from None


def encode_text(
    dataset: Dataset,
    encoder: TextEncoder,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> TextFeatures:
    """Encode the products' texts and every judged query with ``encoder`` (``cache_dir``: an
    :class:`~kgrec.encoders.text.EmbeddingCache` folder, so a rerun encodes nothing)."""
    cache = EmbeddingCache(Path(cache_dir)) if cache_dir is not None else None
    products = encoder.encode(list(dataset.snapshot.product_text), cache=cache, progress=progress)
    texts = dataset.queries["query"].astype(str).tolist()
    queries = encoder.encode(texts, cache=cache, progress=progress) if texts else torch.zeros(0, encoder.dim)
    node_ids = dataset.snapshot.id_maps.get(QUERY_NODE_TYPE, [])
    row = {q: i for i, q in enumerate(dataset.queries["query_id"].astype(str))}
    missing = [q for q in node_ids if q not in row]
    if missing:
        raise WorkflowError(f"query nodes without a judged query: {missing[:3]}")
    query_nodes = queries[torch.as_tensor([row[q] for q in node_ids], dtype=torch.long)] if node_ids else torch.zeros(0, encoder.dim)
    return TextFeatures(encoder, products, queries, query_nodes)

"""Shared test fixtures: a tiny random BERT and a tiny catalogue with its knowledge graph."""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_WORDS = (
    "the a an and or of for with to in on red blue green black white small large "
    "cordless drill battery powered electric hammer screwdriver saw wrench nitrile "
    "latex gloves safety glasses boots helmet paint brush roller tape measure ladder "
    "steel wood plastic metal set kit pack box pro tool tools power hand garden hose "
    "light lamp led cable charger volt"
).split()
TINY_SUBWORDS = ("##s", "##er", "##ing", "##ed", "##ly", "##es")
TINY_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tiny_bert(directory, seed: int = 0) -> str:
    """Write a tiny random BERT (hidden 32, 2 layers, 2 heads, intermediate 37)
    plus a WordPiece tokenizer over a small local word list into ``directory``
    with ``save_pretrained``; returns the directory as a string.

    Deterministic for a given ``seed``; does not disturb the global torch RNG.
    Loadable with ``AutoTokenizer``/``AutoModel.from_pretrained(dir, local_files_only=True)``.
    """
    import string

    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = list(TINY_SPECIALS) + list(string.ascii_lowercase) + list(string.digits)
    tokens += [t for t in TINY_WORDS if t not in tokens] + list(TINY_SUBWORDS)
    tokens += [f"##{c}" for c in string.ascii_lowercase + string.digits if f"##{c}" not in tokens]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    # transformers 5: BertTokenizer is tokenizers-backed and takes the vocab dict directly.
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=128)
    tokenizer.save_pretrained(str(directory))

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        pad_token_id=vocab["[PAD]"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.eval()
    model.save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """Session-wide tiny random BERT directory (see :func:`build_tiny_bert`)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_tables():
    """Session-wide :func:`build_tiny_tables`."""
    return build_tiny_tables()


def build_tiny_tables():
    """A catalogue of 24 products (3 brands, a 2-level category tree) and 10 users
    with 6 purchases each, drawn with a fixed seed."""
    import numpy as np
    import pandas as pd

    from ingest.tables import CatalogTables

    rng = np.random.default_rng(0)
    words = ["drill", "saw", "gloves", "tape", "paint", "ladder"]
    products = pd.DataFrame(
        {
            "product_id": [f"P{i:02d}" for i in range(24)],
            "title": [f"{words[i % 6]} {['red', 'blue', 'green', 'black'][i // 6]} kit" for i in range(24)],
            "brand": [["Acme", "Bolt", ""][i % 3] for i in range(24)],
            "category_path": [["Tools", ["Power", "Hand"][i % 2]] if i % 5 else [] for i in range(24)],
        }
    )
    users = pd.DataFrame({"user_id": [f"U{i}" for i in range(10)]})
    rows = []
    for u in range(10):
        for order, p in enumerate(rng.choice(24, size=6, replace=False)):
            rows.append((f"U{u}", f"P{p:02d}", "purchase", order))
    interactions = pd.DataFrame(rows, columns=["user_id", "product_id", "event", "order"])
    return CatalogTables(products=products, users=users, interactions=interactions)


@pytest.fixture(scope="session")
def tiny_store(tiny_tables, tmp_path_factory):
    from ingest.load import load_tables
    from kg.embedded import EmbeddedStore

    store = EmbeddedStore(tmp_path_factory.mktemp("store"))
    load_tables(tiny_tables, store, progress=False)
    return store


@pytest.fixture(scope="session")
def tiny_snapshot(tiny_store):
    from kg.export import export_snapshot

    return export_snapshot(tiny_store)

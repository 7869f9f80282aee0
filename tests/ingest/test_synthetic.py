"""The synthetic catalogue generator: determinism, sizes, references, shape of the data, and the
round trip through the tables layout, the ingest pipeline and the export."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kgrec.ingest.synthetic import SIZES, SyntheticConfig, generate_catalogue, write_tables_fast
from kgrec.ingest.tables import read_tables, write_tables

SMALL = dict(num_products=3000, num_users=800, num_interactions=12_000, category_branching=4, seed=3)


@pytest.fixture(scope="module")
def small():
    return generate_catalogue(SyntheticConfig(**SMALL))


def test_same_config_same_tables_other_seed_other_tables(small):
    again = generate_catalogue(SyntheticConfig(**SMALL))
    for a, b in ((small.products, again.products), (small.users, again.users), (small.interactions, again.interactions)):
        pd.testing.assert_frame_equal(a, b)
    other = generate_catalogue(SyntheticConfig(**{**SMALL, "seed": 4}))
    assert not other.interactions["product_id"].equals(small.interactions["product_id"])


def test_counts_and_ids(small):
    assert len(small.products) == 3000 and small.products["product_id"].is_unique
    assert len(small.users) == 800 and small.users["user_id"].is_unique
    assert len(small.interactions) == 12_000
    assert set(small.interactions["user_id"]) <= set(small.users["user_id"])
    assert set(small.interactions["product_id"]) <= set(small.products["product_id"])
    per_user = small.interactions.groupby("user_id").size()
    assert len(per_user) == 800 and per_user.min() >= 3
    # order runs 0..n-1 within each user, rows sorted by user then order
    expected = small.interactions.groupby("user_id", sort=False).cumcount()
    assert (small.interactions["order"].to_numpy() == expected.to_numpy()).all()
    assert set(small.interactions["event"]) <= {"view", "cart", "purchase"}
    assert (small.products["title"].str.len() > 10).all()
    assert all(t.startswith(b + " ") for t, b in zip(small.products["title"], small.products["brand"]))


def test_popularity_is_power_law(small):
    counts = small.interactions["product_id"].value_counts().to_numpy()
    top = counts[: len(small.products) // 100].sum() / counts.sum()
    assert top > 0.25, top  # the top 1% of products carry over a quarter of all interactions
    flat = generate_catalogue(SyntheticConfig(**{**SMALL, "popularity_exponent": 0.0}))
    flat_counts = flat.interactions["product_id"].value_counts().to_numpy()
    assert flat_counts[:30].sum() / flat_counts.sum() < top / 2


def test_category_tree(small):
    paths = small.products["category_path"]
    assert (paths.map(len) == 3).all()
    prefixes = {tuple(p[: i + 1]) for p in paths for i in range(3)}
    by_level = [sum(1 for q in prefixes if len(q) == i + 1) for i in range(3)]
    assert by_level[0] <= 4 and by_level[1] <= 16 and by_level[2] <= 64
    # a full tree: every parent has children with distinct names
    for level in (1, 2):
        children = {}
        for q in prefixes:
            if len(q) == level + 1:
                children.setdefault(q[:-1], []).append(q[-1])
        assert all(len(set(c)) == len(c) for c in children.values())
    deep = generate_catalogue(SyntheticConfig(**{**SMALL, "category_depth": 4, "category_branching": 3}))
    assert (deep.products["category_path"].map(len) == 4).all()


def test_sequences_stay_in_few_categories(small):
    """Users prefer a few leaves: consecutive interactions share a leaf far more often than chance."""
    leaf = dict(zip(small.products["product_id"], small.products["category_path"].map(tuple)))
    inter = small.interactions
    leaves = inter["product_id"].map(leaf)
    same_user = inter["user_id"].to_numpy()[1:] == inter["user_id"].to_numpy()[:-1]
    same_leaf = (leaves.to_numpy()[1:] == leaves.to_numpy()[:-1])[same_user].mean()
    chance = (leaves.value_counts(normalize=True) ** 2).sum()
    assert same_leaf > 0.5 and same_leaf > 5 * chance, (same_leaf, chance)
    assert inter.duplicated(["user_id", "product_id"]).mean() < 0.02


def test_presets_and_bad_configs():
    assert SyntheticConfig.preset("10k").num_products == SIZES["10k"][0]
    assert SyntheticConfig.preset("1m", seed=5).num_interactions == 10_000_000
    with pytest.raises(ValueError, match="unknown size"):
        SyntheticConfig.preset("7")
    with pytest.raises(ValueError, match="num_interactions"):
        SyntheticConfig(num_products=10, num_users=10, num_interactions=20)
    with pytest.raises(ValueError, match="num_products"):
        SyntheticConfig(num_products=0, num_users=1, num_interactions=3)
    with pytest.raises(ValueError, match="event_probs"):
        SyntheticConfig(num_products=10, num_users=1, num_interactions=3, event_probs={"teleport": 1.0})
    with pytest.raises(ValueError, match="follow_prob"):
        SyntheticConfig(num_products=10, num_users=1, num_interactions=3, follow_prob=1.5)


@pytest.mark.parametrize("writer", [write_tables, write_tables_fast])
def test_written_tables_read_back(writer, tmp_path):
    tables = generate_catalogue(SyntheticConfig(num_products=200, num_users=40, num_interactions=400,
                                                category_branching=3, seed=1))
    writer(tables, tmp_path)
    back = read_tables(tmp_path)
    assert back.products["product_id"].tolist() == tables.products["product_id"].tolist()
    assert back.products["title"].tolist() == tables.products["title"].tolist()
    assert back.products["category_path"].tolist() == tables.products["category_path"].tolist()
    assert back.users["user_id"].tolist() == tables.users["user_id"].tolist()
    for column in ("user_id", "product_id", "event", "order"):
        assert back.interactions[column].tolist() == tables.interactions[column].tolist()


def test_ingest_and_export(tmp_path):
    """The written tables go through the pipeline ``kgrec ingest`` runs and export to a snapshot."""
    from kgrec.ingest.pipeline import IngestConfig, Ingestor
    from kgrec.ingest.sources import discover
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_snapshot

    tables = generate_catalogue(SyntheticConfig(num_products=300, num_users=50, num_interactions=500,
                                                category_branching=3, num_brands=6, seed=2))
    write_tables_fast(tables, tmp_path / "tables")
    store = EmbeddedStore(tmp_path / "store")
    report = Ingestor(store, IngestConfig(state_dir=tmp_path / "state")).run(discover([tmp_path / "tables"]).sources)
    assert report.rejected == 0 and report.read == 300 + 50 + 500
    counts = store.counts()
    assert counts["Product"] == 300 and counts["User"] == 50 and counts["Brand"] == 6
    prefixes = {tuple(p[: i + 1]) for p in tables.products["category_path"] for i in range(3)}
    assert counts["Category"] == len(prefixes) and len(prefixes) <= 3 + 9 + 27
    assert sum(counts[r] for r in ("VIEWED", "ADDED_TO_CART", "PURCHASED")) == 500
    snap = export_snapshot(store)
    assert snap.num_products == 300 and snap.num_users == 50 and len(snap.interactions) == 500
    assert (snap.interactions["split"] == "test").sum() == 50  # every user has >= 3 interactions
    order = np.argsort(snap.id_maps["product"])
    assert [snap.id_maps["product"][i] for i in order] == sorted(tables.products["product_id"])

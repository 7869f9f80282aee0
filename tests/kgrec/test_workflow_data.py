"""What a store holds decides the tasks: the dataset's splits and the reasons a task cannot run."""
from __future__ import annotations

import pandas as pd
import pytest

from kgrec.ingest.load import load_tables
from kgrec.ingest.tables import CatalogTables
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.judgements import QUERY_EDGE_TYPE, QUERY_NODE_TYPE
from kgrec.workflow.data import SplitConfig, load_dataset, store_timestamps
from kgrec.workflow.ingest import ingest_files
from kgrec.workflow.store import WorkflowError, open_store


def test_interactions_and_judgements_give_both_tasks(tiny_tables, tiny_judgements, tmp_path):
    from kgrec.ingest.tables import write_tables

    write_tables(tiny_tables, tmp_path / "data")
    tiny_judgements.to_csv(tmp_path / "data" / "judgements.csv", index=False)
    ingest_files([tmp_path / "data"], tmp_path / "store")
    dataset = load_dataset(open_store(tmp_path / "store"))
    assert dataset.tasks == ("rec", "search")
    judged = dataset.judgements
    assert len(judged) == len(tiny_judgements) and judged["grade"].tolist() == judged["label"].tolist()
    # every judgement of a query shares its split; only train queries are graph nodes
    assert (judged.groupby("query_id")["split"].nunique() == 1).all()
    train_queries = sorted(dataset.queries.loc[dataset.queries["split"] == "train", "query_id"])
    assert dataset.snapshot.id_maps[QUERY_NODE_TYPE] == train_queries
    edges = dataset.snapshot.structure[QUERY_EDGE_TYPE]
    relevant = judged[(judged["split"] == "train") & (judged["grade"] >= 1)]
    assert edges.shape[1] == len(relevant)
    graph = dataset.snapshot.message_passing("train")
    assert graph["query"].num_nodes == len(train_queries) and ("product", "rev_judged", "query") in graph.edge_types
    assert dataset.counts["queries"] == {s: int((dataset.queries["split"] == s).sum()) for s in ("train", "valid", "test")}


@pytest.mark.parametrize("purchases, reason", [
    (0, "the store holds no interactions"),
    (2, "leave-one-out needs users with at least 3 interactions"),
])
def test_why_recommendation_cannot_run(tiny_tables, tmp_path, purchases, reason):
    inter = tiny_tables.interactions.groupby("user_id").head(purchases)
    store = EmbeddedStore(tmp_path)
    load_tables(CatalogTables(tiny_tables.products, tiny_tables.users, inter), store, progress=False)
    dataset = load_dataset(store)
    assert "rec" not in dataset.tasks and reason in dataset.why_not("rec")
    with pytest.raises(WorkflowError, match="cannot train or evaluate recommendation"):
        dataset.require(("rec",))


def test_why_search_cannot_run_on_a_few_queries(tiny_tables, tiny_judgements, tmp_path):
    from kgrec.ingest.tables import write_tables

    write_tables(tiny_tables, tmp_path / "data")
    few = tiny_judgements[tiny_judgements["query"].isin(["drill", "saw"])]
    few.to_csv(tmp_path / "data" / "judgements.csv", index=False)
    ingest_files([tmp_path / "data"], tmp_path / "store")
    dataset = load_dataset(open_store(tmp_path / "store"))
    assert dataset.tasks == ("rec",) and "2 judged queries are too few for a query split" in dataset.why_not("search")


def test_store_timestamps_and_the_temporal_protocol(tiny_tables, tmp_path):
    inter = tiny_tables.interactions.assign(timestamp=[100 * int(u[1:]) + 7 * o for u, o in
                                                        zip(tiny_tables.interactions["user_id"], tiny_tables.interactions["order"])])
    store = EmbeddedStore(tmp_path / "with")
    load_tables(CatalogTables(tiny_tables.products, tiny_tables.users, inter), store, progress=False)
    stamps = store_timestamps(store)
    assert sorted(stamps["timestamp"].astype(int)) == sorted(inter["timestamp"])
    temporal = load_dataset(store, SplitConfig(protocol="temporal", temporal_quantile=0.5))
    split = temporal.snapshot.interactions
    cut = pd.Series(inter["timestamp"]).quantile(0.5, interpolation="higher")
    assert (split.loc[split["split"] == "train", "timestamp"] < cut).all()
    assert (split.loc[split["split"] != "train", "timestamp"] >= cut).all()
    plain = EmbeddedStore(tmp_path / "without")
    load_tables(tiny_tables, plain, progress=False)
    assert store_timestamps(plain) is None
    with pytest.raises(WorkflowError, match="needs timestamps"):
        load_dataset(plain, SplitConfig(protocol="temporal"))


def test_open_store_refuses_what_is_not_a_store(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkflowError, match="is a file"):
        open_store(tmp_path / "file")
    with pytest.raises(WorkflowError, match="no knowledge-graph store here"):
        open_store(tmp_path / "empty")
    with pytest.raises(WorkflowError, match="no products"):
        load_dataset(open_store(tmp_path / "new", create=True))

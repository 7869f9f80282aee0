"""Split and ranking protocols: labels, and proof that held-out interactions never reach
message passing or training, for every protocol (leave-one-out, temporal, sampled)."""
import numpy as np
import pandas as pd
import pytest
import torch

from kgrec.evaluation.protocols import (
    apply_protocol,
    attach_timestamps,
    evaluate_sampled,
    leakage_counts,
    leave_one_out_split,
    sample_negatives,
    split_summary,
    temporal_split,
    with_split,
)
from kgrec.fusion.data import training_examples
from kgrec.fusion.models import INTERACTION_EDGE, MatrixFactorization, Popularity
from kgrec.fusion.train import TrainConfig, fit


def _timestamp_table(snapshot, seed=0):
    """Per-user increasing timestamps with user-specific starts and gaps (so a global cut
    splits users at different positions), as a tables-style frame keyed by external ids."""
    rng = np.random.default_rng(seed)
    inter = snapshot.interactions
    start = rng.integers(0, 1000, size=snapshot.num_users)
    gap = rng.integers(50, 400, size=snapshot.num_users)
    ts = start[inter["user"]] + gap[inter["user"]] * inter["order"].to_numpy()
    return pd.DataFrame({
        "user_id": [snapshot.id_maps["user"][u] for u in inter["user"]],
        "product_id": [snapshot.id_maps["product"][p] for p in inter["product"]],
        "order": inter["order"].to_numpy(),
        "timestamp": ts,
    })


@pytest.fixture(scope="module")
def temporal_snapshot(tiny_snapshot):
    return apply_protocol(attach_timestamps(tiny_snapshot, _timestamp_table(tiny_snapshot)), "temporal", quantile=0.7)


def _pairs(frame):
    return set(zip(frame["user"].tolist(), frame["product"].tolist()))


def test_leave_one_out_protocol_is_the_snapshot_default(tiny_snapshot):
    snap = apply_protocol(tiny_snapshot, "leave-one-out")
    assert snap.interactions["split"].tolist() == tiny_snapshot.interactions["split"].tolist()
    assert leave_one_out_split(tiny_snapshot.interactions).equals(tiny_snapshot.interactions["split"].rename("split"))
    with pytest.raises(ValueError, match="unknown protocol"):
        apply_protocol(tiny_snapshot, "random")


def test_temporal_labels(temporal_snapshot):
    inter = temporal_snapshot.interactions
    cut = inter["timestamp"].quantile(0.7, interpolation="higher")
    assert (inter.loc[inter["timestamp"] < cut, "split"] == "train").all()
    after = inter[inter["timestamp"] >= cut]
    assert set(after["split"]) <= {"valid", "test"} and len(after)
    for _, g in after.groupby("user"):
        g = g.sort_values("order")
        assert g["split"].tolist() == ["valid"] * (len(g) - 1) + ["test"]
    # users split at different positions; every test target is after every train interaction of anyone
    assert inter.loc[inter["split"] == "test", "timestamp"].min() >= inter.loc[inter["split"] == "train", "timestamp"].max()
    summary = split_summary(temporal_snapshot)
    assert summary["test"]["examples"] == summary["test"]["users"] == after["user"].nunique()


def test_temporal_explicit_cut_and_errors(tiny_snapshot):
    frame = pd.DataFrame({"user": [0, 0, 0, 1, 1], "order": [0, 1, 2, 0, 1], "timestamp": [1, 5, 9, 2, 3]})
    assert temporal_split(frame, cut=5).tolist() == ["train", "valid", "test", "train", "train"]
    dated = frame.assign(timestamp=pd.to_datetime(frame["timestamp"], unit="D"))
    assert temporal_split(dated, cut=pd.Timestamp("1970-01-04")).tolist() == ["train", "valid", "test", "train", "test"]
    with pytest.raises(ValueError, match="needs a 'timestamp' column"):
        temporal_split(frame.drop(columns="timestamp"))
    with pytest.raises(ValueError, match="back in time"):
        temporal_split(frame.assign(timestamp=[1, 9, 5, 2, 3]))
    with pytest.raises(ValueError, match="no timestamp"):
        attach_timestamps(tiny_snapshot, _timestamp_table(tiny_snapshot).iloc[1:])
    with pytest.raises(ValueError, match="unknown split labels"):
        with_split(tiny_snapshot, pd.Series("holdout", index=tiny_snapshot.interactions.index))


@pytest.fixture(params=["leave-one-out", "temporal", "sampled"])
def protocol_snapshot(request, tiny_snapshot, temporal_snapshot):
    snap = temporal_snapshot if request.param == "temporal" else apply_protocol(tiny_snapshot, "leave-one-out")
    return request.param, snap


def test_no_leakage_counts(protocol_snapshot):
    _, snap = protocol_snapshot
    counts = leakage_counts(snap)
    assert counts and all(v == 0 for v in counts.values()), counts


class SpyMF(MatrixFactorization):
    """MF that records every graph it is given and every batch it trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphs, self.batches = [], []

    def set_graph(self, graph):
        super().set_graph(graph)
        self.graphs.append(graph[INTERACTION_EDGE].edge_index.clone())

    def loss(self, batch):
        self.batches.append(batch)
        return super().loss(batch)


def test_training_and_scoring_never_see_test_targets(protocol_snapshot):
    """End to end through fit() and the protocol's evaluation: no purely held-out pair is ever in a
    graph the model gets before scoring test, nor in any training batch (target or history)."""
    from kgrec.evaluation.recommendation import evaluate

    name, snap = protocol_snapshot
    inter = snap.interactions
    train = _pairs(inter[inter["split"] == "train"])
    held = (_pairs(inter[inter["split"] == "test"]) | _pairs(inter[inter["split"] == "valid"])) - train
    test_only = _pairs(inter[inter["split"] == "test"]) - train - _pairs(inter[inter["split"] == "valid"])
    model = SpyMF(snap.num_users, snap.num_products, dim=8)
    fit(model, snap, TrainConfig(epochs=2, batch_size=8, device="cpu", patience=5), progress=False)
    assert model.batches
    for batch in model.batches:
        assert not held & set(zip(batch.users.tolist(), batch.targets.tolist()))
        rows, cols = torch.nonzero(batch.history >= 0, as_tuple=True)
        assert not held & set(zip(batch.users[rows].tolist(), batch.history[rows, cols].tolist()))
    for g in model.graphs:  # training and validation graphs
        assert not held & set(zip(*g.tolist()))
    model.graphs.clear()
    if name == "sampled":
        result = evaluate_sampled(model, snap, "test", num_negatives=5, ks=(1, 5))
    else:
        result = evaluate(model, snap, "test", ks=(5,))
    assert len(result.users) == (inter["split"] == "test").sum()
    assert len(model.graphs) == 1 and not test_only & set(zip(*model.graphs[0].tolist()))
    # the training examples are built from train rows only
    ex = training_examples(snap)
    assert set(zip(ex.users.tolist(), ex.targets.tolist())) <= train


def test_sample_negatives_uniform_and_excluding():
    exclude = torch.zeros(3, 10, dtype=torch.bool)
    exclude[0, :4] = True
    exclude[1, [2, 5]] = True
    gen = torch.Generator().manual_seed(0)
    neg = sample_negatives(exclude, 6, gen)
    assert neg.shape == (3, 6)
    for r in range(3):
        assert len(set(neg[r].tolist())) == 6 and not exclude[r, neg[r]].any()
    counts = torch.zeros(10)
    many = sample_negatives(torch.zeros(4000, 10, dtype=torch.bool), 2, torch.Generator().manual_seed(1))
    counts.index_add_(0, many.flatten(), torch.ones(many.numel()))
    assert (counts / counts.sum()).sub(0.1).abs().max() < 0.02
    with pytest.raises(ValueError, match="only 6 products"):
        sample_negatives(exclude, 7, gen)


def test_sampled_protocol(tiny_snapshot):
    snap = apply_protocol(tiny_snapshot, "leave-one-out")
    pop = Popularity(snap.num_users, snap.num_products)
    a = evaluate_sampled(pop, snap, "test", num_negatives=10, ks=(1, 5), seed=3)
    b = evaluate_sampled(pop, snap, "test", num_negatives=10, ks=(1, 5), seed=3)
    assert torch.equal(a.topk, b.topk) and a.metrics == b.metrics
    assert a.topk.shape == (10, 11)
    histories = {u: set(g) for u, g in snap.visible("test").groupby("user")["product"]}
    for row, u, t in zip(a.topk.tolist(), a.users.tolist(), a.targets.tolist()):
        assert t in row and not (set(row) - {t}) & histories[u] and len(set(row)) == 11
    assert 0.0 <= a.metrics["auc"] <= 1.0 and a.metrics["hit@1"] <= a.metrics["hit@5"]

    class Constant(Popularity):
        def score_all(self, batch):
            return torch.zeros(len(batch), self.num_products)

    c = evaluate_sampled(Constant(snap.num_users, snap.num_products), snap, "test", num_negatives=10, ks=(1, 5))
    assert c.metrics["hit@5"] == 0.0 and c.metrics["auc"] == pytest.approx(0.5)  # ties count against the target

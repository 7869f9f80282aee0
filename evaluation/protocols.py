"""Evaluation protocols: which interactions are trained on, validated and tested, and how
the test targets are ranked.

A *split protocol* is a function of :attr:`kgrec.kg.export.GraphSnapshot.interactions` that
returns one label per row, ``"train"``, ``"valid"`` or ``"test"``; :func:`with_split`
puts the labels on a snapshot, and from then on everything downstream
(:meth:`~kgrec.kg.export.GraphSnapshot.message_passing`, :func:`kgrec.fusion.data.training_examples`,
:func:`kgrec.evaluation.recommendation.evaluate`) follows them:

* ``leave-one-out`` (the default, :func:`kgrec.kg.export.leave_one_out`): by each user's
  ``order``, the last interaction is test, the second-to-last valid, the rest train;
  users with fewer than three interactions stay in train.
* ``temporal`` (:func:`temporal_split`, only where the interactions have timestamps):
  one global cut time; everything before it is train; of each user's interactions at or
  after the cut, the last is test and the earlier ones are valid. Nothing from after the
  cut is ever trained on, and nobody's test interaction is visible to anybody.

The *ranking protocol* is full ranking (every product not in the user's visible history
is a candidate, :func:`kgrec.evaluation.recommendation.evaluate`) unless the sampled protocol is named
explicitly: :func:`evaluate_sampled` ranks the target against ``num_negatives`` products
drawn uniformly from those the user has not interacted with (the protocol of many
papers; its numbers are not comparable to full ranking and it is reported apart).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from kgrec.kg.export import SPLITS, GraphSnapshot, leave_one_out

#: Split protocols by name; each maps (interactions, **options) -> split labels.
SPLIT_PROTOCOLS = ("leave-one-out", "temporal")


def leave_one_out_split(interactions: pd.DataFrame) -> pd.Series:
    """Leave-one-out labels (the snapshot's default), see :func:`kgrec.kg.export.leave_one_out`."""
    return leave_one_out(interactions)


def temporal_split(
    interactions: pd.DataFrame,
    cut: float | None = None,
    quantile: float = 0.8,
    column: str = "timestamp",
) -> pd.Series:
    """Global temporal split labels.

    Args:
        interactions: frame with ``user``, ``order`` and ``column`` (timestamps, any
            numeric or datetime type), non-decreasing in ``order`` within each user.
        cut: the cut time; interactions strictly before it are train. Default: the
            ``quantile`` of all timestamps.
        quantile: where to cut when ``cut`` is None (default 0.8: the last 20% of time-ordered
            interactions are held out).
        column: the timestamp column.

    Returns:
        Labels aligned with ``interactions.index``: before the cut ``train``; of each user's
        interactions at or after the cut, the last (by ``order``) is ``test`` and the earlier
        ones are ``valid``. A user with one interaction after the cut has a test target and
        no validation target; a user with none only trains.

    Raises:
        ValueError: no timestamp column, missing timestamps, or timestamps that go back in
            time within a user's ``order`` (the histories would then mix the two sides).
    """
    if column not in interactions.columns:
        raise ValueError(
            f"the temporal protocol needs a {column!r} column; these interactions have "
            f"{list(interactions.columns)} (leave-one-out needs only 'order')"
        )
    ts = interactions[column]
    if ts.isna().any():
        raise ValueError(f"{int(ts.isna().sum())} interactions have no {column!r}")
    if not pd.api.types.is_numeric_dtype(ts):
        ts = pd.to_datetime(ts)
    ordered = interactions.assign(_ts=ts).sort_values(["user", "order"], kind="stable")
    back = ordered.groupby("user")["_ts"].diff()
    went_back = back < (pd.Timedelta(0) if pd.api.types.is_datetime64_any_dtype(ts) else 0)
    if went_back.any():
        row = ordered[went_back].iloc[0]
        raise ValueError(f"user {row['user']!r}: timestamps go back in time at order {row['order']}")
    if cut is None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        cut = ts.quantile(quantile, interpolation="higher")
    after = ts >= cut
    rank_after = interactions.assign(_after=after).loc[after].groupby("user")["order"].rank(method="first", ascending=False)
    labels = pd.Series("train", index=interactions.index, name="split", dtype=object)
    labels.loc[rank_after.index] = np.where(rank_after == 1, "test", "valid")
    return labels


def attach_timestamps(snapshot: GraphSnapshot, timestamps: pd.DataFrame) -> GraphSnapshot:
    """A copy of ``snapshot`` whose interactions carry a ``timestamp`` column, matched on
    ``(user_id, product_id, order)`` of ``timestamps`` (e.g. from :func:`kgrec.workflow.data.store_timestamps`)."""
    inter = snapshot.interactions
    users = np.asarray(snapshot.id_maps["user"], dtype=object)[inter["user"].to_numpy()]
    products = np.asarray(snapshot.id_maps["product"], dtype=object)[inter["product"].to_numpy()]
    keys = pd.DataFrame({"user_id": users, "product_id": products, "order": inter["order"].to_numpy()})
    table = timestamps[["user_id", "product_id", "order", "timestamp"]].astype({"user_id": str, "product_id": str, "order": "int64"})
    merged = keys.merge(table.drop_duplicates(["user_id", "product_id", "order"]), how="left", on=["user_id", "product_id", "order"])
    if merged["timestamp"].isna().any():
        missing = merged[merged["timestamp"].isna()].iloc[0]
        raise ValueError(
            f"{int(merged['timestamp'].isna().sum())} interactions have no timestamp, e.g. "
            f"{missing['user_id']!r} -> {missing['product_id']!r} at order {missing['order']}"
        )
    return replace(snapshot, interactions=inter.assign(timestamp=merged["timestamp"].to_numpy()))


def with_split(snapshot: GraphSnapshot, labels: pd.Series) -> GraphSnapshot:
    """A copy of ``snapshot`` with ``labels`` as its ``split`` column (the original is untouched)."""
    labels = pd.Series(labels, index=snapshot.interactions.index) if not isinstance(labels, pd.Series) else labels
    if not labels.index.equals(snapshot.interactions.index):
        raise ValueError("split labels must be aligned with snapshot.interactions")
    unknown = set(labels.unique()) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split labels {sorted(unknown)}; expected {SPLITS}")
    return replace(snapshot, interactions=snapshot.interactions.assign(split=labels.to_numpy()))


def apply_protocol(snapshot: GraphSnapshot, protocol: str = "leave-one-out", **options) -> GraphSnapshot:
    """``snapshot`` split by ``protocol`` (a name of :data:`SPLIT_PROTOCOLS`).

    ``temporal`` needs a ``timestamp`` column (:func:`attach_timestamps`) and takes
    ``cut`` / ``quantile`` options.
    """
    if protocol == "leave-one-out":
        if options:
            raise ValueError(f"leave-one-out takes no options, got {sorted(options)}")
        return with_split(snapshot, leave_one_out_split(snapshot.interactions))
    if protocol == "temporal":
        return with_split(snapshot, temporal_split(snapshot.interactions, **options))
    raise ValueError(f"unknown protocol {protocol!r}; choose from {list(SPLIT_PROTOCOLS)} "
                     "(the sampled ranking protocol is kgrec.evaluation.protocols.evaluate_sampled)")


def split_summary(snapshot: GraphSnapshot) -> dict:
    """Counts per split, and per evaluated split how many targets repeat a product of the
    user's visible history (full ranking excludes the history, so those cannot be hit)."""
    inter = snapshot.interactions
    out: dict = {"interactions": {s: int((inter["split"] == s).sum()) for s in SPLITS}}
    for split in ("valid", "test"):
        targets = inter[inter["split"] == split]
        visible = snapshot.visible(split)
        seen = set(zip(visible["user"].to_numpy().tolist(), visible["product"].to_numpy().tolist()))
        repeats = sum((u, p) in seen for u, p in zip(targets["user"].tolist(), targets["product"].tolist()))
        out[split] = {"examples": int(len(targets)), "users": int(targets["user"].nunique()), "repeat_targets": int(repeats)}
    return out


def _pairs(users, products) -> set[tuple[int, int]]:
    return set(zip(np.asarray(users).tolist(), np.asarray(products).tolist()))


def leakage_counts(snapshot: GraphSnapshot, max_history: int = 50) -> dict[str, int]:
    """How many held-out (user, product) pairs reach places they must not; all zero when sound.

    A pair that also occurs as an allowed interaction (a repeat purchase) is not a leak.
    Checked: test pairs in the message-passing graphs for train, valid and test; valid pairs
    in those for train and valid; test and valid pairs among the training examples' targets
    and histories (:func:`kgrec.fusion.data.training_examples`).
    """
    from kgrec.fusion.data import training_examples

    inter = snapshot.interactions
    by_split = {s: _pairs(inter.loc[inter["split"] == s, "user"], inter.loc[inter["split"] == s, "product"]) for s in SPLITS}
    train, valid, test = by_split["train"], by_split["valid"], by_split["test"]
    edge = ("user", "interacted", "product")
    counts: dict[str, int] = {}
    for split in SPLITS:
        graph = snapshot.message_passing(split)
        ei = graph[edge].edge_index
        seen = _pairs(ei[0].numpy(), ei[1].numpy())
        rev = graph[("product", "rev_interacted", "user")].edge_index
        seen |= _pairs(rev[1].numpy(), rev[0].numpy())
        allowed = train | (valid if split == "test" else set())
        counts[f"test_in_message_passing[{split}]"] = len((test - allowed) & seen)
        if split != "test":
            counts[f"valid_in_message_passing[{split}]"] = len((valid - allowed) & seen)
    ex = training_examples(snapshot, max_history)
    target_pairs = _pairs(ex.users.numpy(), ex.targets.numpy())
    hist = ex.history.numpy()
    rows, cols = np.nonzero(hist >= 0)
    history_pairs = _pairs(ex.users.numpy()[rows], hist[rows, cols])
    for name, held in (("test", test), ("valid", valid)):
        counts[f"{name}_in_training_targets"] = len((held - train) & target_pairs)
        counts[f"{name}_in_training_histories"] = len((held - train) & history_pairs)
    return counts


# --- the sampled ranking protocol (only when named) -------------------------------------


def sample_negatives(
    exclude: torch.Tensor,
    num_negatives: int,
    generator: torch.Generator,
    chunk: int = 1024,
) -> torch.Tensor:
    """``[N, num_negatives]`` products drawn uniformly without replacement per row from
    those where ``exclude`` is False (random keys, smallest ``num_negatives`` kept)."""
    n, p = exclude.shape
    available = (~exclude).sum(1)
    if n and int(available.min()) < num_negatives:
        raise ValueError(f"an example has only {int(available.min())} products to sample {num_negatives} negatives from")
    out = []
    for start in range(0, n, chunk):
        excl = exclude[start : start + chunk]
        keys = torch.rand(excl.shape, generator=generator).masked_fill(excl, 2.0)
        out.append(torch.topk(keys, num_negatives, dim=1, largest=False).indices)
    return torch.cat(out) if out else torch.empty(0, num_negatives, dtype=torch.long)


@torch.no_grad()
def evaluate_sampled(
    model,
    snapshot: GraphSnapshot,
    split: str = "test",
    num_negatives: int = 100,
    ks: tuple[int, ...] = (1, 5, 10),
    seed: int = 0,
    max_history: int = 50,
    batch_size: int = 2048,
):
    """The sampled protocol: rank each target against ``num_negatives`` sampled products.

    Negatives are drawn uniformly, per example, from the products that are neither in the
    user's visible history nor the target (seeded: every model sees the same negatives).
    Ties with the target count *against* it (a model that scores everything equal ranks the
    target last, never first). ``per_user`` holds the metrics of
    :func:`kgrec.evaluation.metrics.per_user_metrics` and ``auc`` (ties counted 1/2).

    Returns:
        :class:`kgrec.evaluation.recommendation.EvalResult` whose ``topk`` is ``[N, 1 + num_negatives]``,
        the candidates (target first) sorted by score.
    """
    from kgrec.evaluation.metrics import mean_metrics, metrics_from_position
    from kgrec.evaluation.recommendation import EvalResult, exclusion_mask
    from kgrec.fusion.data import evaluation_examples

    model.set_graph(snapshot.message_passing(split))
    model.eval()
    batch, histories = evaluation_examples(snapshot, split, max_history)
    exclude = exclusion_mask(histories, snapshot.num_products)
    if len(batch):
        exclude[torch.arange(len(batch)), batch.targets] = True
    generator = torch.Generator().manual_seed(seed)
    negatives = sample_negatives(exclude, num_negatives, generator)
    candidates = torch.cat([batch.targets.unsqueeze(1), negatives], dim=1)
    chunks: list[torch.Tensor] = []
    for start in range(0, len(batch), batch_size):
        part = batch[slice(start, start + batch_size)].to(model.device)
        chunks.append(model.score(part, candidates[start : start + batch_size].to(model.device)).float().cpu())
    scores = torch.cat(chunks) if chunks else torch.empty(0, 1 + num_negatives)
    target, neg = scores[:, :1], scores[:, 1:]
    greater = (neg > target).sum(1)
    equal = (neg == target).sum(1)
    position = 1 + greater + equal  # pessimistic in ties
    per_user = metrics_from_position(position, ks)
    per_user["auc"] = 1.0 - (greater.float() + 0.5 * equal.float()) / num_negatives
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return EvalResult(mean_metrics(per_user), per_user, candidates.gather(1, order), batch.users, batch.targets)

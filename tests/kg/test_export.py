import torch

from kgrec.kg.export import leave_one_out


def _pairs(index):
    return set(map(tuple, index.T.tolist()))


def test_leave_one_out_by_order(tiny_snapshot):
    inter = tiny_snapshot.interactions
    for _, group in inter.groupby("user"):
        group = group.sort_values("order")
        assert group["split"].tolist() == ["train"] * (len(group) - 2) + ["valid", "test"]


def test_short_histories_stay_in_train():
    import pandas as pd

    frame = pd.DataFrame({"user": [0, 0, 1, 1, 1], "order": [1, 0, 0, 2, 1]})
    assert leave_one_out(frame).tolist() == ["train", "train", "train", "test", "valid"]


def test_targets_never_in_message_passing(tiny_snapshot):
    snap = tiny_snapshot
    edge = ("user", "interacted", "product")
    valid, test = _pairs(snap.edge_label_index("valid")), _pairs(snap.edge_label_index("test"))
    train = _pairs(snap.edge_label_index("train"))
    for split, hidden in (("train", valid | test), ("valid", valid | test), ("test", test)):
        graph = snap.message_passing(split)
        seen = _pairs(graph[edge].edge_index)
        # a pair can repeat (bought twice); only pairs that are purely targets must be absent
        assert not (hidden - train - (valid if split == "test" else set())) & seen
        rev = graph[("product", "rev_interacted", "user")].edge_index
        assert torch.equal(rev, graph[edge].edge_index.flip(0))
    assert len(_pairs(snap.message_passing("test")[edge].edge_index)) > len(
        _pairs(snap.message_passing("valid")[edge].edge_index))


def test_ids_are_sorted_and_text_follows_them(tiny_snapshot):
    ids = tiny_snapshot.id_maps["product"]
    assert ids == sorted(ids) and len(ids) == 24
    assert tiny_snapshot.product_text[1].startswith("saw red kit. Tools Hand. Bolt")
    assert tiny_snapshot.id_maps["category"] == ["Tools", "Tools > Hand", "Tools > Power"]


def test_structure_edges(tiny_snapshot):
    s = tiny_snapshot.structure
    assert s[("product", "in_category", "category")].shape[1] == 19  # 5 of 24 have no category
    assert s[("category", "subcategory_of", "category")].shape[1] == 2
    assert tiny_snapshot.fingerprint() == tiny_snapshot.fingerprint()


def test_embedded_paths_between_nodes(tiny_store, tiny_tables):
    inter = tiny_tables.interactions
    user, product = inter.iloc[0]["user_id"], inter.iloc[0]["product_id"]
    (direct,) = tiny_store.paths(("User", user), ("Product", product), max_hops=1)
    assert direct == [(("User", user), "PURCHASED", ("Product", product))]
    # P03 and P09 share brand Acme and the leaf category Tools > Hand
    paths = tiny_store.paths(("Product", "P03"), ("Product", "P09"), max_hops=2, limit=5)
    via = {hops[0][2] for hops in paths}
    assert ("Brand", "Acme") in via and ("Category", "Tools > Hand") in via
    assert all(len(hops) == 2 for hops in paths)

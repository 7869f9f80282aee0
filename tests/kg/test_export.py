import pandas as pd
import pytest
import torch

from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.export import KgExport, export_snapshot, leave_one_out


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


# --- knowledge-graph triples: linked entities are their products ------------------------------------


def _kg_store(tmp_path):
    """Four products (P1-P3 linked to entities e1-e3, P4 not), two users, and triples:

    e1, e2 -directed_by-> d1 (shared); e3 -directed_by-> d2 -born_in-> c1 <-born_in- d1 (c1 two hops
    from every linked product, relayed by d1 and d2); e3 -starring-> a1 (a leaf); e1 -prequel_of-> e2
    (two products); d1 -directs-> e1/e2 (exactly the reverse of directed_by for them, plus d2 -> e3);
    e1 -remake_of-> e1b, where e1b is linked to P1 too (a self-loop once merged)."""
    from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source

    triples = [("e1", "directed_by", "d1"), ("e2", "directed_by", "d1"), ("e3", "directed_by", "d2"),
               ("d1", "born_in", "c1"), ("d2", "born_in", "c1"), ("e3", "starring", "a1"), ("e1", "prequel_of", "e2"),
               ("d1", "directs", "e1"), ("d1", "directs", "e2"), ("d2", "directs", "e3"), ("e1", "remake_of", "e1b")]
    sources = [
        Source("product", frame=pd.DataFrame({"product_id": ["P1", "P2", "P3", "P4"], "title": ["a", "b", "c", "d"]})),
        Source("triple", frame=pd.DataFrame(triples, columns=["head", "relation", "tail"])),
        Source("link", frame=pd.DataFrame({"entity_id": ["e1", "e2", "e3", "e1b"], "product_id": ["P1", "P2", "P3", "P1"]})),
        Source("interaction", frame=pd.DataFrame({"user_id": ["u1"] * 4 + ["u2"] * 3,
                                                  "product_id": ["P1", "P2", "P3", "P4", "P2", "P3", "P4"],
                                                  "order": [0, 1, 2, 3, 0, 1, 2]})),
    ]
    store = EmbeddedStore(tmp_path / "store")
    report = Ingestor(store, IngestConfig()).run(sources)
    assert report.rejected == 0
    return store


def _edges(snapshot, src_type, rel, dst_type):
    """The ``(src, dst)`` external-id pairs of one edge type (empty when absent)."""
    index = snapshot.structure.get((src_type, rel, dst_type))
    if index is None:
        return set()
    return {(snapshot.id_maps[src_type][s], snapshot.id_maps[dst_type][d]) for s, d in index.T.tolist()}


def test_linked_entities_are_their_products(tmp_path):
    snapshot = export_snapshot(_kg_store(tmp_path), kg=KgExport(kg_hops=0))
    # no DESCRIBES hop: the entity's relations start at the product node itself
    assert not any(rel in ("describes", "rev_describes") for _, rel, _ in snapshot.structure)
    assert set(snapshot.id_maps["entity"]) == {"d1", "d2", "c1", "a1"}  # e1, e1b, e2, e3 are P1, P1, P2, P3
    assert _edges(snapshot, "product", "directed_by", "entity") == {("P1", "d1"), ("P2", "d1"), ("P3", "d2")}
    assert _edges(snapshot, "product", "prequel_of", "product") == {("P1", "P2")}
    assert _edges(snapshot, "entity", "born_in", "entity") == {("d1", "c1"), ("d2", "c1")}
    assert _edges(snapshot, "product", "starring", "entity") == {("P3", "a1")}
    # e1 -remake_of-> e1b is P1 -> P1 once merged: no self-loop, no edge type
    assert not any(rel == "remake_of" for _, rel, _ in snapshot.structure)
    # directs = directed_by reversed: the rev_ edges carry it
    assert snapshot.kg_summary["inverse_relations_dropped"] == ["DIRECTS"]
    graph = snapshot.message_passing("train")
    assert graph["entity", "rev_directed_by", "product"].edge_index.shape == (2, 3)
    assert snapshot.kg_summary["linked_entities"] == 4


@pytest.mark.parametrize(("hops", "kept"), [(0, {"a1", "c1", "d1", "d2"}), (1, {"d1"}), (2, {"c1", "d1", "d2"})])
def test_entities_no_two_products_share_within_the_hops_are_left_out(tmp_path, hops, kept):
    # hops=1: only d1 is one hop from two products; hops=2: c1 is two hops from three products and
    # d2 relays it to P3; a1 ties no products together at any reach
    snapshot = export_snapshot(_kg_store(tmp_path), kg=KgExport(kg_hops=hops))
    assert set(snapshot.id_maps["entity"]) == kept
    for (src_t, _, dst_t), index in snapshot.structure.items():
        for node_type, row in ((src_t, index[0]), (dst_t, index[1])):
            assert row.numel() == 0 or int(row.max()) < snapshot.num_nodes[node_type]
    edges = _edges(snapshot, "entity", "born_in", "entity")
    assert edges == ({("d1", "c1"), ("d2", "c1")} if "c1" in kept else set())
    assert snapshot.kg_summary["kept_entities"] == len(kept)


def test_kg_export_options_are_checked():
    with pytest.raises(ValueError, match="kg_hops"):
        KgExport(kg_hops=-1)


def test_free_product_attributes_join_the_text(tmp_path):
    from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source

    products = pd.DataFrame({"product_id": ["M1", "M2"], "title": ["Toy Story", "Heat"], "release_year": ["1995", None],
                             "genres": ["Animation Comedy", ""], "price": [3.5, 4.0]})
    store = EmbeddedStore(tmp_path / "store")
    Ingestor(store, IngestConfig()).run([
        Source("product", frame=products),
        Source("interaction", frame=pd.DataFrame({"user_id": ["u"] * 2, "product_id": ["M1", "M2"], "order": [0, 1]})),
    ])
    text = export_snapshot(store).product_text
    # name order, missing and empty values left out, numbers the schema knows (price) not text
    assert text == ["Toy Story. . . genres: Animation Comedy. release year: 1995.", "Heat. . ."]

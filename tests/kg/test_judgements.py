"""kgrec.kg.judgements: query normalisation, the query-disjoint split, SearchJudgements packing."""
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kgrec.kg.judgements import (
    SearchJudgements,
    judgements_from_frame,
    normalise_queries,
    normalise_query,
    query_disjoint_split,
)


@pytest.mark.parametrize("raw,expected", [
    ("  Cordless\tDRILL ", "cordless drill"),
    ("fence  mesh", "fence mesh"),
    ("ＤＲＩＬＬ\u3000bits", "drill bits"),  # full-width letters and ideographic space (NFKC)
    ("ﬁberglass\u00a0door", "fiberglass door"),  # ligature, no-break space
    ("a\x01b\x85c", "a b c"),  # C0 / C1 control characters become spaces
    ("\n\t ", ""),
    ("1/2 in. PVC", "1/2 in. pvc"),
])
def test_normalise_query(raw, expected):
    assert normalise_query(raw) == expected
    assert normalise_queries(pd.Series([raw])).tolist() == [expected]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=8))
def test_normalise_queries_equals_the_scalar_rule(texts):
    got = normalise_queries(pd.Series(texts, dtype=object)).tolist()
    assert got == [normalise_query(t) for t in texts]
    assert all(normalise_query(g) == g for g in got)  # idempotent


def test_normalise_query_rejects_non_strings():
    with pytest.raises(TypeError):
        normalise_query(None)
    assert normalise_queries(pd.Series(["A", None], dtype=object)).tolist() == ["a", ""]


def _independent_split(qid: str, seed: int, fractions=(0.8, 0.1, 0.1)) -> str:
    """The documented rule, written out again: blake2b-64 keyed by the seed's decimal text."""
    u = int.from_bytes(hashlib.blake2b(qid.encode(), digest_size=8, key=str(seed).encode()).digest(), "big") / 2**64
    return "train" if u < fractions[0] else "valid" if u < fractions[0] + fractions[1] else "test"


def test_split_follows_the_documented_hash_and_is_query_disjoint():
    ids = [f"query {i}" for i in range(300)]
    rows = ids + ids[::3] + ["query 7"] * 5  # repeated query ids (one per judgement)
    for seed in (0, 1, 12345):
        got = query_disjoint_split(rows, seed=seed)
        assert got.dtype == np.dtype("<U5") and len(got) == len(rows)
        assert got.tolist() == [_independent_split(q, seed) for q in rows]
    # pinned values: the split must not change between versions or machines
    assert query_disjoint_split(["angle bracket", "l bracket", "convection otr"], seed=1).tolist() == [
        "train", "valid", "valid"]
    # a query's split does not depend on the other queries present
    full = query_disjoint_split(ids, seed=0)
    assert query_disjoint_split(ids[::-7], seed=0).tolist() == full[::-7].tolist()
    assert query_disjoint_split(pd.Series(ids), seed=0).tolist() == full.tolist()


def test_split_fractions_hold_approximately():
    ids = [f"q{i}" for i in range(20_000)]
    for fractions in [(0.8, 0.1, 0.1), (0.5, 0.0, 0.5), (0.0, 0.0, 1.0)]:
        got = query_disjoint_split(ids, fractions=fractions, seed=3)
        shares = [float(np.mean(got == s)) for s in ("train", "valid", "test")]
        assert shares == pytest.approx(list(fractions), abs=0.015)  # > 5 binomial sd on 20k queries
        assert all(share == 0.0 for share, f in zip(shares, fractions) if f == 0.0)


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.9, 0.2, -0.1), (0.5, 0.3, 0.1), (float("nan"), 0.5, 0.5)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        query_disjoint_split(["a", "b"], fractions=fractions)


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "query_id": ["saw", "drill", "saw", "drill", "drill", "tape"],
        "query": ["Saw", "DRILL", "saw ", "drill", "Drill", "tape"],
        "product": [4, 7, 1, 2, 9, 4],
        "label": [3.0, 2.33, 1.0, 1.67, 3.0, 2.0],
        "user": [5, -1, 5, -1, -1, None],
    })


def test_judgements_from_frame_packs_queries():
    j = judgements_from_frame(_frame(), grade_offset=1.0)
    assert j.query_ids == ["drill", "saw", "tape"]  # sorted
    assert j.queries == ["DRILL", "Saw", "tape"]  # first spelling of each
    assert j.products.dtype == torch.long and j.grades.dtype == torch.float32
    assert j.products.tolist() == [[2, 7, 9], [1, 4, -1], [4, -1, -1]]  # products ascending, -1 padding
    expected = torch.tensor([[0.67, 1.33, 2.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(j.grades, expected, atol=1e-6)
    assert j.num_judged().tolist() == [3, 2, 1]
    assert j.num_relevant(1.0).tolist() == [2, 1, 1]
    assert j.users is None and len(j) == 3
    with_users = judgements_from_frame(_frame(), grade_offset=1.0, user_column="user")
    assert with_users.users.tolist() == [-1, 5, -1]


def test_judgements_indexing_and_device():
    j = judgements_from_frame(_frame(), grade_offset=1.0, user_column="user")
    for index in (slice(1, 3), torch.tensor([1, 2]), [1, 2], torch.tensor([False, True, True])):
        sub = j[index]
        assert sub.query_ids == ["saw", "tape"] and sub.queries == ["Saw", "tape"]
        assert sub.products.tolist() == [[1, 4, -1], [4, -1, -1]]
        assert sub.users.tolist() == [5, -1]
    assert j[[-1]].query_ids == ["tape"] and j[[2, 0]].query_ids == ["tape", "drill"]
    with pytest.raises(IndexError):
        j[[3]]
    moved = j.to("cpu")
    assert torch.equal(moved.products, j.products) and moved.query_ids == j.query_ids
    assert len(j[0:0]) == 0 and j[0:0].products.shape == (0, 3)


def test_judgements_from_frame_errors():
    f = _frame()
    with pytest.raises(ValueError, match="more than once"):
        judgements_from_frame(pd.concat([f, f.iloc[[0]]], ignore_index=True))
    with pytest.raises(ValueError, match=r"row 2 \(query 'saw'\).*grade_offset"):
        judgements_from_frame(f, grade_offset=2.0)
    with pytest.raises(ValueError, match="lacks columns"):
        judgements_from_frame(f.drop(columns="label"))
    with pytest.raises(ValueError, match="product must be a non-negative"):
        judgements_from_frame(f.assign(product=[1, 2, 3, -4, 5, 6]))
    with pytest.raises(ValueError, match="several users"):
        judgements_from_frame(f.assign(user=[5, -1, 6, -1, -1, 0]), user_column="user")
    with pytest.raises(ValueError, match="grades"):
        SearchJudgements(["a"], ["a"], torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=">= 0"):
        SearchJudgements(["a"], ["a"], torch.zeros(1, 2, dtype=torch.long), torch.tensor([[1.0, float("nan")]]))
    assert len(j := judgements_from_frame(f)[np.array([True, False, True])]) == 2 and j.query_ids == ["drill", "tape"]
    empty = judgements_from_frame(f.iloc[:0])
    assert len(empty) == 0 and empty.products.shape == (0, 1)

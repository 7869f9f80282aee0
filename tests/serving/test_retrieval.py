"""ProductIndex (faiss exact / IVF / HNSW) against an independent torch top-k."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kgrec.serving.retrieval import CSR, IndexConfig, ProductIndex, RetrievalError, recall_at_k


def clustered(n: int, d: int, clusters: int, seed: int, noise: float = 0.35) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, d, generator=g), dim=-1)
    which = torch.randint(0, clusters, (n,), generator=g)
    return F.normalize(centres[which] + noise * torch.randn(n, d, generator=g) / d**0.5 * 4, dim=-1)


@pytest.fixture(scope="module")
def data():
    products = clustered(3000, 32, 40, seed=0)
    users = clustered(200, 32, 40, seed=1)
    return products, users


def torch_topk(users, products, k, mask=None):
    scores = users @ products.T
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    top = torch.topk(scores, k, dim=1)
    return top.indices, top.values


def assert_same_ranking(ids, scores, ref_ids, ref_scores):
    """Same ids, except where two products tie (scores equal to float precision)."""
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    differ = ids != ref_ids
    assert differ.float().mean() < 0.01  # ties only


def test_exact_equals_torch_topk(data):
    products, users = data
    ids, scores = ProductIndex("exact").build(products).search(users, 50)
    ref_ids, ref_scores = torch_topk(users, products, 50)
    assert ids.dtype == torch.long and scores.dtype == torch.float32 and ids.shape == (200, 50)
    assert_same_ranking(ids, scores, ref_ids, ref_scores)


def test_ivf_with_every_cell_probed_equals_exact(data):
    products, users = data
    index = ProductIndex("ivf", nlist=30).build(products)
    assert index.nlist == 30
    ids, scores = ProductIndex("ivf", nlist=30, nprobe=30).build(products).search(users, 50)
    ref_ids, ref_scores = torch_topk(users, products, 50)
    assert_same_ranking(ids, scores, ref_ids, ref_scores)
    # fewer cells: approximate, but never a wrong score for an id it returns
    few_ids, few_scores = ProductIndex("ivf", nlist=30, nprobe=2).build(products).search(users, 50)
    assert torch.allclose(few_scores, (users.unsqueeze(1) * products[few_ids]).sum(-1), atol=1e-5)
    assert 0.3 < recall_at_k(few_ids, ref_ids, 50) < 1.0


def test_ivf_default_nlist():
    assert ProductIndex("ivf").build(clustered(3900, 8, 10, seed=2)).nlist == 100  # P // 39
    assert ProductIndex("ivf", train_size=2000).build(clustered(25_600, 4, 10, seed=2)).nlist == 640  # 4 * sqrt(P)


def test_hnsw_recall_at_100(data):
    products = clustered(5000, 32, 50, seed=3)
    users = clustered(200, 32, 50, seed=4)
    ids, scores = ProductIndex("hnsw", hnsw_m=16, ef_search=128).build(products).search(users, 100)
    ref_ids, _ = torch_topk(users, products, 100)
    assert recall_at_k(ids, ref_ids, 100) >= 0.95
    assert torch.allclose(scores, (users.unsqueeze(1) * products[ids]).sum(-1), atol=1e-5)


@pytest.mark.parametrize("kind, options", [("exact", {}), ("ivf", {"nlist": 30, "nprobe": 30}),
                                           ("ivf", {"nlist": 30, "nprobe": 1}), ("hnsw", {"ef_search": 16})])
def test_exclusion_matches_masked_topk(data, kind, options):
    """Exclusion of many products per query (up to 2,900 of 3,000) equals a masked exact top-k:
    exact and full-probe IVF directly, the approximate ones via the exact fallback for short rows
    (with nprobe=1 most rows run short)."""
    products, users = data
    g = torch.Generator().manual_seed(5)
    counts = torch.randint(0, 60, (200,), generator=g)
    counts[:5] = torch.tensor([2900, 2990, 2000, 1000, 500])
    histories = [torch.randperm(3000, generator=g)[: int(c)] for c in counts]
    mask = torch.zeros(200, 3000, dtype=torch.bool)
    for row, h in enumerate(histories):
        mask[row, h] = True
    k = 20
    index = ProductIndex(kind, **options).build(products)
    ids, scores = index.search(users, k, exclude=histories)
    # no excluded id comes back, ever
    assert not mask.gather(1, ids.clamp(min=0)).logical_and(ids >= 0).any()
    # row 1 has only 10 allowed products: 10 ids, then -1 / -inf
    assert (ids[1, :10] >= 0).all() and (ids[1, 10:] == -1).all() and torch.isinf(scores[1, 10:]).all()
    ref_ids, ref_scores = torch_topk(users, products, k, mask)
    ok = ref_ids >= 0
    ref_ids = torch.where(torch.isinf(ref_scores), -1, ref_ids)
    if kind == "hnsw" and not (ids >= 0).all(dim=1)[2:].all():
        pytest.fail("an HNSW row came back short without the exact fallback")
    if kind == "exact" or options.get("nprobe") == 30:
        assert_same_ranking(ids[ok], scores[ok], ref_ids[ok], ref_scores[ok])
    else:  # approximate where it found enough; the heavily excluded rows went exact
        assert recall_at_k(ids, ref_ids, k) >= (0.9 if kind == "hnsw" else 0.2)
        assert_same_ranking(ids[:2], scores[:2], ref_ids[:2], ref_scores[:2])


def test_exclusion_as_csr_equals_lists(data):
    products, users = data
    g = torch.Generator().manual_seed(6)
    histories = [torch.randint(0, 3000, (int(n),), generator=g) for n in torch.randint(0, 40, (200,), generator=g)]
    rows = torch.cat([torch.full((len(h),), i) for i, h in enumerate(histories)])
    cols = torch.cat(histories)
    perm = torch.randperm(len(rows), generator=g)
    csr = CSR.from_pairs(rows[perm], cols[perm], 200)
    index = ProductIndex("exact").build(products)
    a = index.search(users, 30, exclude=histories)
    b = index.search(users, 30, exclude=csr)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_save_load_round_trip(data, tmp_path, kind):
    products, users = data
    index = ProductIndex(kind, nprobe=4, ef_search=64).build(products)
    before = index.search(users, 25, exclude=[[0, 1, 2]] * 200)
    index.save(tmp_path / kind)
    assert sorted(p.name for p in (tmp_path / kind).iterdir()) == ["index.faiss", "index.json"]
    back = ProductIndex.load(tmp_path / kind)
    assert back.config == index.config and back.num_products == 3000 and back.dim == 32
    after = back.search(users, 25, exclude=[[0, 1, 2]] * 200)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_clear_errors(data, tmp_path):
    products, users = data
    index = ProductIndex("exact").build(products)
    with pytest.raises(RetrievalError, match="dimension 16"):
        index.search(users[:, :16], 10)
    with pytest.raises(RetrievalError, match=r"k must be an int in \[1, 3000\]"):
        index.search(users, 3001)
    with pytest.raises(RetrievalError, match="k must be"):
        index.search(users, 0)
    bad = products.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(RetrievalError, match="row 7 holds a non-finite"):
        ProductIndex("ivf").build(bad)
    q = users.clone()
    q[3, 0] = float("inf")
    with pytest.raises(RetrievalError, match="queries: row 3"):
        index.search(q, 5)
    with pytest.raises(RetrievalError, match="query 1 names product 3000"):
        index.search(users[:2], 5, exclude=[[1], [3000]])
    with pytest.raises(RetrievalError, match="2 lists for 200 queries"):
        index.search(users, 5, exclude=[[1], [2]])
    with pytest.raises(RetrievalError, match="kind must be one of"):
        IndexConfig(kind="lsh")
    with pytest.raises(RetrievalError, match="before build"):
        ProductIndex("hnsw").search(users, 5)
    with pytest.raises(RetrievalError, match="nlist"):
        ProductIndex("ivf", nlist=5000).build(products)
    with pytest.raises(RetrievalError, match="expected index.faiss"):
        ProductIndex.load(tmp_path)


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    approx = np.array([[4, 9, 1, 8], [6, 7, 5, -1]])
    assert recall_at_k(approx, exact, 4) == pytest.approx((2 / 4 + 2 / 2) / 2)
    assert recall_at_k(approx, exact, 2) == pytest.approx((0 / 2 + 1 / 2) / 2)

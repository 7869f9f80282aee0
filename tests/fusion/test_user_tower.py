"""The causal user tower (kgrec.fusion.models.user_tower)."""
from __future__ import annotations

import pytest
import torch

from kgrec.fusion.models.user_tower import CausalUserTower


@pytest.fixture
def tower() -> CausalUserTower:
    torch.manual_seed(0)
    tower = CausalUserTower(12, dim=8, num_layers=2, num_heads=2, max_len=6, dropout=0.0)
    torch.nn.init.normal_(tower.output.weight)  # the output starts at zero; make it show
    return tower.eval()


def _histories():
    items = torch.randn(3, 6, 12, generator=torch.Generator().manual_seed(1))
    valid = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    return items, valid


def test_a_position_never_sees_later_items(tower):
    items, valid = _histories()
    before = tower(items, valid, all_positions=True)
    for cut in range(1, 6):
        changed = items.clone()
        changed[:, cut:] = torch.randn(3, 6 - cut, 12)
        after = tower(changed, valid, all_positions=True)
        assert torch.allclose(after[:, :cut], before[:, :cut], atol=1e-6)  # the past is untouched
        assert not torch.allclose(after[2, cut:], before[2, cut:], atol=1e-3)  # the future did change


def test_padding_is_never_read(tower):
    items, valid = _histories()
    noisy = items.clone()
    noisy[~valid] = torch.randn(int((~valid).sum()), 12) * 100
    assert torch.allclose(tower(noisy, valid, all_positions=True), tower(items, valid, all_positions=True), atol=1e-5)
    out = tower(items, valid, all_positions=True)
    assert torch.equal(out[~valid], torch.zeros_like(out[~valid]))


def test_last_position_is_the_answer_and_order_matters(tower):
    items, valid = _histories()
    assert torch.allclose(tower(items, valid), tower(items, valid, all_positions=True)[:, -1], atol=1e-6)
    swapped = items.clone()
    swapped[2, [3, 4]] = items[2, [4, 3]]  # same items, another order: positions make it differ
    assert not torch.allclose(tower(swapped, valid)[2], tower(items, valid)[2], atol=1e-4)
    # extra left padding (a shorter batch maximum) changes nothing: positions count from the end
    assert torch.allclose(tower(items[:, 2:], valid[:, 2:])[:2], tower(items, valid)[:2], atol=1e-5)


def test_empty_history_and_fresh_tower_give_zeros():
    tower = CausalUserTower(12, dim=8, num_layers=1, num_heads=2, max_len=6)
    items, valid = _histories()
    assert torch.equal(tower(items, valid), torch.zeros(3, 12))  # the output projection starts at zero
    trained = CausalUserTower(12, dim=8, num_layers=1, num_heads=2, max_len=6)
    torch.nn.init.normal_(trained.output.weight)
    empty = torch.zeros(2, 6, dtype=torch.bool)
    assert torch.equal(trained(items[:2], empty), torch.zeros(2, 12))
    mixed = valid.clone()
    mixed[1] = False
    assert torch.equal(trained.eval()(items, mixed)[1], torch.zeros(12))
    with pytest.raises(ValueError, match="history of 7 positions"):
        trained(torch.zeros(1, 7, 12), torch.ones(1, 7, dtype=torch.bool))

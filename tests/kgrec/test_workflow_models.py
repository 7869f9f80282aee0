"""kgrec.workflow.models: the choices the workflow makes after training (the text prior) and from
the data (the graph encoder)."""
from __future__ import annotations

import pytest
import torch

from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.workflow.models import TEXT_PRIOR_GRID, ModelSettings, TrainedModel, choose_text_prior, graph_encoder_for
from kgrec.workflow.store import WorkflowError


@pytest.fixture()
def fused(tiny_snapshot):
    text = torch.randn(tiny_snapshot.num_products, 8, generator=torch.Generator().manual_seed(0))
    model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text), FusedConfig(graph_dim=8, max_history=5))
    model.set_graph(tiny_snapshot.message_passing("train"))
    return model.eval()


@pytest.mark.parametrize("peak, expected", [(0.2, 0.2), (None, 0.0), (1.0, 1.0)])
def test_choose_text_prior_takes_the_best_weight_and_the_smaller_on_a_tie(fused, peak, expected):
    seen = []

    def validator(model):  # peaks at `peak`; flat (all ties) when None
        weight = model.config.text_prior
        seen.append(weight)
        return 0.5 if peak is None else 1.0 - abs(weight - peak)

    chosen, curve = choose_text_prior(fused, validator)
    assert seen == list(TEXT_PRIOR_GRID) and list(curve) == list(TEXT_PRIOR_GRID)
    assert chosen == expected and fused.config.text_prior == expected
    trained = TrainedModel("fused", fused, ("rec",), None, None, text_prior_curve=curve)  # type: ignore[arg-type]
    assert trained.text_prior == expected


def test_graph_encoder_for_reads_the_kg_relations(tiny_snapshot):
    assert graph_encoder_for(tiny_snapshot) == "sage"  # catalogue relations only
    structure = dict(tiny_snapshot.structure)
    structure[("product", "film_directed_by", "entity")] = torch.tensor([[0], [0]])
    with_kg = type(tiny_snapshot)(**{**tiny_snapshot.__dict__, "structure": structure})
    assert graph_encoder_for(with_kg) == "rgcn"


@pytest.mark.parametrize("field, value", [("graph_encoder", "gat"), ("text_prior", -1.0), ("text_prior", float("nan"))])
def test_settings_refuse_bad_choices(field, value):
    with pytest.raises(WorkflowError):
        ModelSettings(**{field: value})

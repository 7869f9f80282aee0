"""Recommenders behind one contract (:class:`~kgrec.fusion.models.base.Recommender`), one per file."""
from kgrec.fusion.models.base import (
    INTERACTION_EDGE,
    QUERY_EDGE,
    REV_INTERACTION_EDGE,
    REV_QUERY_EDGE,
    ModelInputs,
    Recommender,
    drop_pairs,
)
from kgrec.fusion.models.fused import FusedConfig, FusedRecommender
from kgrec.fusion.models.lightgcn import LightGCNRecommender
from kgrec.fusion.models.mf import MatrixFactorization, bpr_loss
from kgrec.fusion.models.popularity import Popularity
from kgrec.fusion.models.text_zero_shot import TextZeroShot

__all__ = [
    "INTERACTION_EDGE", "QUERY_EDGE", "REV_INTERACTION_EDGE", "REV_QUERY_EDGE", "ModelInputs", "Recommender", "drop_pairs",
    "FusedConfig", "FusedRecommender", "LightGCNRecommender", "MatrixFactorization", "bpr_loss", "Popularity",
    "TextZeroShot",
]

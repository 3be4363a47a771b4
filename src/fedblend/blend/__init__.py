"""Optimal-ratio blending: find the best merge of the sites' models by search, adopt it only when
it is really better than FedAvg. See docs/blend.md.

    from fedblend.blend import build_synthesizer
    synth = build_synthesizer({"searcher": "tpe", "budget": 24}, seed=0)   # the job's [blend] table
    weights, record = synth.synthesize(pool, current, merged, updates, round=10)

Modules: ``config`` ([blend] table), ``spaces`` (ratio spaces), ``searchers`` (Optuna samplers by
name, shared with ``fedblend tune``), ``signal`` (federated or server validation), ``scoring``
(objectives, paired gains, acceptance test), ``mixing`` (building a candidate model),
``synthesizer`` (the search), ``record`` (the stored JSON and its Optuna study).
"""

from __future__ import annotations

from fedblend.blend.config import OBJECTIVES, SCHEDULES, SPACES, BlendSpec, parse_blend_spec
from fedblend.blend.mixing import blend_weights
from fedblend.blend.record import study_from_record
from fedblend.blend.scoring import Score, accept, pareto_front, score_reports
from fedblend.blend.searchers import SEARCHERS, make_sampler
from fedblend.blend.signal import FederatedValidation, ServerValidation, load_server_data
from fedblend.blend.spaces import Candidate, RatioSpace, make_space
from fedblend.blend.synthesizer import BlendOutcome, BlendSynthesizer, build_synthesizer

__all__ = [
    "BlendSpec",
    "parse_blend_spec",
    "SPACES",
    "OBJECTIVES",
    "SCHEDULES",
    "SEARCHERS",
    "make_sampler",
    "Candidate",
    "RatioSpace",
    "make_space",
    "blend_weights",
    "Score",
    "score_reports",
    "accept",
    "pareto_front",
    "FederatedValidation",
    "ServerValidation",
    "load_server_data",
    "BlendSynthesizer",
    "BlendOutcome",
    "build_synthesizer",
    "study_from_record",
]

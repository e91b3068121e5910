"""fasb_tl: FASB (Flexible Activation Steering with Backtracking) on TransformerLens."""

from fasb_tl._version import __version__
from fasb_tl.activations import collect_head_activations, collect_span_activations
from fasb_tl.contrastive import fit_steerer_from_pairs
from fasb_tl.fitting import control_steerer, fit_steerer, steerer_from_activations
from fasb_tl.generation import GenerationConfig, GenerationResult, generate, generate_many
from fasb_tl.intervention import Intervention, SteeringScale
from fasb_tl.models import encode, load_model
from fasb_tl.probes import HeadProbes
from fasb_tl.scoring import ChoiceScores, ScoringConfig, score_choices
from fasb_tl.steering import Readout, Steerer

__all__ = [
    "ChoiceScores",
    "GenerationConfig",
    "GenerationResult",
    "HeadProbes",
    "Intervention",
    "Readout",
    "ScoringConfig",
    "Steerer",
    "SteeringScale",
    "__version__",
    "collect_head_activations",
    "collect_span_activations",
    "control_steerer",
    "encode",
    "fit_steerer",
    "fit_steerer_from_pairs",
    "generate",
    "generate_many",
    "load_model",
    "score_choices",
    "steerer_from_activations",
]

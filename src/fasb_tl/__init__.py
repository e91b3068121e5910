"""fasb_tl: FASB (Flexible Activation Steering with Backtracking) on TransformerLens."""

from fasb_tl._version import __version__
from fasb_tl.activations import collect_head_activations, collect_span_activations
from fasb_tl.models import encode, load_model
from fasb_tl.probes import HeadProbes
from fasb_tl.steering import Steerer, fit_steerer

__all__ = [
    "HeadProbes",
    "Steerer",
    "__version__",
    "collect_head_activations",
    "collect_span_activations",
    "encode",
    "fit_steerer",
    "load_model",
]

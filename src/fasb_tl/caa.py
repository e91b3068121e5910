"""CAA baseline (Rimsky et al., 2024, "Steering Llama 2 via Contrastive Activation Addition"): one
residual-stream vector at one layer, ``mean(true) - mean(false)`` of ``blocks.{L}.hook_resid_post`` at the last
token of the probe prompts, added (times a multiplier) at every steered position.

A :class:`ResidualSteerer` is an :class:`~fasb_tl.intervention.Intervention`, so the decode loop and the scorer
use it unchanged with ``method="iti"`` (always steer, strength 1): the method is the gating policy, the steerer
the intervention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fasb_tl.activations import Prompt, collect_residual_activations
from fasb_tl.distributed import Shard
from fasb_tl.intervention import Hooks, ModelMismatchError, SteeringScale
from fasb_tl.models import model_name

if TYPE_CHECKING:
    from collections.abc import Sequence

    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class CAAConfig:
    """CAA settings: the layer (None = the middle one) and the multiplier of the vector."""

    layer: int | None = None
    multiplier: float = 1.0

    def __post_init__(self) -> None:
        # The multiplier is the scorer's and the decode loop's alpha for CAA rows: the same rule, said here.
        if self.layer is not None and not self.layer >= 0:
            raise ValueError(f"CAA layer must be None (the middle layer) or >= 0, got {self.layer!r}")
        if not 0 <= self.multiplier < float("inf"):
            raise ValueError(f"CAA multiplier must be >= 0 and finite, got {self.multiplier!r}")


@dataclass
class ResidualSteerer:
    """A residual-stream steering vector at ``layer`` for a model of ``n_layers`` x ``d_model``."""

    layer: int
    vector: Float[Tensor, " d_model"]
    model_name: str
    n_layers: int

    def check_model(self, model: TransformerBridge) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` has this vector's depth and width."""
        ours = (self.n_layers, int(self.vector.shape[0]))
        theirs = (int(model.cfg.n_layers), int(model.cfg.d_model))
        if ours != theirs:
            raise ModelMismatchError(
                f"CAA vector for {self.model_name!r} with (n_layers, d_model) = {ours}, "
                f"but the model {model_name(model)!r} has {theirs}"
            )

    def steering_hooks(self, scale: SteeringScale) -> Hooks:
        """A hook on ``blocks.{layer}.hook_resid_post`` adding ``scale * vector``."""

        def hook(resid: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor | None:
            value = scale.fitted_to(resid, trailing=1)
            if value is None:
                return None
            return resid + value * self.vector.to(resid.device, resid.dtype)

        return [(f"blocks.{self.layer}.hook_resid_post", hook)]


def fit_caa(
    model: TransformerBridge,
    prompts: Sequence[Prompt],
    labels: Int[Tensor, " n"],
    layer: int | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
    shard: Shard | None = None,
) -> ResidualSteerer:
    """The CAA vector from labelled prompts (1 = desired): mean difference of the last-token residual stream
    after ``layer`` (default: the middle layer, as CAA steers mid-depth layers)."""
    labels = torch.as_tensor(labels)
    if not ((labels == 0).any() and (labels == 1).any()):
        raise ValueError("CAA needs prompts of both labels (1 and 0)")
    layer = int(model.cfg.n_layers) // 2 if layer is None else layer
    resid = collect_residual_activations(
        model, prompts, layer, batch_size=batch_size, progress=progress, shard=shard
    )
    vector = resid[labels == 1].mean(0) - resid[labels == 0].mean(0)
    return ResidualSteerer(
        layer=layer, vector=vector, model_name=model_name(model), n_layers=int(model.cfg.n_layers)
    )

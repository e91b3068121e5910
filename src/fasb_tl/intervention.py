"""The contract between a steering intervention and the forwards that run under it.

An :class:`Intervention` (the FASB :class:`~fasb_tl.steering.Steerer`, the CAA
:class:`~fasb_tl.caa.ResidualSteerer`, or one of your own) gives TransformerLens ``(name, fn)`` hooks that add
its vector times a :class:`SteeringScale`: a number for every row and position, or a ``[batch, pos]`` tensor
the decode loop and the scorer set before each forward. Reading activations (monitoring) is a separate set
of hooks, owned by the Steerer, so steering never depends on whether anything is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

HookFn = Callable[[Tensor, Any], Tensor | None]
Hooks = list[tuple[str, HookFn]]


class ModelMismatchError(ValueError):
    """An intervention applied to a model of another shape."""


class ScaleShapeError(ValueError):
    """A steering scale whose shape does not fit the activations it steers."""


class SteeringScale:
    """How strongly the steering hooks add their vector: ``None`` (not at all), a number for every row and
    position, or a ``[batch, pos]`` tensor (``pos`` may be 1 to broadcast over the positions of a forward).

    The decode loop and the scorer set it before each forward; the hooks read it on every call.
    """

    def __init__(self, scale: float | Tensor | None = None):
        self.value: Float[Tensor, "batch pos"] | Float[Tensor, ""] | None = None
        self.set(scale)

    def set(self, scale: float | Tensor | None) -> None:
        """Replace the scale; a tensor must be 0-D or ``[batch, pos]``."""
        if scale is None:
            self.value = None
            return
        value = torch.as_tensor(scale, dtype=torch.float32)
        if value.ndim not in (0, 2):
            raise ScaleShapeError(
                f"a steering scale is a number or a [batch, pos] tensor, got shape {tuple(value.shape)}"
            )
        if not torch.isfinite(value).all():
            raise ScaleShapeError(
                "a steering scale must be finite (got NaN or inf: alpha * strength above 3.4e38 overflows float32)"
            )
        self.value = value

    def fitted_to(self, activations: Tensor, trailing: int) -> Tensor | None:
        """The scale on ``activations``' device and dtype, shaped to broadcast over their ``trailing`` last
        dimensions (after ``[batch, pos]``); None when nothing is steered."""
        if self.value is None:
            return None
        value = self.value.to(activations.device, activations.dtype)
        if value.ndim == 0:
            return value
        batch, pos = activations.shape[:2]
        if value.shape[0] != batch or value.shape[1] not in (1, pos):
            raise ScaleShapeError(
                f"steering scale of shape {tuple(value.shape)} does not fit activations of batch {batch} and "
                f"{pos} positions (expected [{batch}, {pos}] or [{batch}, 1])"
            )
        return value.reshape(*value.shape, *([1] * trailing))


@runtime_checkable
class Intervention(Protocol):
    """What the decode loop and the scorer need from a steering method."""

    def check_model(self, model: TransformerBridge) -> None:
        """Raise :class:`ModelMismatchError` unless the intervention fits ``model``."""

    def steering_hooks(self, scale: SteeringScale) -> Hooks:
        """Forward hooks that add the intervention times ``scale`` (and do nothing while it is ``None``)."""


@contextmanager
def intervening(
    model: TransformerBridge,
    intervention: Intervention,
    scale: SteeringScale,
    before: Sequence[tuple[str, HookFn]] = (),
) -> Iterator[SteeringScale]:
    """Install ``intervention``'s steering hooks (after the hooks ``before``, e.g. readers that must see the
    unsteered values) for the duration of the block; every hook is removed on every exit path."""
    intervention.check_model(model)
    with model.hooks(fwd_hooks=[*before, *intervention.steering_hooks(scale)]):
        yield scale


def intervention_problem(method: str, gated: bool, intervention: object | None) -> str | None:
    """Why ``intervention`` cannot run ``method`` (None when it can): every method but ``none`` steers, and
    the gated ones also read probes, which only an intervention with ``monitor_hooks`` (a Steerer) has."""
    if method != "none" and intervention is None:
        return f"method {method!r} needs a Steerer (got None)"
    if gated and not callable(getattr(intervention, "monitor_hooks", None)):
        return (
            f"method {method!r} reads probes, which a {type(intervention).__name__} has not: pass a Steerer"
        )
    return None

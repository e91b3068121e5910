"""The contract between a steering intervention and the forwards that run under it.

An :class:`Intervention` (the FASB :class:`~fasb_tl.steering.Steerer`, the CAA
:class:`~fasb_tl.caa.ResidualSteerer`, or one of your own) gives TransformerLens ``(name, fn)`` hooks that add
its vector times a :class:`SteeringScale`: a number for every row and position, or a ``[batch, pos]`` tensor
the decode loop and the scorer set before each forward. Reading activations (monitoring) is a separate set
of hooks, owned by the Steerer, so steering never depends on whether anything is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from fasb_tl.models import check_bridge

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

HookFn = Callable[[Tensor, Any], Tensor | None]
Hooks = list[tuple[str, HookFn]]
Positions = Literal["generated"] | slice | None


class ModelMismatchError(ValueError):
    """An intervention applied to a model of another shape."""


class ScaleShapeError(ValueError):
    """A steering scale whose shape does not fit the activations it steers."""


class SteeringScale:
    """How strongly the steering hooks add their vector: ``None`` (not at all), a number for every row and
    position, or a ``[batch, pos]`` tensor (``pos`` may be 1 to broadcast over the positions of a forward).

    The decode loop and the scorer set it before each forward; the hooks read it on every call. Example::

        scale = SteeringScale(torch.tensor([[0.0, 0.0, 15.0]]))  # steer only the third position
        with steerer.attach(model, scale):
            model(tokens)  # tokens: [1, 3]
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


def check_positions(positions: object) -> Positions:
    """``positions`` if it is a valid steering window: ``None`` (every position), ``"generated"``, or a slice
    of absolute positions with non-negative bounds and no step (they count across the forwards of a block,
    so a negative bound has no fixed meaning)."""
    if positions is None or positions == "generated":
        return positions
    if not isinstance(positions, slice):
        problem = ValueError if isinstance(positions, str) else TypeError
        raise problem(f'positions must be None, "generated" or a slice, got {positions!r}')
    bounds_ok = all(b is None or (isinstance(b, int) and b >= 0) for b in (positions.start, positions.stop))
    if not bounds_ok or positions.step not in (None, 1):
        raise ValueError(
            f"positions must be a slice with non-negative integer bounds and no step, got {positions!r}"
        )
    return positions


class WindowedScale(SteeringScale):
    """A number applied only at some absolute positions of the sequence (columns of a padded batch).

    Positions count across the forwards of one block: a forward on top of a KV cache continues where the cache
    ends (``offset``, set before each forward by :func:`steering_window`). ``"generated"`` is every position
    from the last one of the block's first forward on: the positions whose logits choose new tokens, so
    TransformerLens' ``model.generate`` steers the same tokens with and without its KV cache.
    """

    def __init__(self, scale: float, positions: Positions):
        super().__init__(scale)
        self.positions = check_positions(positions)
        self.offset = 0
        self.prompt_end: int | None = None

    def fitted_to(self, activations: Tensor, trailing: int) -> Tensor | None:
        value = super().fitted_to(activations, trailing)
        if value is None or self.positions is None:
            return value
        n_positions = activations.shape[1]
        if self.prompt_end is None:
            self.prompt_end = self.offset + n_positions
        start, stop = self._bounds()
        columns = torch.arange(self.offset, self.offset + n_positions, device=activations.device)
        inside = ((columns >= start) & (columns < stop)).to(value.dtype)
        return (value * inside).reshape(1, n_positions, *([1] * trailing))

    def _bounds(self) -> tuple[int, float]:
        if self.positions == "generated":
            return max(self.prompt_end - 1, 0), float("inf")
        window = self.positions
        return window.start or 0, float("inf") if window.stop is None else window.stop


def _cache_length(kwargs: dict) -> int:
    """How many positions the KV cache handed to a forward already holds (0 without one)."""
    cache = kwargs.get("past_key_values")
    if cache is None:
        return 0
    if not callable(getattr(cache, "get_seq_length", None)):
        raise TypeError(
            f"steering positions need a transformers Cache as past_key_values, got {type(cache).__name__}"
        )
    return int(cache.get_seq_length())


@contextmanager
def steering_window(model: TransformerBridge, value: float, positions: Positions) -> Iterator[SteeringScale]:
    """The scale for a steering block at ``value`` over ``positions`` (see :class:`WindowedScale`); with a
    window, module hooks on ``model`` tell the scale where each forward starts, and always go on exit."""
    if check_positions(positions) is None:
        yield SteeringScale(value)
        return
    scale = WindowedScale(value, positions)

    def before(module: Any, args: tuple, kwargs: dict) -> None:
        scale.offset = _cache_length(kwargs)

    def after(module: Any, args: tuple, output: Any) -> None:
        # A forward called without the module hooks (model.forward directly) then starts at position 0.
        scale.offset = 0

    with ExitStack() as handles:
        handles.callback(model.register_forward_pre_hook(before, with_kwargs=True).remove)
        handles.callback(model.register_forward_hook(after).remove)
        yield scale


@runtime_checkable
class Intervention(Protocol):
    """What the decode loop and the scorer need from a steering method. Any object with these two methods
    is one (no base class), e.g. a single residual-stream vector::

        class MyVector:
            def check_model(self, model):
                assert model.cfg.d_model == self.vector.shape[0]

            def steering_hooks(self, scale):
                def add(resid, hook):
                    value = scale.fitted_to(resid, trailing=1)
                    return None if value is None else resid + value * self.vector

                return [("blocks.6.hook_resid_pre", add)]
    """

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
    check_bridge(model)
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

"""Steering directions per head, as small factories, and the scale sigma of a direction.

A direction factory takes the K heads' activations ``[n, k, d_head]``, their labels (1 = true), the probes'
weights ``[k, d_head]`` and a seed, and returns one direction per head; :func:`head_directions` makes them
unit length. Add a kind by adding a factory to :data:`DIRECTIONS`. The controls in :data:`CONTROLS` turn a
fitted Steerer's directions into a control (same heads, probes and sigmas).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fasb_tl.probes import ProbeError

DirectionFactory = Callable[
    [Float[Tensor, "n k d_head"], Int[Tensor, " n"], Float[Tensor, "k d_head"], int],
    Float[Tensor, "k d_head"],
]
DirectionKind = Literal["mass_mean", "probe", "random"]
ControlKind = Literal["reversed", "random"]


def random_directions(shape: torch.Size | tuple[int, ...], seed: int) -> Float[Tensor, "k d_head"]:
    """Seeded standard-normal directions (unit length after :func:`unit`): the random control."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def mass_mean(activations: Tensor, labels: Tensor, probe_weights: Tensor, seed: int) -> Tensor:
    """ITI's mass-mean shift: mean of the true answers' activations minus mean of the false ones'."""
    labels = torch.as_tensor(labels)
    return activations[labels == 1].mean(0) - activations[labels == 0].mean(0)


def probe_direction(activations: Tensor, labels: Tensor, probe_weights: Tensor, seed: int) -> Tensor:
    """The probes' weight vectors."""
    return probe_weights.clone()


def random_direction(activations: Tensor, labels: Tensor, probe_weights: Tensor, seed: int) -> Tensor:
    """A seeded random direction per head (a control: steering that ignores the data)."""
    return random_directions(probe_weights.shape, seed)


DIRECTIONS: dict[str, DirectionFactory] = {
    "mass_mean": mass_mean,
    "probe": probe_direction,
    "random": random_direction,
}
DIRECTION_KINDS = tuple(DIRECTIONS)

# A control maps fitted unit directions and a seed to the control's unit directions, and names the result.
CONTROLS: dict[str, tuple[Callable[[Tensor, int], Tensor], Callable[[str], str]]] = {
    "reversed": (lambda directions, seed: -directions, lambda kind: f"reversed-{kind}"),
    "random": (
        lambda directions, seed: unit(random_directions(directions.shape, seed)),
        lambda kind: "random",
    ),
}
CONTROL_KINDS = tuple(CONTROLS)


def check_direction_kind(kind: str) -> None:
    """Raise :class:`ProbeError` unless ``kind`` names a direction factory."""
    if kind not in DIRECTIONS:
        raise ProbeError(f"unknown direction kind {kind!r}: expected one of {DIRECTION_KINDS}")


def unit(vectors: Float[Tensor, "k d"]) -> Float[Tensor, "k d"]:
    """Each row scaled to unit length; a zero row raises :class:`ProbeError`."""
    norms = vectors.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise ProbeError("a steering direction has zero norm (identical class means or an all-zero probe)")
    return vectors / norms


def head_directions(
    kind: DirectionKind,
    activations: Float[Tensor, "n k d_head"],
    labels: Int[Tensor, " n"],
    probe_weights: Float[Tensor, "k d_head"],
    seed: int = 0,
) -> Float[Tensor, "k d_head"]:
    """Unit steering directions for the K heads from the factory named ``kind``."""
    check_direction_kind(kind)
    return unit(DIRECTIONS[kind](activations, labels, probe_weights, seed))


def control_directions(
    kind: ControlKind, directions: Float[Tensor, "k d_head"], direction_kind: str, seed: int = 0
) -> tuple[Float[Tensor, "k d_head"], str]:
    """The control ``kind`` of unit ``directions`` fitted as ``direction_kind``, and the control's name."""
    if kind not in CONTROLS:
        raise ProbeError(f"unknown control {kind!r}: expected one of {CONTROL_KINDS}")
    make, name = CONTROLS[kind]
    return make(directions, seed).to(directions.dtype), name(direction_kind)


def projection_std(
    activations: Float[Tensor, "n k d_head"], directions: Float[Tensor, "k d_head"]
) -> Float[Tensor, " k"]:
    """Population std of the activations projected on each unit direction (the reference's ``np.std``)."""
    projections = torch.einsum("nkd,kd->nk", activations.to(torch.float64), directions.to(torch.float64))
    return projections.std(0, correction=0).to(torch.float32)

"""Variants of a steering method that every result should sit beside: direction controls and a calibrated threshold.

A variant changes one thing and keeps the rest: ``reversed`` / ``random`` steer the same heads with the same
strengths and the same gating along the reversed or a random unit direction (several seeds, averaged in the
tables); ``random_heads`` (the released code's ``--use_random_dir`` with its ``--use_center_of_mass``) replaces
the top-K heads by K heads drawn at random (several seeds), each with its own probe, mass-mean direction and
sigma, so detection and steering both use the random heads; ``calibrated`` replaces the fixed threshold by one calibrated per fold on held-out answers in the
generation format (:mod:`fasb_tl.calibration`). The plain method is the variant with nothing set; its rows
carry no variant fields, so results computed before variants existed keep their keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fasb_tl.directions import CONTROL_KINDS
from fasb_tl.methods import CONTROLLED_METHODS, GATED_METHODS

THRESHOLD_MODES = ("fixed", "calibrated")
# Controls that change which heads a Steerer has (refitted on the same bank), next to the direction controls
# of :data:`~fasb_tl.directions.CONTROL_KINDS` (applied to the fitted Steerer).
HEAD_CONTROLS = ("random_heads",)
ALL_CONTROLS = (*CONTROL_KINDS, *HEAD_CONTROLS)
SEEDED_CONTROLS = ("random", "random_heads")


@dataclass(frozen=True)
class Variant:
    """One variant: a control direction (with its seed), or the calibrated threshold, or neither."""

    control: str | None = None
    seed: int = 0
    calibrated: bool = False

    def __post_init__(self) -> None:
        if self.control is not None and self.control not in ALL_CONTROLS:
            raise ValueError(f"control must be one of {ALL_CONTROLS} or None, got {self.control!r}")
        if self.control is not None and self.calibrated:
            raise ValueError("a variant is either a control or the calibrated threshold, not both")

    @property
    def changes_heads(self) -> bool:
        """Whether this variant steers with another Steerer (other heads) rather than the fitted one."""
        return self.control in HEAD_CONTROLS

    @property
    def label(self) -> str:
        """``""`` for the plain method, else ``reversed``, ``random`` or ``calibrated`` (seeds share a label)."""
        return self.control or ("calibrated" if self.calibrated else "")

    def applies_to(self, method: str) -> bool:
        """Whether ``method`` (without protocol suffix) has this variant."""
        if self.control is not None:
            return method in CONTROLLED_METHODS
        return not self.calibrated or method in GATED_METHODS

    def identity(self) -> dict:
        """Fields this variant adds to a row's identity (none for the plain method)."""
        fields: dict = {}
        if self.control is not None:
            fields["control"] = self.control
        if self.control in SEEDED_CONTROLS:
            fields["control_seed"] = self.seed
        if self.calibrated:
            fields["threshold_mode"] = "calibrated"
        return fields

    def suffix(self) -> str:
        """A unique tag for names inside one run (``~random2``)."""
        if self.control in SEEDED_CONTROLS:
            return f"~{self.control}{self.seed}"
        return f"~{self.label}" if self.label else ""


PLAIN = Variant()


def plan_variants(
    controls: Sequence[str] = (), n_random: int = 3, thresholds: Sequence[str] = ("fixed",)
) -> list[Variant]:
    """The plain variant (always), each requested control (``n_random`` seeds for ``random`` and
    ``random_heads``), then the calibrated threshold when ``thresholds`` has ``"calibrated"``."""
    unknown = [c for c in controls if c not in ALL_CONTROLS]
    if unknown:
        raise ValueError(f"unknown control(s) {unknown}: expected some of {ALL_CONTROLS}")
    unknown = [t for t in thresholds if t not in THRESHOLD_MODES]
    if unknown:
        raise ValueError(f"unknown threshold mode(s) {unknown}: expected some of {THRESHOLD_MODES}")
    if set(controls) & set(SEEDED_CONTROLS) and n_random < 1:
        raise ValueError(f"n_random must be >= 1 when a random control is on, got {n_random}")
    variants = [PLAIN]
    for control in controls:
        seeds = range(n_random) if control in SEEDED_CONTROLS else (0,)
        variants += [Variant(control=control, seed=seed) for seed in seeds]
    if "calibrated" in thresholds:
        variants.append(Variant(calibrated=True))
    return variants


def row_variant(row: dict) -> str:
    """The variant label of a stored row (``""`` for the plain method)."""
    return row.get("control") or ("calibrated" if row.get("threshold_mode") == "calibrated" else "")

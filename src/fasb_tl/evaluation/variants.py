"""Variants of a steering method that every result should sit beside: direction controls and a calibrated threshold.

A variant changes one thing and keeps the rest: ``reversed`` / ``random`` steer the same heads with the same
strengths and the same gating along the reversed or a random unit direction (several seeds, averaged in the
tables); ``calibrated`` replaces the fixed threshold by one calibrated per fold on held-out answers in the
generation format (:mod:`fasb_tl.calibration`). The plain method is the variant with nothing set; its rows
carry no variant fields, so results computed before variants existed keep their keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fasb_tl.directions import CONTROL_KINDS
from fasb_tl.methods import CONTROLLED_METHODS, GATED_METHODS

THRESHOLD_MODES = ("fixed", "calibrated")


@dataclass(frozen=True)
class Variant:
    """One variant: a control direction (with its seed), or the calibrated threshold, or neither."""

    control: str | None = None
    seed: int = 0
    calibrated: bool = False

    def __post_init__(self) -> None:
        if self.control is not None and self.control not in CONTROL_KINDS:
            raise ValueError(f"control must be one of {CONTROL_KINDS} or None, got {self.control!r}")
        if self.control is not None and self.calibrated:
            raise ValueError("a variant is either a control or the calibrated threshold, not both")

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
        if self.control == "random":
            fields["control_seed"] = self.seed
        if self.calibrated:
            fields["threshold_mode"] = "calibrated"
        return fields

    def suffix(self) -> str:
        """A unique tag for names inside one run (``~random2``)."""
        if self.control == "random":
            return f"~random{self.seed}"
        return f"~{self.label}" if self.label else ""


PLAIN = Variant()


def plan_variants(
    controls: Sequence[str] = (), n_random: int = 3, thresholds: Sequence[str] = ("fixed",)
) -> list[Variant]:
    """The plain variant (always), each requested control (``n_random`` seeds for ``random``), then the
    calibrated threshold when ``thresholds`` has ``"calibrated"``."""
    unknown = [c for c in controls if c not in CONTROL_KINDS]
    if unknown:
        raise ValueError(f"unknown control(s) {unknown}: expected some of {CONTROL_KINDS}")
    unknown = [t for t in thresholds if t not in THRESHOLD_MODES]
    if unknown:
        raise ValueError(f"unknown threshold mode(s) {unknown}: expected some of {THRESHOLD_MODES}")
    if "random" in controls and n_random < 1:
        raise ValueError(f"n_random must be >= 1 when the random control is on, got {n_random}")
    variants = [PLAIN]
    for control in controls:
        seeds = range(n_random) if control == "random" else (0,)
        variants += [Variant(control=control, seed=seed) for seed in seeds]
    if "calibrated" in thresholds:
        variants.append(Variant(calibrated=True))
    return variants


def row_variant(row: dict) -> str:
    """The variant label of a stored row (``""`` for the plain method)."""
    return row.get("control") or ("calibrated" if row.get("threshold_mode") == "calibrated" else "")

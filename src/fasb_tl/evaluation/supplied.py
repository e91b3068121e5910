"""A Steerer given to the evaluation instead of fitted by it (``run_plan(..., steerer=...)``, ``fasb eval
--steerer``), under rules that keep its rows honest and apart from every other row:

* It runs only where it was not fitted on what is evaluated: a TruthfulQA Steerer only on the test questions of
  its own fold, and only when the plan splits the questions as it was fitted (checked in
  :mod:`fasb_tl.evaluation.truthfulqa`); a Steerer of one of the six tasks only on that task, whose evaluation
  items are disjoint from the pool it was fitted on. Its metadata names that dataset (:func:`check_fitted_for`).
* The task config's K and direction are the Steerer's, so the config each row records is the one that ran
  (:func:`settings_for` makes such a config; :func:`check_fitted_for` refuses another).
* Every row's identity carries ``steerer``, a hash of its tensors (:func:`steerer_digest`), and so do the
  names of what is made for it (the calibrated threshold, the answers CSVs): rows of a supplied Steerer never
  share a key, a table section or a file with rows of a fitted one, or of another supplied one.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TypeVar

import torch

from fasb_tl.evaluation.context import SteeringSettings
from fasb_tl.steering import Steerer

Settings = TypeVar("Settings", bound=SteeringSettings)


class SuppliedSteererError(ValueError):
    """A supplied Steerer that cannot stand in for the fitted ones of a plan without mixing up results."""


def steerer_digest(steerer: Steerer) -> str:
    """A hash of the Steerer's tensors as saved (float32, on the CPU): the same for every copy of one Steerer
    whatever its folder, different for any other heads, directions, scales or probes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(steerer.to("cpu", torch.float32).tensors().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def settings_for(settings: Settings, steerer: Steerer) -> Settings:
    """``settings`` with the Steerer's K and direction, the fitting settings it was made with."""
    return replace(settings, k=steerer.k, direction=steerer.meta.direction)


def check_fitted_for(steerer: Steerer, dataset: str, settings: SteeringSettings) -> None:
    """Raise :class:`SuppliedSteererError` unless ``steerer`` was fitted on ``dataset`` with the K and direction
    of ``settings``."""
    meta = steerer.meta
    if meta.dataset != dataset:
        raise SuppliedSteererError(
            f"the Steerer was fitted on {meta.dataset!r}, so it can be evaluated only on that task, not on "
            f"{dataset!r}"
        )
    if (steerer.k, meta.direction) != (settings.k, settings.direction):
        raise SuppliedSteererError(
            f"the Steerer has K={steerer.k} and direction {meta.direction!r}, but the config says K={settings.k} "
            f"and {settings.direction!r}; rows would record settings that did not run (see settings_for)"
        )

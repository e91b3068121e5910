"""Choose FASB's threshold from held-out data, read in the prompt format generation actually uses.

The paper's threshold (0.6) is set on probes trained on short ``Q: A:`` prompts. At generation time the probes
read the heads after the instruction + 6-shot primer + question + the answer so far, where their P(true) sits
elsewhere; with an uncalibrated threshold FASB can trigger on every question. :func:`generation_format_scores`
replays held-out reference answers in that format and records, per answer, the lowest P(true) at the
positions where FASB would check; :func:`calibrate_threshold` then picks the threshold.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from fasb_tl._io import atomic_write_text
from fasb_tl.activations import collect_span_activations
from fasb_tl.data.prompts import generation_prompt
from fasb_tl.data.records import DatasetError, QARecord
from fasb_tl.distributed import Shard
from fasb_tl.scoring import answer_tokens

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from fasb_tl.steering import Steerer

Criterion = Literal["balanced_accuracy", "trigger_rate"]
CRITERIA = ("balanced_accuracy", "trigger_rate")


class CalibrationFormatError(ValueError):
    """A calibration file that :meth:`ThresholdCalibration.save` did not write (or that changed since)."""


@dataclass(frozen=True)
class ThresholdCalibration:
    """A threshold and what it does on the calibration answers (a trigger is ``score < threshold``)."""

    threshold: float
    criterion: str
    trigger_rate_true: float
    trigger_rate_false: float
    n_true: int
    n_false: int

    @property
    def balanced_accuracy(self) -> float:
        """Of the detector "this answer is false": mean of its hit rate on false and true-negative rate on true."""
        return 0.5 * (self.trigger_rate_false + 1.0 - self.trigger_rate_true)

    def to_dict(self) -> dict:
        return {**asdict(self), "balanced_accuracy": self.balanced_accuracy}

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON, atomically."""
        target = Path(path)
        atomic_write_text(target, json.dumps(self.to_dict(), indent=2))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> ThresholdCalibration:
        """Read what :meth:`save` wrote (the derived balanced accuracy is recomputed, not read).

        Raises :class:`CalibrationFormatError`, naming the file, for anything :meth:`save` does not write: not
        JSON, missing or unknown fields, or a field of another type (a threshold ``"0.5"`` or ``true``) or out
        of range."""
        try:
            stored = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CalibrationFormatError(f"{path} is not a calibration file ({err})") from err
        problem = _calibration_problem(stored)
        if problem:
            raise CalibrationFormatError(f"{path}: {problem}")
        stored.pop("balanced_accuracy", None)
        return cls(**stored)


# The JSON type of each field :meth:`ThresholdCalibration.save` writes (exactly: no strings or booleans for
# numbers); ``balanced_accuracy`` is written too but recomputed on load.
_FIELD_TYPES = {
    "threshold": float,
    "criterion": str,
    "trigger_rate_true": float,
    "trigger_rate_false": float,
    "n_true": int,
    "n_false": int,
}


def _calibration_problem(stored: object) -> str | None:
    """What is wrong with the JSON of a calibration file, or None."""
    if not isinstance(stored, dict):
        return f"expected a JSON object, got {type(stored).__name__}"
    types = {**_FIELD_TYPES, "balanced_accuracy": float}
    missing = sorted(set(_FIELD_TYPES) - set(stored))
    unknown = sorted(set(stored) - set(types))
    if missing or unknown:
        return f"missing fields {missing}, unknown fields {unknown}"
    for name, value in stored.items():
        if type(value) is not types[name]:
            return f"{name} must be a JSON {types[name].__name__}, got {value!r}"
        if types[name] is float and not 0.0 <= value <= 1.0:
            return f"{name} must be in [0, 1], got {value!r}"
    if stored["criterion"] not in CRITERIA:
        return f"criterion must be one of {CRITERIA}, got {stored['criterion']!r}"
    if stored["n_true"] < 0 or stored["n_false"] < 0:
        return f"counts must be >= 0, got n_true {stored['n_true']} and n_false {stored['n_false']}"
    return None


def load_calibration_if_valid(path: str | os.PathLike) -> ThresholdCalibration | None:
    """The calibration stored at ``path``; None when there is none, or when the file is corrupt (a cache entry:
    a warning names it and the caller computes the calibration again, overwriting the file)."""
    if not Path(path).is_file():
        return None
    try:
        return ThresholdCalibration.load(path)
    except (OSError, CalibrationFormatError) as err:
        warnings.warn(f"{err}; calibrating again", stacklevel=2)
        return None


def calibration_path(folder: str | os.PathLike, back_steps: int) -> Path:
    """Where a calibration for ``back_steps`` is kept next to a Steerer."""
    return Path(folder) / f"calibration-back{back_steps}.json"


def _rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    triggered = scores < threshold
    return float(triggered[labels == 1].mean()), float(triggered[labels == 0].mean())


def calibrate_threshold(
    scores: Sequence[float],
    labels: Sequence[int],
    *,
    criterion: Criterion = "balanced_accuracy",
    target_rate: float | None = None,
) -> ThresholdCalibration:
    """The threshold that maximises the detector's balanced accuracy, or that triggers on ``target_rate`` of
    all answers (``criterion="trigger_rate"``).

    ``scores`` are P(true) values an answer would be checked with (see :func:`generation_format_scores`),
    ``labels`` 1 for true and 0 for false answers. Candidate thresholds are midpoints between neighbouring
    scores (and 0 and 1); ties in balanced accuracy go to the lowest threshold, i.e. the fewest triggers.
    """
    values = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(labels)
    if values.ndim != 1 or values.shape != truth.shape or values.size == 0:
        raise ValueError(f"expected equally long 1-d scores and labels, got {values.shape} and {truth.shape}")
    if not set(np.unique(truth).tolist()) == {0, 1}:
        raise DatasetError(
            f"calibration needs true (1) and false (0) answers, got labels {sorted(set(truth))}"
        )
    if not np.isfinite(values).all():
        raise ValueError("calibration scores contain NaN or infinite values")
    unique = np.unique(np.clip(values, 0.0, 1.0))
    candidates = np.concatenate([[0.0], (unique[1:] + unique[:-1]) / 2, [1.0]])
    if criterion == "balanced_accuracy":
        if target_rate is not None:
            raise ValueError("target_rate is only used with criterion='trigger_rate'")
        rates = [_rates(values, truth, t) for t in candidates]
        balanced = [0.5 * (on_false + 1.0 - on_true) for on_true, on_false in rates]
        best = np.flatnonzero(np.asarray(balanced) >= max(balanced) - 1e-12)
        threshold = float(candidates[best[0]])
    elif criterion == "trigger_rate":
        if target_rate is None or not 0.0 <= target_rate <= 1.0:
            raise ValueError(f"criterion='trigger_rate' needs target_rate in [0, 1], got {target_rate}")
        overall = np.array([(values < t).mean() for t in candidates])
        threshold = float(candidates[int(np.argmin(np.abs(overall - target_rate)))])
    else:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    on_true, on_false = _rates(values, truth, threshold)
    return ThresholdCalibration(
        threshold=threshold,
        criterion=criterion,
        trigger_rate_true=on_true,
        trigger_rate_false=on_false,
        n_true=int((truth == 1).sum()),
        n_false=int((truth == 0).sum()),
    )


def check_positions(prompt_length: int, answer_length: int, back_steps: int) -> tuple[int, int]:
    """The token positions whose P(true) FASB checks while generating ``answer_length`` tokens after a prompt
    of ``prompt_length`` tokens, as a span ``[start, stop)``.

    The check after the n-th generated token reads the forward pass that produced it, i.e. the position of
    token n - 1 (the prompt's last token for n = 1); it happens once ``n >= back_steps`` and always at the end.
    """
    first_check = min(max(back_steps, 1), answer_length)
    return prompt_length + first_check - 2, prompt_length + answer_length - 1


def generation_format_scores(
    model: TransformerBridge,
    steerer: Steerer,
    records: Sequence[QARecord],
    *,
    back_steps: int,
    instruction: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    shard: Shard | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per reference answer of each record: the lowest P(true) FASB would see while that answer is generated
    after the TruthfulQA generation prompt (``"\\nA: " + answer``), and its label.

    An answer with score below the threshold would trigger; so the rates of :func:`calibrate_threshold` are the
    trigger rates FASB would have on true and on false answers.
    """
    if not records:
        raise DatasetError("calibration: got no records (expected at least one question)")
    token_lists, spans, labels = [], [], []
    for record in records:
        context = generation_prompt(record.question, instruction)
        for answer, label in record.answers:
            ids, start = answer_tokens(model, context, "\nA: " + answer)
            token_lists.append(ids)
            spans.append(check_positions(start, len(ids) - start, back_steps))
            labels.append(label)
    layers = steerer.layers
    pieces = collect_span_activations(
        model, token_lists, spans, layers=layers, batch_size=batch_size, progress=progress, shard=shard
    )
    scores = []
    for piece in pieces:
        by_layer = {layer: piece[:, j] for j, layer in enumerate(layers)}
        with torch.no_grad():
            scores.append(float(steerer.p_true(steerer.head_values(by_layer)).min()))
    return np.asarray(scores), np.asarray(labels, dtype=np.int64)

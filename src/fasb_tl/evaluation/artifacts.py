"""What the evaluation fits before it scores: Steerers, threshold calibrations and CAA vectors.

:class:`ArtifactCache` loads or computes each once, and keeps Steerers and calibrations under ``steerer_dir``
by name (``fold{i}-{direction}-k{k}-{hash}`` for TruthfulQA, ``{task}-{direction}-k{k}-pool{n_pool}-{hash}``
for the six tasks, where ``hash`` (:meth:`ArtifactCache.name`) covers the model's name and weights fingerprint,
the fitting settings and the prompts, labels and split fitted on), so reruns and other result folders reuse
them, and a folder shared by several models, data folders or settings never mixes them. A stored Steerer
whose recorded model is not the run's is refitted. :func:`fit_on_bank` is the one way the evaluation fits a
Steerer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from fasb_tl.activations import collect_head_activations
from fasb_tl.calibration import ThresholdCalibration, calibration_path, load_calibration_if_valid
from fasb_tl.evaluation.context import SteeringSettings
from fasb_tl.evaluation.sharding import load_or_compute
from fasb_tl.fitting import model_meta, steerer_from_activations
from fasb_tl.models import model_name, weights_fingerprint
from fasb_tl.steering import ModelMismatchError, Steerer, SteererFormatError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from fasb_tl.caa import ResidualSteerer
    from fasb_tl.data import ProbeBank
    from fasb_tl.evaluation.context import EvalContext

T = TypeVar("T")


def load_steerer_if_valid(folder: Path, model: TransformerBridge) -> Steerer | None:
    """The Steerer saved in ``folder`` for ``model``, or None when there is none, it is unreadable, or it was
    fitted on another model (another name, shape or weights fingerprint)."""
    try:
        return Steerer.load(folder, model=model)
    except (SteererFormatError, ModelMismatchError):
        return None


class ArtifactCache:
    """Each artifact once per cache (one per job): kept in memory, else loaded, else computed (and saved)."""

    def __init__(self, ctx: EvalContext):
        self.ctx = ctx
        self._values: dict[Hashable, Any] = {}

    def _get(self, key: Hashable, compute: Callable[[], T]) -> T:
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]

    def name(self, label: str, settings: SteeringSettings, *data: Any) -> str:
        """``label`` and a short hash of what an artifact depends on: the model (name and weights fingerprint),
        the fitting fields of ``settings`` and ``data`` (prompts, labels, split masks: lists or tensors)."""
        identity = {
            "model": model_name(self.ctx.model),
            "weights": weights_fingerprint(self.ctx.model),
            "settings": settings.identity(SteeringSettings.FITTING),
            "data": data,
        }
        text = json.dumps(identity, sort_keys=True, default=lambda value: value.tolist())
        return f"{label}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def steerer(self, name: str, fit: Callable[[], Steerer]) -> Steerer:
        """The Steerer ``steerer_dir/name``, fitted by ``fit`` and saved there when it is missing or unreadable."""
        folder = self.ctx.steerer_dir / name
        return self._get(
            ("steerer", name),
            lambda: load_or_compute(
                self.ctx.shard,
                lambda: load_steerer_if_valid(folder, self.ctx.model),
                fit,
                lambda steerer: steerer.save(folder, overwrite=True),
            ),
        )

    def calibration(
        self, steerer_name: str, back_steps: int, calibrate: Callable[[], ThresholdCalibration]
    ) -> ThresholdCalibration:
        """The threshold calibration stored beside the Steerer ``steerer_name`` (calibrated again when that
        file is missing or corrupt)."""
        path = calibration_path(self.ctx.steerer_dir / steerer_name, back_steps)
        return self._get(
            ("calibration", steerer_name, back_steps),
            lambda: load_or_compute(
                self.ctx.shard,
                lambda: load_calibration_if_valid(path),
                calibrate,
                lambda calibration: calibration.save(path),
            ),
        )

    def caa(self, name: str, fit: Callable[[], ResidualSteerer]) -> ResidualSteerer:
        """A CAA vector; it has no file format and costs one residual pass, so it is kept for this run only."""
        return self._get(("caa", name), fit)


def fit_on_bank(
    ctx: EvalContext,
    bank: ProbeBank,
    is_val: torch.Tensor,
    settings: SteeringSettings,
    *,
    dataset: str,
    tuning: torch.Tensor | None = None,
    heads: torch.Tensor | None = None,
    **provenance: Any,
) -> Steerer:
    """A Steerer from one labelled bank: probes on the prompts where ``is_val`` is False, heads chosen on the
    others (or the given ``heads``), sigmas from the ``tuning`` activations (default: the bank's own,
    unlabelled).

    The bank's prompts are extracted in one call, in their order: the batches decide the activations to the
    last bit, so a bank is never re-split before extraction. ``n_train`` / ``n_val`` count questions (items).
    """
    acts = collect_head_activations(
        ctx.model, bank.prompts, batch_size=settings.batch_size, progress=ctx.progress, shard=ctx.shard
    )
    meta = model_meta(
        ctx.model,
        settings.direction,
        dataset=dataset,
        split_seed=settings.seed,
        n_train=int(bank.groups[~is_val].unique().numel()),
        n_val=int(bank.groups[is_val].unique().numel()),
        **provenance,
    )
    steerer = steerer_from_activations(
        acts[~is_val],
        bank.labels[~is_val],
        acts[is_val],
        bank.labels[is_val],
        acts if tuning is None else tuning,
        meta,
        k=settings.k,
        backend=settings.backend,
        seed=settings.seed,
        tie_break=settings.tie_break,
        heads=heads,
        progress=ctx.progress,
    )
    return steerer

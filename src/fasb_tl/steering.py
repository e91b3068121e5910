"""The :class:`Steerer`: the K anchored heads with their probes, steering directions and scales.

A Steerer is everything FASB needs at generation time, as tensors: ``p_true`` is one einsum over the K
heads (no sklearn). Reading and writing are separate hooks: :meth:`Steerer.monitor_hooks` record hook_z of the
K heads' layers into a :class:`Readout`, :meth:`Steerer.steering_hooks` add ``scale * sigma_k * v_k`` to the K
heads (the :class:`~fasb_tl.intervention.Intervention` protocol). :meth:`Steerer.steering` and
:meth:`Steerer.monitoring` wrap them as context managers for your own forwards. A Steerer is saved as
``steerer.safetensors`` + ``steerer.json``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from fasb_tl._io import replace_dir
from fasb_tl._version import __version__
from fasb_tl.activations import HeadsByLayer, hook_z_name
from fasb_tl.intervention import (
    Hooks,
    ModelMismatchError,
    Positions,
    SteeringScale,
    intervening,
    steering_window,
)
from fasb_tl.models import model_name, weights_fingerprint
from fasb_tl.probes import HeadProbes, heads_table
from fasb_tl.steerer_file import (
    FORMAT_VERSION,
    META_FILE,
    PROBE_TENSORS,
    STEERING_TENSORS,
    TENSOR_FILE,
    SteererFormatError,
    read_folder,
    validate,
    write_folder,
)
from fasb_tl.steerer_folder import check_target, recover

if TYPE_CHECKING:
    from transformer_lens import ActivationCache
    from transformer_lens.model_bridge import TransformerBridge


__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "TENSOR_FILE",
    "ModelMismatchError",
    "Readout",
    "Steerer",
    "SteererFormatError",
    "check_save_target",
]


def _library_version() -> str:
    return __version__


@dataclass(frozen=True)
class SteererMeta:
    """Where a Steerer came from and which model shape it fits."""

    model_name: str
    n_layers: int
    n_heads: int
    d_head: int
    direction: str
    dataset: str = "unknown"
    split_seed: int | None = None
    fold: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    library_version: str = field(default_factory=_library_version)
    format_version: int = FORMAT_VERSION
    model_fingerprint: str | None = None  # models.weights_fingerprint; None in older files
    # How the heads were chosen: a top-K tie rule ("released", "lowest") or "given"; None in older files,
    # which broke ties as "lowest" does.
    head_selection: str | None = None

    def check_model(self, model: TransformerBridge, allow_other_model: bool = False) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` has this shape and is the model fitted on (same
        name and, if recorded, weights fingerprint); ``allow_other_model=True`` accepts this origin on ``model``."""
        cfg, name, origin = model.cfg, model_name(model), (self.model_name, self.model_fingerprint)
        ours = (self.n_layers, self.n_heads, self.d_head)
        theirs = (int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head))
        if ours != theirs:
            raise ModelMismatchError(
                f"Steerer fitted on {self.model_name!r} with (n_layers, n_heads, d_head) = {ours}, "
                f"but the model {name!r} has {theirs}"
            )
        accepted = getattr(model, "_fasb_accepted", set())
        if allow_other_model:
            model._fasb_accepted = accepted | {origin}
            return
        if origin in accepted:
            return
        # An older file records no fingerprint: then the name alone must match.
        theirs_origin = (name, weights_fingerprint(model) if self.model_fingerprint is not None else None)
        if origin != theirs_origin:
            raise ModelMismatchError(
                f"Steerer fitted on (model, weights fingerprint) {origin}, but the model is {theirs_origin}; to use "
                "it anyway, load it without model= and call check_model(model, allow_other_model=True)"
            )


@dataclass(eq=False)
class Readout:
    """What the monitoring hooks read in the most recent forward: hook_z of each hooked layer, at the last
    position (``[batch, head, d_head]``) or at every position with ``all_positions``. Reading stops while
    ``enabled`` is off."""

    steerer: Steerer
    all_positions: bool = True
    enabled: bool = True
    values: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @property
    def p_true(self) -> Float[Tensor, "*batch_pos"]:
        """Mean probe probability of "true" over the K heads, per row (and position)."""
        if not self.values:
            raise RuntimeError("the readout is empty: run a forward inside the monitoring block first")
        return self.steerer.p_true(self.steerer.head_values(self.values))


@dataclass(repr=False)
class Steerer:
    """K heads with unit directions, scales sigma, probe weights/biases and the full val-accuracy grid.

    ``fit_report``, set by fitting, holds every head's fitted probes (for plots and analysis); it is not saved.
    Example::

        steerer = fit_steerer(model, records, split, k=24)  # or Steerer.load("runs/steerer", model=model)
        with steerer.steering(model, alpha=15, positions="generated"):
            model.generate("Q: Can pigs fly?\\nA:", max_new_tokens=20)
        steerer.save("runs/steerer", overwrite=True)
    """

    heads: Int[Tensor, "k 2"]
    directions: Float[Tensor, "k d_head"]
    sigmas: Float[Tensor, " k"]
    probe_weights: Float[Tensor, "k d_head"]
    probe_bias: Float[Tensor, " k"]
    val_accuracy: Float[Tensor, "layer head"]
    meta: SteererMeta
    fit_report: HeadProbes | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        validate(self.tensors(), self.meta)
        self._by_layer = HeadsByLayer(self.heads)

    def __repr__(self) -> str:
        return _describe(self)

    def to_frame(self) -> pd.DataFrame:
        """One row per head of the model: accuracies (from ``fit_report`` when present, else the saved
        validation grid), ``selected``, ``rank`` (1 = best) and ``sigma`` of the K steered heads."""
        return heads_table(self.val_accuracy, self.heads, self.sigmas, self.fit_report)

    @property
    def k(self) -> int:
        """Number of steered heads."""
        return int(self.heads.shape[0])

    @property
    def layers(self) -> list[int]:
        """Layers that hold at least one of the K heads, ascending."""
        return list(self._by_layer.index)

    @property
    def delta(self) -> Float[Tensor, "k d_head"]:
        """The per-head steering vector for unit scale: ``sigma_k * v_k``."""
        return self.sigmas[:, None] * self.directions

    def tensors(self) -> dict[str, Tensor]:
        """The tensors as saved."""
        names = ("heads", *STEERING_TENSORS, *PROBE_TENSORS)
        return {name: getattr(self, name) for name in names}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Steerer:
        """A copy on ``device`` whose steering vectors are in ``dtype`` (the probes stay float32)."""
        moved = {name: tensor.to(device) for name, tensor in self.tensors().items()}
        if dtype is not None:
            moved.update({name: moved[name].to(dtype) for name in STEERING_TENSORS})
        return replace(self, **moved)

    def p_true(self, z: Float[Tensor, "*batch k d_head"]) -> Float[Tensor, "*batch"]:
        """Mean probe probability of "true" over the K heads, from their hook_z values."""
        # The probes run in their own (float32) precision on the activations' device: K x d_head values.
        weights, bias = self.probe_weights.to(z.device), self.probe_bias.to(z.device)
        logits = torch.einsum("...kd,kd->...k", z.to(weights.dtype), weights)
        return torch.sigmoid(logits + bias).mean(-1)

    def p_true_from_cache(self, cache: ActivationCache) -> Float[Tensor, "batch pos"]:
        """``p_true`` at every position from a TransformerLens cache that holds the K heads' hook_z."""
        return self.p_true(self.head_values({layer: cache[hook_z_name(layer)] for layer in self.layers}))

    def head_values(self, z_by_layer: dict[int, Tensor]) -> Float[Tensor, "*batch k d_head"]:
        """Gather the K heads' vectors from per-layer hook_z tensors ``[..., head, d_head]``."""
        return self._by_layer.gather(z_by_layer)

    def check_model(self, model: TransformerBridge, allow_other_model: bool = False) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` is the one fitted on (:meth:`SteererMeta.check_model`)."""
        self.meta.check_model(model, allow_other_model)

    def steering_hooks(self, scale: SteeringScale) -> Hooks:
        """Hooks on the K heads' hook_z adding ``scale * sigma_k * v_k`` (nothing while the scale is None)."""
        delta = self.delta

        def make(head_idx: Tensor, k_idx: Tensor):
            layer_delta = delta[k_idx]

            def hook(z: Float[Tensor, "batch pos head d_head"], hook: Any) -> Tensor | None:
                value = scale.fitted_to(z, trailing=2)
                if value is None:
                    return None
                z = z.clone()
                z[:, :, head_idx.to(z.device)] += value * layer_delta.to(z.device, z.dtype)
                return z

            return hook

        return [(hook_z_name(layer), make(h, k)) for layer, (h, k) in self._by_layer.index.items()]

    def monitor_hooks(self, readout: Readout) -> Hooks:
        """Hooks that record the K heads' layers' hook_z into ``readout``; they never change activations."""

        def make(layer: int):
            def hook(z: Float[Tensor, "batch pos head d_head"], hook: Any) -> None:
                if readout.enabled:
                    readout.values[layer] = (z if readout.all_positions else z[:, -1]).detach()

            return hook

        return [(hook_z_name(layer), make(layer)) for layer in self._by_layer.index]

    @contextmanager
    def attach(
        self, model: TransformerBridge, scale: SteeringScale | None = None, readout: Readout | None = None
    ) -> Iterator[None]:
        """Steer at ``scale`` and read into ``readout`` (before steering) during the block; hooks always go."""
        readers = self.monitor_hooks(readout) if readout is not None else []
        with intervening(model, self, scale if scale is not None else SteeringScale(), readers):
            yield

    @contextmanager
    def steering(
        self, model: TransformerBridge, alpha: float, strength: float = 1.0, positions: Positions = None
    ) -> Iterator[None]:
        """Add ``alpha * strength * sigma_k * v_k`` to the K heads in every forward in the block
        (``model.generate`` included), at every position (``positions=None``), only where new tokens are
        chosen (``"generated"``: from the last prompt position on, the prompt being the block's first forward),
        or at a slice of absolute positions (counted across a KV cache's forwards, so cached and uncached
        generation steer the same tokens)::

            with steerer.steering(model, alpha=15, positions="generated"):
                text = model.generate("Q: Can pigs fly?\\nA:", max_new_tokens=20, do_sample=False)
        """
        with steering_window(model, alpha * strength, positions) as scale, self.attach(model, scale):
            yield

    @contextmanager
    def monitoring(self, model: TransformerBridge, all_positions: bool = True) -> Iterator[Readout]:
        """Record the K heads during the block; ``readout.p_true`` is ``[batch, pos]`` for the last forward
        (``[batch]`` without ``all_positions``). Hooks run in the order installed, so inside a
        :meth:`steering` block this reads the steered values; :meth:`attach` reads before it steers."""
        readout = Readout(self, all_positions=all_positions)
        with self.attach(model, readout=readout):
            yield readout

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the folder atomically (float32 safetensors + JSON); ``overwrite`` replaces only a Steerer's."""
        target = check_save_target(directory, overwrite)
        tensors = {k: v.contiguous() for k, v in self.to("cpu", torch.float32).tensors().items()}
        return replace_dir(lambda folder: write_folder(folder, tensors, self.meta), target)

    @classmethod
    def load(cls, directory: str | os.PathLike, model: TransformerBridge | None = None) -> Steerer:
        """Read a Steerer folder, checking files, types, version, shapes, dtypes and values (and ``model``)."""
        meta, tensors = read_folder(recover(Path(directory), SteererMeta), SteererMeta)
        steerer = cls(meta=meta, **tensors)
        if model is not None:
            steerer.check_model(model)
        return steerer


def _describe(steerer: Steerer) -> str:
    shown = ", ".join(f"L{layer}H{head}" for layer, head in steerer.heads[:6].tolist())
    more = f", ... {steerer.k - 6} more" if steerer.k > 6 else ""
    selected = steerer.val_accuracy[steerer.heads[:, 0], steerer.heads[:, 1]]
    return (
        f"Steerer(model={steerer.meta.model_name!r}, k={steerer.k}, direction={steerer.meta.direction!r}, "
        f"heads=[{shown}{more}], val_accuracy={float(selected.min()):.3f}-{float(selected.max()):.3f})"
    )


def check_save_target(
    directory: str | os.PathLike, overwrite: bool = False, knob: str = "overwrite=True"
) -> Path:
    """The folder :meth:`Steerer.save` writes, once an interrupted save there is recovered; an ``OSError``
    naming the folder and why (and ``knob``, the option that allows replacing) when it may not write there."""
    target = recover(Path(directory), SteererMeta)
    check_target(target, overwrite, knob)
    return target

"""The :class:`Steerer`: the K anchored heads with their probes, steering directions and scales.

A Steerer is everything FASB needs at generation time, as tensors: ``p_true`` is one einsum over the K
heads (no sklearn). Reading and writing are separate hooks: :meth:`Steerer.monitor_hooks` record hook_z of the
K heads' layers into a :class:`Readout`, :meth:`Steerer.steering_hooks` add ``scale * sigma_k * v_k`` to the K
heads (the :class:`~fasb_tl.intervention.Intervention` protocol). :meth:`Steerer.steering` and
:meth:`Steerer.monitoring` wrap them as context managers for your own forwards. A Steerer is saved as
``steerer.safetensors`` + ``steerer.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fasb_tl._io import replace_dir
from fasb_tl._version import __version__
from fasb_tl.activations import HeadsByLayer, hook_z_name
from fasb_tl.directions import DIRECTION_KINDS
from fasb_tl.intervention import Hooks, ModelMismatchError, SteeringScale, intervening
from fasb_tl.models import model_name, weights_fingerprint

if TYPE_CHECKING:
    from transformer_lens import ActivationCache
    from transformer_lens.model_bridge import TransformerBridge

    from fasb_tl.probes import HeadProbes

__all__ = ["META_FILE", "TENSOR_FILE", "ModelMismatchError", "Readout", "Steerer", "SteererFormatError"]

FORMAT_VERSION = 1
TENSOR_FILE = "steerer.safetensors"
META_FILE = "steerer.json"
# The probes decide the triggers and stay float32 whatever dtype the steering vectors are moved to.
PROBE_TENSORS = ("probe_weights", "probe_bias", "val_accuracy")
STEERING_TENSORS = ("directions", "sigmas")


class SteererFormatError(ValueError):
    """A Steerer folder that is not a valid, safe fasb_tl artifact."""


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
        elif origin not in accepted and origin != (its := (name, origin[1] and weights_fingerprint(model))):
            raise ModelMismatchError(
                f"Steerer fitted on (model, weights fingerprint) {origin}, but the model is {its}; to use it "
                "anyway, load it without model= and call check_model(model, allow_other_model=True)"
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
        _validate(self.tensors(), self.meta)
        self._by_layer = HeadsByLayer(self.heads)

    def __repr__(self) -> str:
        shown = ", ".join(f"L{layer}H{head}" for layer, head in self.heads[:6].tolist())
        more = f", ... {self.k - 6} more" if self.k > 6 else ""
        selected = self.val_accuracy[self.heads[:, 0], self.heads[:, 1]]
        return (
            f"Steerer(model={self.meta.model_name!r}, k={self.k}, direction={self.meta.direction!r}, "
            f"heads=[{shown}{more}], val_accuracy={float(selected.min()):.3f}-{float(selected.max()):.3f})"
        )

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
    def steering(self, model: TransformerBridge, alpha: float, strength: float = 1.0) -> Iterator[None]:
        """Add ``alpha * strength * sigma_k * v_k`` to the K heads at every position of every forward in the
        block (``model.generate`` included)::

            with steerer.steering(model, alpha=15):
                text = model.generate("Q: Can pigs fly?\\nA:", max_new_tokens=20)
        """
        with self.attach(model, SteeringScale(alpha * strength)):
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
        """Write the Steerer folder atomically (float32 safetensors + JSON; nothing is pickled)."""
        target = Path(directory)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        tensors = {k: v.contiguous() for k, v in self.to("cpu", torch.float32).tensors().items()}
        return replace_dir(lambda folder: _write_folder(folder, tensors, self.meta), target)

    @classmethod
    def load(cls, directory: str | os.PathLike, model: TransformerBridge | None = None) -> Steerer:
        """Read a Steerer folder, checking version, shapes, dtypes and finiteness (and ``model``, if given)."""
        meta, tensors = _read_folder(Path(directory))
        steerer = cls(meta=meta, **tensors)
        if model is not None:
            steerer.check_model(model)
        return steerer


def _write_folder(folder: Path, tensors: dict[str, Tensor], meta: SteererMeta) -> None:
    save_file(tensors, str(folder / TENSOR_FILE))
    (folder / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n", encoding="utf-8")


def _read_folder(folder: Path) -> tuple[SteererMeta, dict[str, Tensor]]:
    meta_path, tensor_path = folder / META_FILE, folder / TENSOR_FILE
    for path in (meta_path, tensor_path):
        if not path.is_file():
            raise SteererFormatError(f"{folder} is not a Steerer folder: {path.name} is missing")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SteererFormatError(f"{meta_path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        version = raw.get("format_version") if isinstance(raw, dict) else None
        raise SteererFormatError(
            f"{meta_path}: format_version {version!r}, this library reads {FORMAT_VERSION}"
        )
    known = set(SteererMeta.__dataclass_fields__)
    if set(raw) - known:
        raise SteererFormatError(f"{meta_path}: unknown metadata field(s) {sorted(set(raw) - known)}")
    try:
        meta = SteererMeta(**raw)
        tensors = load_file(str(tensor_path))
    except (TypeError, SafetensorError, OSError) as err:
        raise SteererFormatError(f"{folder}: cannot read the Steerer safely ({err})") from err
    expected = {"heads", *STEERING_TENSORS, *PROBE_TENSORS}
    if set(tensors) != expected:
        raise SteererFormatError(f"{tensor_path}: tensors {sorted(tensors)}, expected {sorted(expected)}")
    for name in STEERING_TENSORS:
        if tensors[name].dtype != torch.float32:
            raise SteererFormatError(
                f"tensor {name!r} has dtype {tensors[name].dtype}, expected torch.float32"
            )
    return meta, tensors


def _validate(tensors: dict[str, Tensor], meta: SteererMeta) -> None:
    k = tensors["heads"].shape[0] if tensors["heads"].ndim == 2 else -1
    shapes = {
        "heads": (k, 2),
        "directions": (k, meta.d_head),
        "sigmas": (k,),
        "probe_weights": (k, meta.d_head),
        "probe_bias": (k,),
        "val_accuracy": (meta.n_layers, meta.n_heads),
    }
    if k < 1:
        raise SteererFormatError(
            f"heads must be a non-empty [k, 2] tensor, got shape {tuple(tensors['heads'].shape)}"
        )
    steering_dtype = tensors["directions"].dtype
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise SteererFormatError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
        wanted = (
            torch.int64 if name == "heads" else torch.float32 if name in PROBE_TENSORS else steering_dtype
        )
        if tensor.dtype != wanted or (name in STEERING_TENSORS and not wanted.is_floating_point):
            raise SteererFormatError(f"tensor {name!r} has dtype {tensor.dtype}, expected {wanted}")
        if name != "heads" and not torch.isfinite(tensor).all():
            raise SteererFormatError(f"tensor {name!r} contains NaN or infinite values")
    heads = tensors["heads"]
    if (
        (heads[:, 0] < 0).any()
        or (heads[:, 0] >= meta.n_layers).any()
        or (heads[:, 1] < 0).any()
        or (heads[:, 1] >= meta.n_heads).any()
    ):
        raise SteererFormatError(
            f"heads lie outside a model of {meta.n_layers} layers x {meta.n_heads} heads"
        )
    if len({tuple(h) for h in heads.tolist()}) != k:
        raise SteererFormatError("heads lists a (layer, head) twice")
    if meta.direction.removeprefix("reversed-") not in DIRECTION_KINDS:
        raise SteererFormatError(
            f"direction {meta.direction!r} is not one of {DIRECTION_KINDS} (or 'reversed-' + one of them)"
        )

"""The :class:`Steerer`: the K anchored heads with their probes, steering directions and scales.

A Steerer is everything FASB needs at generation time, as tensors: ``p_true`` is one einsum over the K
heads (no sklearn), and :meth:`Steerer.hooks` gives hook functions that read hook_z for monitoring and add
``scale * sigma_k * v_k`` to the K heads. It is saved as ``steerer.safetensors`` + ``steerer.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fasb_tl._io import replace_dir
from fasb_tl._version import __version__
from fasb_tl.activations import collect_head_activations_at, hook_z_name, tokenize_prompts
from fasb_tl.data.prompts import ProbeFormat, probe_bank, tuning_bank
from fasb_tl.data.records import QARecord
from fasb_tl.data.splits import Split
from fasb_tl.models import model_name
from fasb_tl.probes import Backend, HeadProbes, ProbeError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

DirectionKind = Literal["mass_mean", "probe", "random"]
DIRECTION_KINDS = ("mass_mean", "probe", "random")
FORMAT_VERSION = 1
TENSOR_FILE = "steerer.safetensors"
META_FILE = "steerer.json"


class SteererFormatError(ValueError):
    """A Steerer folder that is not a valid, safe fasb_tl artifact."""


class ModelMismatchError(ValueError):
    """A Steerer applied to a model of another shape."""


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


@dataclass
class Steerer:
    """K heads with unit directions, scales sigma, probe weights/biases and the full val-accuracy grid."""

    heads: Int[Tensor, "k 2"]
    directions: Float[Tensor, "k d_head"]
    sigmas: Float[Tensor, " k"]
    probe_weights: Float[Tensor, "k d_head"]
    probe_bias: Float[Tensor, " k"]
    val_accuracy: Float[Tensor, "layer head"]
    meta: SteererMeta

    def __post_init__(self) -> None:
        _validate(self.tensors(), self.meta)
        self._layer_index = {
            layer: (
                self.heads[self.heads[:, 0] == layer, 1],
                torch.nonzero(self.heads[:, 0] == layer).flatten(),
            )
            for layer in sorted(set(self.heads[:, 0].tolist()))
        }

    @property
    def k(self) -> int:
        """Number of steered heads."""
        return int(self.heads.shape[0])

    @property
    def layers(self) -> list[int]:
        """Layers that hold at least one of the K heads, ascending."""
        return list(self._layer_index)

    @property
    def delta(self) -> Float[Tensor, "k d_head"]:
        """The per-head steering vector for unit scale: ``sigma_k * v_k``."""
        return self.sigmas[:, None] * self.directions

    def tensors(self) -> dict[str, Tensor]:
        """The tensors as saved."""
        return {
            "heads": self.heads,
            "directions": self.directions,
            "sigmas": self.sigmas,
            "probe_weights": self.probe_weights,
            "probe_bias": self.probe_bias,
            "val_accuracy": self.val_accuracy,
        }

    def p_true(self, z: Float[Tensor, "*batch k d_head"]) -> Float[Tensor, "*batch"]:
        """Mean probe probability of "true" over the K heads, from their hook_z values."""
        # The probes run in their own (float32) precision on the activations' device: K x d_head values.
        weights, bias = self.probe_weights.to(z.device), self.probe_bias.to(z.device)
        logits = torch.einsum("...kd,kd->...k", z.to(weights.dtype), weights)
        return torch.sigmoid(logits + bias).mean(-1)

    def head_values(self, z_by_layer: dict[int, Tensor]) -> Float[Tensor, "*batch k d_head"]:
        """Gather the K heads' vectors from per-layer hook_z tensors ``[..., head, d_head]``."""
        parts: list[Tensor | None] = [None] * self.k
        # Under a multi-GPU device_map the layers' values live on different devices; meet on the first.
        device = z_by_layer[min(self._layer_index)].device
        for layer, (head_idx, k_idx) in self._layer_index.items():
            values = z_by_layer[layer][..., head_idx.to(z_by_layer[layer].device), :].to(device)
            for j, k in enumerate(k_idx.tolist()):
                parts[k] = values[..., j, :]
        return torch.stack(parts, dim=-2)  # type: ignore[arg-type]

    def check_model(self, model: TransformerBridge) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` has this Steerer's layer/head/d_head shape."""
        cfg = model.cfg
        ours = (self.meta.n_layers, self.meta.n_heads, self.meta.d_head)
        theirs = (int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head))
        if ours != theirs:
            raise ModelMismatchError(
                f"Steerer fitted on {self.meta.model_name!r} with (n_layers, n_heads, d_head) = {ours}, "
                f"but the model {model_name(model)!r} has {theirs}"
            )

    def hooks(self, state: HookState) -> list[tuple[str, Any]]:
        """Forward hooks on the K heads' layers: capture ``z[:, -1]`` and add ``state.scale * delta``."""
        delta = self.delta

        def make(layer: int, head_idx: Tensor, k_idx: Tensor):
            layer_delta = delta[k_idx]

            def hook(z: Tensor, hook: Any) -> Tensor:
                if state.capture:
                    state.captured[layer] = (z if state.all_positions else z[:, -1]).detach()
                if state.scale is not None:
                    scale = state.scale.to(z.dtype).to(z.device)
                    addition = scale[:, :, None, None] * layer_delta.to(z.dtype).to(z.device)
                    z = z.clone()
                    z[:, :, head_idx.to(z.device)] += addition
                return z

            return hook

        return [(hook_z_name(layer), make(layer, h, k)) for layer, (h, k) in self._layer_index.items()]

    @contextmanager
    def attach(self, model: TransformerBridge, state: HookState) -> Iterator[HookState]:
        """Install :meth:`hooks` on ``model`` for the duration of the block; removed on every exit path."""
        self.check_model(model)
        with model.hooks(fwd_hooks=self.hooks(state)):
            yield state

    def captured_p_true(self, state: HookState) -> Tensor:
        """``p_true`` from the hook_z captured in the most recent forward (``[batch]`` or ``[batch, pos]``)."""
        return self.p_true(self.head_values(state.captured))

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the Steerer folder atomically (safetensors + JSON; nothing is pickled)."""
        target = Path(directory)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")

        def build(folder: Path) -> None:
            save_file({k: v.contiguous() for k, v in self.tensors().items()}, str(folder / TENSOR_FILE))
            (folder / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2) + "\n", encoding="utf-8")

        return replace_dir(build, target)

    @classmethod
    def load(cls, directory: str | os.PathLike, model: TransformerBridge | None = None) -> Steerer:
        """Read a Steerer folder, checking version, shapes, dtypes and finiteness (and ``model``, if given)."""
        folder = Path(directory)
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
        expected = {"heads", "directions", "sigmas", "probe_weights", "probe_bias", "val_accuracy"}
        if set(tensors) != expected:
            raise SteererFormatError(f"{tensor_path}: tensors {sorted(tensors)}, expected {sorted(expected)}")
        steerer = cls(meta=meta, **tensors)
        if model is not None:
            steerer.check_model(model)
        return steerer


@dataclass
class HookState:
    """Mutable settings read by :meth:`Steerer.hooks` on every forward.

    ``scale`` is ``alpha * strength`` per row and input position (``[batch, pos]`` or ``[batch, 1]``), or
    ``None`` for no steering. ``captured`` receives each hooked layer's hook_z when ``capture`` is on: the last
    position ``[batch, head, d_head]``, or every position ``[batch, pos, head, d_head]`` with ``all_positions``.
    """

    scale: Float[Tensor, "batch pos"] | None = None
    capture: bool = True
    all_positions: bool = False
    captured: dict[int, Tensor] = field(default_factory=dict)


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
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise SteererFormatError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
        wanted = torch.int64 if name == "heads" else torch.float32
        if tensor.dtype != wanted:
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


def _unit(vectors: Float[Tensor, "k d"]) -> Float[Tensor, "k d"]:
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
    """Unit steering directions for the K heads: mass-mean shift, probe weights, or random (a control)."""
    if kind == "mass_mean":
        labels = torch.as_tensor(labels)
        true_mean = activations[labels == 1].mean(0)
        false_mean = activations[labels == 0].mean(0)
        return _unit(true_mean - false_mean)
    if kind == "probe":
        return _unit(probe_weights.clone())
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        return _unit(torch.randn(probe_weights.shape, generator=generator))
    raise ProbeError(f"unknown direction kind {kind!r}: expected one of {DIRECTION_KINDS}")


ControlKind = Literal["reversed", "random"]
CONTROLS = ("reversed", "random")


def control_steerer(steerer: Steerer, kind: ControlKind, seed: int = 0) -> Steerer:
    """The same heads, probes (so the same gating) and per-head sigmas, steering along a control direction:
    the reversed direction, or a seeded random unit direction per head.

    A method that gains as much with a control as with its real direction is not steering towards truth
    (the change comes from disturbing the heads, not from the direction).
    """
    if kind == "reversed":
        directions, label = -steerer.directions, f"reversed-{steerer.meta.direction}"
    elif kind == "random":
        generator = torch.Generator().manual_seed(seed)
        directions, label = _unit(torch.randn(steerer.directions.shape, generator=generator)), "random"
    else:
        raise ProbeError(f"unknown control {kind!r}: expected one of {CONTROLS}")
    return Steerer(
        heads=steerer.heads.clone(),
        directions=directions.to(steerer.directions.dtype),
        sigmas=steerer.sigmas.clone(),
        probe_weights=steerer.probe_weights.clone(),
        probe_bias=steerer.probe_bias.clone(),
        val_accuracy=steerer.val_accuracy.clone(),
        meta=replace(steerer.meta, direction=label),
    )


def projection_std(
    activations: Float[Tensor, "n k d_head"], directions: Float[Tensor, "k d_head"]
) -> Float[Tensor, " k"]:
    """Population std of the activations projected on each unit direction (the reference's ``np.std``)."""
    projections = torch.einsum("nkd,kd->nk", activations.to(torch.float64), directions.to(torch.float64))
    return projections.std(0, correction=0).to(torch.float32)


def steerer_from_activations(
    train_acts: Float[Tensor, "n layer head d_head"],
    train_labels: Int[Tensor, " n"],
    val_acts: Float[Tensor, "m layer head d_head"],
    val_labels: Int[Tensor, " m"],
    tuning_acts: Float[Tensor, "t layer head d_head"],
    meta: SteererMeta,
    *,
    k: int = 24,
    backend: Backend = "torch",
    seed: int = 42,
    progress: bool = True,
) -> tuple[Steerer, HeadProbes]:
    """Probes on train, top-K heads by val accuracy, ``meta.direction`` directions from train + val, sigmas
    from the label-free tuning activations. Returns the Steerer and the fitted probes."""
    if meta.direction not in DIRECTION_KINDS:
        raise ProbeError(f"unknown direction kind {meta.direction!r}: expected one of {DIRECTION_KINDS}")
    n_heads_total = meta.n_layers * meta.n_heads
    if not 1 <= k <= n_heads_total:
        raise ProbeError(f"k must be between 1 and n_layers * n_heads = {n_heads_total}, got {k}")
    train_labels, val_labels = torch.as_tensor(train_labels), torch.as_tensor(val_labels)
    probes = HeadProbes(backend=backend, random_state=seed).fit(
        train_acts, train_labels, val_acts, val_labels, progress
    )
    heads = probes.top_heads(k)
    layer, head = heads[:, 0], heads[:, 1]
    acts = torch.cat([train_acts[:, layer, head], val_acts[:, layer, head]])
    weights = probes.coef_[layer, head]
    directions = head_directions(
        meta.direction, acts, torch.cat([train_labels, val_labels]), weights, seed=seed
    )
    steerer = Steerer(
        heads=heads,
        directions=directions.to(torch.float32),
        sigmas=projection_std(tuning_acts[:, layer, head], directions),
        probe_weights=weights.clone(),
        probe_bias=probes.intercept_[layer, head].clone(),
        val_accuracy=probes.val_accuracy_.clone(),
        meta=meta,
    )
    return steerer, probes


def model_meta(model: TransformerBridge, direction: DirectionKind, **provenance: Any) -> SteererMeta:
    """Steerer metadata for ``model`` (name and shape) plus provenance fields (dataset, seed, fold, sizes)."""
    cfg = model.cfg
    return SteererMeta(
        model_name=model_name(model),
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        direction=direction,
        **provenance,
    )


def _bank_activations(
    model: TransformerBridge,
    probe_prompts: list[str],
    tuning_prompts: list[str],
    batch_size: int,
    progress: bool,
) -> tuple[Float[Tensor, "p layer head d_head"], Float[Tensor, "t layer head d_head"]]:
    """hook_z at the last token of every probe and every tuning prompt, in one extraction.

    A tuning prompt ``Q: {q} A: {a} Q: {other}`` begins with the probe prompt ``Q: {q} A: {a}`` of the same
    answer; under causal attention hook_z at the probe prompt's last token is the same inside the longer
    prompt, so that forward serves both banks. Probe prompts that no tuning prompt begins with token for
    token (another probe format, a merge across the boundary, an answer outside the tuning records) get a
    forward of their own.
    """
    probe_ids = tokenize_prompts(model, probe_prompts)
    tuning_ids = tokenize_prompts(model, tuning_prompts)
    waiting = {text: j for j, text in reversed(list(enumerate(probe_prompts)))}
    host: dict[int, int] = {}
    for i, text in enumerate(tuning_prompts):
        cut = text.find(" Q: ")
        while cut > 0:
            j = waiting.get(text[:cut])
            if j is not None and tuning_ids[i][: len(probe_ids[j])] == probe_ids[j]:
                host[j] = i
                del waiting[text[:cut]]
                break
            cut = text.find(" Q: ", cut + 1)
    hosted_by = {i: j for j, i in host.items()}
    alone = [j for j in range(len(probe_prompts)) if j not in host]
    positions = [
        [-1, len(probe_ids[hosted_by[i]]) - 1] if i in hosted_by else [-1] for i in range(len(tuning_ids))
    ]
    pieces = collect_head_activations_at(
        model,
        tuning_ids + [probe_ids[j] for j in alone],
        positions + [[-1]] * len(alone),
        batch_size=batch_size,
        progress=progress,
    )
    tuning_acts = torch.stack([piece[0] for piece in pieces[: len(tuning_ids)]])
    probe_rows: list[Tensor | None] = [None] * len(probe_prompts)
    for j, i in host.items():
        probe_rows[j] = pieces[i][1]
    for j, piece in zip(alone, pieces[len(tuning_ids) :]):
        probe_rows[j] = piece[0]
    return torch.stack(probe_rows), tuning_acts  # type: ignore[arg-type]


def fit_steerer(
    model: TransformerBridge,
    records: list[QARecord],
    split: Split,
    *,
    k: int = 24,
    direction: DirectionKind = "mass_mean",
    backend: Backend = "torch",
    tuning_records: list[QARecord] | None = None,
    seed: int = 42,
    dataset: str = "unknown",
    fold: int | None = None,
    probe_format: ProbeFormat = "qa",
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[Steerer, HeadProbes]:
    """Fit a Steerer in one call: probes on ``split.train``, top-K heads by ``split.val`` accuracy, directions
    from train + val, sigmas from the label-free tuning bank (all ``records`` unless ``tuning_records``).
    ``probe_format="generation"`` builds the probe bank in the generation prompt format (see
    :func:`~fasb_tl.data.prompts.probe_bank`) instead of the paper's ``Q: A:``.

    Returns the Steerer and the fitted :class:`HeadProbes` (for plots and analysis).
    """
    if direction not in DIRECTION_KINDS:
        raise ProbeError(f"unknown direction kind {direction!r}: expected one of {DIRECTION_KINDS}")
    n_heads_total = int(model.cfg.n_layers) * int(model.cfg.n_heads)
    if not 1 <= k <= n_heads_total:
        raise ProbeError(f"k must be between 1 and n_layers * n_heads = {n_heads_total}, got {k}")
    train = probe_bank([records[i] for i in split.train], probe_format)
    val = probe_bank([records[i] for i in split.val], probe_format)
    tuning_prompts = tuning_bank(tuning_records if tuning_records is not None else records, seed=seed)
    probe_acts, tuning_acts = _bank_activations(
        model, train.prompts + val.prompts, tuning_prompts, batch_size, progress
    )
    acts = torch.cat([probe_acts, tuning_acts])
    n_train, n_probe = len(train.prompts), len(train.prompts) + len(val.prompts)
    meta = model_meta(
        model,
        direction,
        dataset=dataset,
        split_seed=seed,
        fold=fold,
        n_train=len(split.train),
        n_val=len(split.val),
    )
    return steerer_from_activations(
        acts[:n_train],
        train.labels,
        acts[n_train:n_probe],
        val.labels,
        acts[n_probe:],
        meta,
        k=k,
        backend=backend,
        seed=seed,
        progress=progress,
    )

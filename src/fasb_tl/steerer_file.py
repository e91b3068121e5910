"""The Steerer folder on disk: its two files, the checks a folder passes before it is read or replaced, and the
checks every Steerer passes, loaded or constructed (:func:`validate`).

Reading (:func:`read_folder`) refuses with :class:`SteererFormatError` anything but two regular files (a
symbolic link could point outside the folder; a folder or FIFO in their place is named as such), a
``steerer.json`` over :data:`MAX_META_BYTES` or a ``steerer.safetensors`` larger than the metadata's shapes
allow (both checked before reading), JSON that does not parse (too deep, an integer over Python's digit
limit, a repeated key, not an object), a ``format_version`` other than 1, unknown fields, and fields of the
wrong type. Types are checked exactly against the metadata class's annotations: ``true`` is no int, ``2.0``
is no int. Nothing is unpickled.

Where a Steerer may be written, and recovering an interrupted save, is :mod:`fasb_tl.steerer_folder`.
"""

from __future__ import annotations

import json
import os
import stat
import types
import typing
from dataclasses import asdict, fields
from functools import cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from fasb_tl.directions import DIRECTION_KINDS

__all__ = ["FORMAT_VERSION", "META_FILE", "TENSOR_FILE", "SteererFormatError", "read_folder", "validate"]

FORMAT_VERSION = 1
TENSOR_FILE = "steerer.safetensors"
META_FILE = "steerer.json"
# The probes decide the triggers and stay float32 whatever dtype the steering vectors are moved to.
PROBE_TENSORS = ("probe_weights", "probe_bias", "val_accuracy")
STEERING_TENSORS = ("directions", "sigmas")
# A Steerer's JSON is under 2 kB; the cap keeps a crafted file from filling memory before it is refused.
MAX_META_BYTES = 1 << 20
# The safetensors header (six names, dtypes, shapes, offsets) is under 1 kB.
HEADER_SLACK = 1 << 16
# sigma_k is a std of hook_z projections (averages of value vectors: ones to hundreds); 1e6 leaves room for
# any model and keeps alpha * sigma far from overflow (float16 ends at 65504, so 3e38 * alpha is inf anyway).
MAX_SIGMA = 1e6
# |probe weight| and |bias| above 1e6 only come from a crafted file (the probes are L2-regularised).
MAX_PROBE = 1e6
# A direction's norm may differ from 1 by this, or by the dtype's epsilon if larger: a bfloat16 direction is
# off by up to 2**-9 (also once saved as float32), a float8 one by more.
NORM_TOLERANCE = 3e-3
# The least value of integer metadata fields (when not None).
META_MINIMUM = {"n_layers": 1, "n_heads": 1, "d_head": 1, "fold": 0, "n_train": 0, "n_val": 0}


class SteererFormatError(ValueError):
    """A Steerer folder that is not a valid, safe fasb_tl artifact."""


def _kind(mode: int) -> str | None:
    """What a file of ``mode`` is, unless it is a regular file (None)."""
    for test, kind in (
        (stat.S_ISLNK, "a symbolic link (refused: it could point outside the folder)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return kind
    return None


def _read_file(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (no link followed), refused when larger than ``limit``."""
    try:
        kind = _kind(os.lstat(path).st_mode)
    except FileNotFoundError:
        raise SteererFormatError(f"{path.parent} is not a Steerer folder: {path.name} is missing") from None
    except OSError as err:
        raise SteererFormatError(f"cannot read {path}: {err}") from err
    if kind is not None:
        raise SteererFormatError(f"{path} is {kind}, not a regular file")
    flags = (
        os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        descriptor = os.open(path, flags)
    except OSError as err:  # replaced by a link or FIFO since the check
        raise SteererFormatError(f"cannot read {path} as a regular file: {err}") from err
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        size = info.st_size
        if stat.S_ISREG(info.st_mode) and size <= limit:
            data = file.read(limit + 1)
            size = len(data)
    if not stat.S_ISREG(info.st_mode):
        raise SteererFormatError(f"{path} is {_kind(info.st_mode)}, not a regular file")
    if size > limit:
        raise SteererFormatError(
            f"{path} is {size} bytes, more than the {limit} a Steerer of its metadata needs"
        )
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"repeated key {repeated[0]!r}")
    return dict(pairs)


def _parse_meta(path: Path) -> dict[str, Any]:
    """``steerer.json`` as a dict; any parse failure (depth, digit limit, repeated key) is a format error."""
    try:
        raw = json.loads(_read_file(path, MAX_META_BYTES).decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        if isinstance(err, SteererFormatError):
            raise
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise SteererFormatError(f"{path} is not valid JSON: {reason}") from err
    if not isinstance(raw, dict):
        raise SteererFormatError(f"{path} holds a {type(raw).__name__}, expected a JSON object")
    return raw


@cache
def _field_types(meta_class: type) -> dict[str, Any]:
    hints = typing.get_type_hints(meta_class)
    return {f.name: hints[f.name] for f in fields(meta_class)}


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the annotated type ``hint`` exactly (a bool is no int; an int is a float)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return type(value) in (int, float)
    if isinstance(hint, type):
        return type(value) is hint
    return isinstance(origin, type) and isinstance(value, origin)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_meta_values(values: dict[str, Any], meta_class: type) -> None:
    """Raise unless each field of ``values`` has its annotated type in ``meta_class`` (and its minimum)."""
    for name, hint in _field_types(meta_class).items():
        if name not in values:
            continue
        value = values[name]
        if not _matches(value, hint):
            raise SteererFormatError(
                f"metadata field {name!r} is {_shown(value)} ({type(value).__name__}), expected {_type_name(hint)}"
            )
        if name in META_MINIMUM and value is not None and value < META_MINIMUM[name]:
            raise SteererFormatError(
                f"metadata field {name!r} is {value!r}, expected an int >= {META_MINIMUM[name]}"
            )


def _tensor_bytes_limit(meta: Any) -> int:
    """The size of ``steerer.safetensors`` for every head of the model selected, plus the header's slack."""
    per_head = (
        8 * 2 + 4 * (2 * meta.d_head + 2) + 4
    )  # (layer, head), direction and probe, sigma and bias, grid
    return meta.n_layers * meta.n_heads * per_head + HEADER_SLACK


def read_folder(folder: Path, meta_class: type) -> tuple[Any, dict[str, Tensor]]:
    """The metadata (a ``meta_class``) and tensors of the Steerer folder ``folder``, refused as the module
    docstring says; :func:`validate` checks them together when the Steerer is built."""
    meta_path, tensor_path = folder / META_FILE, folder / TENSOR_FILE
    raw = _parse_meta(meta_path)
    version = raw.get("format_version")
    if "format_version" in raw:
        check_meta_values({"format_version": version}, meta_class)
    if version != FORMAT_VERSION:
        raise SteererFormatError(
            f"{meta_path}: format_version {version!r}, this library reads {FORMAT_VERSION}"
        )
    known = set(_field_types(meta_class))
    if set(raw) - known:
        raise SteererFormatError(f"{meta_path}: unknown metadata field(s) {sorted(set(raw) - known)}")
    check_meta_values(raw, meta_class)
    try:
        meta = meta_class(**raw)
    except TypeError as err:
        raise SteererFormatError(f"{meta_path}: {err}") from err
    data = _read_file(tensor_path, _tensor_bytes_limit(meta))
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as err:
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


def write_folder(folder: Path, tensors: dict[str, Tensor], meta: Any) -> None:
    """Write the two files of a Steerer into the (new, empty) ``folder``, with the umask's file mode (safetensors'
    own ``save_file`` makes a 0600 file)."""
    (folder / TENSOR_FILE).write_bytes(save_safetensors(tensors))
    (folder / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n", encoding="utf-8")


def validate(tensors: dict[str, Tensor], meta: Any) -> None:
    """Raise :class:`SteererFormatError` unless the tensors and metadata make a Steerer (see ARCHITECTURE 5)."""
    check_meta_values(asdict(meta), type(meta))
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
    _check_heads(tensors["heads"], meta)
    _check_ranges(tensors)
    if meta.direction.removeprefix("reversed-") not in DIRECTION_KINDS:
        raise SteererFormatError(
            f"direction {meta.direction!r} is not one of {DIRECTION_KINDS} (or 'reversed-' + one of them)"
        )


def _check_heads(heads: Tensor, meta: Any) -> None:
    inside = (heads >= 0) & (heads < torch.tensor([meta.n_layers, meta.n_heads]))
    if not inside.all():
        raise SteererFormatError(
            f"heads lie outside a model of {meta.n_layers} layers x {meta.n_heads} heads"
        )
    if len({tuple(h) for h in heads.tolist()}) != heads.shape[0]:
        raise SteererFormatError("heads lists a (layer, head) twice")


def _check_ranges(tensors: dict[str, Tensor]) -> None:
    """Sigmas in [0, MAX_SIGMA], accuracies in [0, 1], probes within MAX_PROBE, unit directions."""
    limits = {
        "sigmas": (0.0, MAX_SIGMA),
        "val_accuracy": (0.0, 1.0),
        "probe_weights": (-MAX_PROBE, MAX_PROBE),
        "probe_bias": (-MAX_PROBE, MAX_PROBE),
    }
    for name, (low, high) in limits.items():
        values = tensors[name].double()
        if (values < low).any() or (values > high).any():
            raise SteererFormatError(
                f"tensor {name!r} has values in [{values.min():.4g}, {values.max():.4g}], outside [{low:g}, {high:g}]"
            )
    directions = tensors["directions"]
    norms = directions.double().norm(dim=-1)
    tolerance = max(NORM_TOLERANCE, torch.finfo(directions.dtype).eps)
    off = ((norms - 1).abs() > tolerance).nonzero().flatten().tolist()
    if off:
        raise SteererFormatError(
            f"tensor 'directions' must hold unit vectors (norm 1 within {tolerance:g}); "
            f"row {off[0]} has norm {norms[off[0]]:.6g}"
        )

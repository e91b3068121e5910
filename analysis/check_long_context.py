"""The cached, batched decode loop against the no-cache reference loop on a real sliding-window model, with
prompts longer than its window.

    python analysis/check_long_context.py                      # Gemma 3 270M (window 512 on 15 of 18 layers)
    python analysis/check_long_context.py --model smollm2-135m-instruct

Fits a Steerer on the built-in dataset, builds prompts of about 640, 560 and 290 tokens (the TruthfulQA
instruction and primer plus more question/answer pairs), and generates them as one batch under FASB with a
trigger at the first check (threshold above 1) and with a threshold that splits the rows, in both histories,
back_steps 0 and 1; every row must equal the reference loop (``tests/reference_loop.py``, which re-runs the
whole sequence every step and lets Hugging Face apply the window). The unit tests check the same on tiny
random models with a window of 8; this script checks the real model, which is too slow for ``make test``.
Writes a JSON summary (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from fasb_tl._io import atomic_write_text
from fasb_tl.data import dataset_splits, generation_prefix, load_builtin
from fasb_tl.fitting import fit_steerer
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.models import encode, load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_loop import reference_generate

TARGET_LENGTHS = (640, 560, 0)


def long_prompt(model, records, question: str, target: int) -> str:
    """The generation prompt for ``question`` with question/answer pairs added after the primer until it has at
    least ``target`` tokens."""
    pairs: list[str] = []
    for record in records:
        prompt = generation_prefix() + "".join(pairs) + f"\n\nQ: {question}"
        if len(encode(model, prompt)) >= target:
            return prompt
        pairs.append(f"\n\nQ: {record.question}\nA: {record.best_answer}")
    raise ValueError(f"the records are too few to build a {target}-token prompt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--out", default="results/long_context_check.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = load_model(args.model)
    config = model.original_model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    records = load_builtin()
    steerer = fit_steerer(model, records, dataset_splits("builtin", len(records))[0], k=24, progress=False)
    questions = ["Does cracking your knuckles cause arthritis?", "What happens if you swallow gum?", "Why?"]
    prompts = [
        long_prompt(model, records[10:], q, target)
        for q, target in zip(questions, TARGET_LENGTHS, strict=True)
    ]
    lengths = [len(encode(model, p)) for p in prompts]
    print(f"{args.model}: sliding window {window}; prompt lengths {lengths}", flush=True)
    base = GenerationConfig(method="fasb", alpha=15.0, max_new_tokens=args.max_new_tokens)
    monitor = generate(model, prompts, steerer, dataclasses.replace(base, threshold=0.0), progress=False)
    lows = sorted(min(r.p_true_trace) for r in monitor)
    split = (lows[0] + lows[1]) / 2
    cases = []
    for threshold in (2.0, split):
        for history, back_steps in (("reference", 0), ("persistent", 1), ("reference", 1)):
            config = dataclasses.replace(
                base, threshold=threshold, force_threshold=True, history=history, back_steps=back_steps
            )
            cached = generate(model, prompts, steerer, config, batch_size=len(prompts), progress=False)
            for prompt, length, got in zip(prompts, lengths, cached):
                want = reference_generate(model, encode(model, prompt), steerer, config)
                same = (got.token_ids, got.triggered, got.trigger_step, got.removed_token_ids) == (
                    want.token_ids,
                    want.triggered,
                    want.trigger_step,
                    want.removed_token_ids,
                )
                trace_gap = max(
                    (abs(a - b) for a, b in zip(got.p_true_trace, want.p_true_trace)), default=0.0
                )
                cases.append(
                    {
                        "threshold": round(threshold, 6),
                        "history": history,
                        "back_steps": back_steps,
                        "prompt_tokens": length,
                        "triggered": got.triggered,
                        "equal_to_reference": same,
                        "max_p_true_difference": trace_gap,
                    }
                )
                print(json.dumps(cases[-1]), flush=True)
    summary = {
        "model": args.model,
        "sliding_window": window,
        "prompt_tokens": lengths,
        "max_new_tokens": args.max_new_tokens,
        "all_equal": all(c["equal_to_reference"] for c in cases),
        "cases": cases,
        "seconds": time.perf_counter() - start,
    }
    atomic_write_text(Path(args.out), json.dumps(summary, indent=2) + "\n")
    print(
        f"all equal to the reference: {summary['all_equal']} ({len(cases)} rows, {summary['seconds']:.0f} s)"
    )
    return 0 if summary["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())

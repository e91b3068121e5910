"""``fasb generate``: answers from a saved Steerer to prompts from the command line or a file, each with what
FASB did while writing it (trigger, backtrack, P(true) trace), printed and optionally written as JSON lines.

Everything the user gives (prompts, the Steerer folder, the settings, ``--out``) is checked before the model
loads; the Steerer's model identity is checked once it has (the check ``Steerer.load(model=...)`` runs).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fasb_tl.generation_config import GenerationConfig, GenerationConfigError, GenerationResult

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fasb_tl.steering import Steerer

# The TruthfulQA generation prompt ends with the question; the model's answer ends where it asks the next one.
ANSWER_END = "\nQ:"


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate an answer per prompt (``--num-return-sequences`` per prompt) with the Steerer ``--steerer``."""
    from fasb_tl._io import atomic_write_text
    from fasb_tl.data import generation_prefix, generation_prompt
    from fasb_tl.generation import generate
    from fasb_tl.models import load_model, model_name
    from fasb_tl.prefix import build_prefix_cache

    prompts = [*args.prompts, *(args.prompts_file or [])]
    if not prompts:
        _fail("no prompts: give them as arguments or with --prompts-file")
    config = _config(args)
    out = _out_path(args)
    steerer = _load_steerer(args.steerer)
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    _check_model(steerer, model)
    inputs = prompts if args.raw else [generation_prompt(p) for p in prompts]
    # The instruction and primer every TruthfulQA prompt starts with are computed once, not per batch.
    prefix = None if args.raw else build_prefix_cache(model, generation_prefix())
    results = generate(model, inputs, steerer, config, prefix=prefix, batch_size=args.batch_size)
    n = config.num_return_sequences
    records = [
        _record(prompts[i // n], i % n, result, model.tokenizer, args.raw) for i, result in enumerate(results)
    ]
    for record in records:
        print(_describe(record))
    if out is not None:
        source = {"model": model_name(model), "steerer": str(args.steerer), "config": asdict(config)}
        atomic_write_text(out, "".join(json.dumps({**record, **source}) + "\n" for record in records))
        print(f"Answers: {out}")
    return 0


def _fail(message: str) -> NoReturn:
    raise SystemExit(f"fasb generate: error: {message}")


def _config(args: argparse.Namespace) -> GenerationConfig:
    """The generation settings of the options; a combination they cannot check one by one stops here."""
    if args.num_return_sequences > 1 and not args.sample:
        _fail("argument --num-return-sequences: more than 1 answer per prompt needs --sample")
    try:
        return GenerationConfig(
            method=args.method,
            alpha=args.alpha,
            threshold=args.threshold,
            back_steps=args.back_steps,
            max_new_tokens=args.max_new_tokens,
            history=args.history,
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            num_return_sequences=args.num_return_sequences,
            seed=args.seed,
        )
    except GenerationConfigError as err:
        _fail(str(err))


def _out_path(args: argparse.Namespace) -> Path | None:
    """``--out``, refused now if it exists and ``--overwrite`` is not given (not after the answers)."""
    if args.out is None:
        return None
    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        _fail(f"argument --out: {args.out!r} exists; pass --overwrite to replace it")
    return out


def _load_steerer(folder: str) -> Steerer:
    """The Steerer in ``folder``, its files and values checked before any model is loaded."""
    from fasb_tl.steering import Steerer, SteererFormatError

    try:
        return Steerer.load(Path(folder).expanduser())
    except SteererFormatError as err:
        _fail(f"argument --steerer: {err}")


def _check_model(steerer: Steerer, model) -> None:
    """Refuse a Steerer fitted on another model (shape, name or weights fingerprint)."""
    from fasb_tl.steering import ModelMismatchError

    try:
        steerer.check_model(model)
    except ModelMismatchError as err:
        _fail(f"argument --steerer: {err}")


def _record(
    prompt: str, sequence: int, result: GenerationResult, tokenizer: PreTrainedTokenizerBase, raw: bool
) -> dict:
    """One answer with its FASB trace, as written to ``--out`` (``sequence``: its number among the prompt's
    ``--num-return-sequences``)."""
    from fasb_tl.data import extract_answer
    from fasb_tl.plotting import render_backtrack

    return {
        "prompt": prompt,
        "sequence": sequence,
        "answer": result.text if raw else extract_answer(result.text),
        "backtrack": render_backtrack(result, tokenizer, end=None if raw else ANSWER_END),
        **asdict(result),
        "n_removed": result.n_removed,
    }


def _describe(record: dict) -> str:
    """The printed form of one answer: the prompt, the answer and what FASB did."""
    lines = [f"> {record['prompt']}", f"  answer: {record['answer']}"]
    if record["triggered"]:
        lines.append(
            f"  FASB: triggered at answer token {record['trigger_step']} (P(true) "
            f"{record['p_true_at_trigger']:.3f}), {record['n_removed']} removed: {record['backtrack']}"
        )
    elif record["p_true_trace"]:
        lines.append(f"  FASB: not triggered (lowest P(true) {min(record['p_true_trace']):.3f})")
    return "\n".join(lines)

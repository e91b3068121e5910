"""The options of the ``fasb`` commands: one argument parser per command, built from one table of the
options several commands share. :mod:`fasb_tl.cli` attaches a handler to each command.

Every option has help text, and ``--help`` shows its default (:class:`DefaultsHelpFormatter`)."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fasb_tl.data import DATASETS
from fasb_tl.data.prompts import PROBE_FORMATS
from fasb_tl.directions import DIRECTION_KINDS
from fasb_tl.evaluation.judges import JUDGE_NAMES
from fasb_tl.evaluation.multichoice_data import ALTERNATIVE_TASKS, TASKS
from fasb_tl.evaluation.variants import ALL_CONTROLS, THRESHOLD_MODES
from fasb_tl.generation_config import HISTORIES, METHODS, GenerationConfig
from fasb_tl.methods import ALL_METHODS
from fasb_tl.models import DTYPES
from fasb_tl.probes import BACKENDS, TIE_BREAKS
from fasb_tl.run_config import RunConfig
from fasb_tl.scoring import PROTOCOLS


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """The one place that puts each option's default in ``--help``: ``(default: ...)`` is appended to the help
    text unless the text already says its default in words (``(default: the middle)``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default is not argparse.SUPPRESS and "(default" not in text:
            text += " (default: %(default)s)"
        return text


DATA_DIR_HELP = (
    "folder with one subfolder per dataset (default: $FASB_TL_DATA, else the repository's data/, else the "
    "TruthfulQA copy installed with the package)"
)

# Option checkers: argparse ``type=`` functions, so a bad value stops the command before anything runs, with
# an error that names the option and what it expects.


def number(
    kind: type, low: float | None = None, high: float | None = None, *, above: float | None = None
) -> Callable[[str], float]:
    """One finite ``kind`` (int or float) value, at least ``low`` (or more than ``above``) and at most
    ``high``."""
    bounds = [
        f"{sign} {bound:g}" for sign, bound in ((">=", low), (">", above), ("<=", high)) if bound is not None
    ]
    if high is not None and len(bounds) == 2:
        bounds = [f"in [{low:g}, {high:g}]" if low is not None else f"in ({above:g}, {high:g}]"]
    expected = " ".join(["an integer" if kind is int else "a finite number", *bounds])

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        inside = (low is None or value >= low) and (above is None or value > above)
        inside = inside and (high is None or value <= high)
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def numbers(kind: type, low: float | None = None, high: float | None = None) -> Callable[[str], list]:
    """A comma list of :func:`number` values (``""``: none)."""
    one = number(kind, low, high)
    return lambda text: [one(part.strip()) for part in text.split(",")] if text.strip() else []


def names(choices: Sequence[str], *, empty: bool = False, alone: Sequence[str] = ()) -> Callable[[str], str]:
    """A comma list of ``choices`` (at least one unless ``empty``), or one of ``alone`` by itself; the text is
    kept as given."""
    expected = f"a comma list of {', '.join(choices)}" + "".join(f", or {a}" for a in alone)

    def parse(text: str) -> str:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [part for part in parts if part not in choices]
        if (not parts and not empty) or (unknown and parts not in [[a] for a in alone]):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return text

    return parse


def nonempty(text: str) -> str:
    """Any text but an empty or blank one."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty value, got ''")
    return text


def _check_writable(path: Path, text: str) -> None:
    """Refuse ``path`` unless its nearest existing folder (itself, or the closest parent) is writable."""
    parent = next(p for p in (path, *path.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        problem = "is a file" if not parent.is_dir() else "is not writable"
        raise argparse.ArgumentTypeError(f"cannot write to {text!r}: {parent} {problem}")


def output_folder(text: str) -> str:
    """A folder that exists and is writable, or that can be created in a writable folder."""
    folder = Path(nonempty(text)).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, expected a folder")
    _check_writable(folder, text)
    return text


def output_file(text: str) -> str:
    """A file path that is not a folder, in a folder that is writable or can be created (whether an existing
    file may be replaced is the command's ``--overwrite``)."""
    path = Path(nonempty(text)).expanduser().absolute()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file")
    _check_writable(path.parent, text)
    return text


def existing_folder(text: str) -> str:
    """A folder that exists."""
    if not Path(nonempty(text)).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"no folder {text!r}")
    return text


def prompts_file(text: str) -> list[str]:
    """The prompts of a UTF-8 file: one per non-blank line, or, for a ``.jsonl`` file, the ``"prompt"`` string
    of each JSON object line (so a prompt may hold line breaks)."""
    path = Path(nonempty(text)).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {err}") from err
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    prompts = (
        [_jsonl_prompt(line, f"{text}:{n}") for n, line in numbered]
        if path.suffix == ".jsonl"
        else [line for _, line in numbered]
    )
    if not prompts:
        raise argparse.ArgumentTypeError(f"{text!r} holds no prompts")
    return prompts


def _jsonl_prompt(line: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{where} is not valid JSON ({err})") from err
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise argparse.ArgumentTypeError(f'{where}: expected an object with a non-empty "prompt" string')
    return prompt


# The options more than one command takes, each spelled once; their defaults are RunConfig's where it has one.
SHARED_OPTIONS: dict[str, dict] = {
    "--model": {
        "type": nonempty,
        "default": RunConfig.model,
        "help": "model name, local HF folder or Hub id",
    },
    "--data-dir": {"default": None, "help": DATA_DIR_HELP},
    "--k": {
        "type": number(int, 1),
        "default": RunConfig.k,
        "help": "number of heads to steer, at most n_layers x n_heads (8 on the tiny test models)",
    },
    "--alpha": {
        "type": number(float, 0),
        "default": RunConfig.alpha,
        "help": "steering strength: alpha x strength x sigma_k x v_k is added to each steered head",
    },
    "--threshold": {
        "type": number(float, 0, 1),
        "default": GenerationConfig.threshold,
        "help": "the probes trigger steering when the mean P(true) of the K heads falls below this",
    },
    "--back-steps": {
        "type": number(int, 0),
        "default": RunConfig.back_steps,
        "help": "answer tokens a trigger removes before steered regeneration",
    },
    "--tie-break": {
        "default": "released",
        "choices": TIE_BREAKS,
        "help": "top-K ties: released (the released code's np.argsort(acc)[::-1][:K]) or lowest (lower layer, "
        "then head)",
    },
    "--max-new-tokens": {
        "type": number(int, 1),
        "default": RunConfig.max_new_tokens,
        "help": "new-token budget of each generated answer",
    },
    "--history": {
        "default": GenerationConfig.history,
        "choices": HISTORIES,
        "help": "reference: steered positions are re-read unsteered (the released code); persistent: steered "
        "keys and values stay in the cache",
    },
}


def add_shared(parser: argparse.ArgumentParser, *flags: str, **changes: dict) -> None:
    """Add the ``flags`` of :data:`SHARED_OPTIONS`; ``changes`` maps an option's name (``back_steps``) to the
    keywords that differ for this command (another default or help)."""
    for flag in flags:
        parser.add_argument(flag, **{**SHARED_OPTIONS[flag], **changes.get(flag[2:].replace("-", "_"), {})})


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    """Where the model goes: one device, an accelerate device map, and the dtype."""
    parser.add_argument(
        "--device",
        default=None,
        help="one device for the whole model (cpu, cuda:0, ...) (default: cpu; under torchrun with CUDA, each "
        "rank's GPU)",
    )
    parser.add_argument(
        "--device-map",
        default=None,
        help="accelerate device map over several GPUs, e.g. auto (not with --device)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=tuple(DTYPES), help="dtype of the model's weights"
    )


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """``fasb fit``: model, dataset and fold, the Steerer's settings, where it goes, and the calibration."""
    add_shared(parser, "--model")
    add_placement_options(parser)
    parser.add_argument(
        "--dataset", default="builtin", choices=DATASETS, help="questions to fit the probes on"
    )
    add_shared(parser, "--data-dir")
    parser.add_argument("--folds", type=int, default=2, help="number of question folds")
    parser.add_argument("--fold", type=int, default=0, help="which fold is held out as the test set")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the training folds' questions kept for choosing the top-K heads",
    )
    parser.add_argument(
        "--seed", type=int, default=RunConfig.seed, help="seed of the split, the probes and the tuning bank"
    )
    add_shared(parser, "--k")
    parser.add_argument(
        "--direction", default="mass_mean", choices=DIRECTION_KINDS, help="how each head's direction is made"
    )
    parser.add_argument("--backend", default="torch", choices=BACKENDS, help="logistic-regression solver")
    add_shared(parser, "--tie-break")
    parser.add_argument(
        "--batch-size", type=number(int, 1), default=16, help="prompts per extraction forward"
    )
    parser.add_argument("--out", type=output_folder, default="runs/steerer", help="Steerer folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing Steerer folder")
    parser.add_argument(
        "--probe-format",
        default="qa",
        choices=PROBE_FORMATS,
        help="probe bank as the paper's 'Q: A:' prompts or in the generation prompt format",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="also calibrate the threshold on the validation answers in the generation format",
    )
    add_shared(parser, "--back-steps", back_steps={"help": "back_steps the calibration assumes"})


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    """``fasb demo``: the fields of :class:`~fasb_tl.demo.DemoConfig` it lets one change."""
    add_shared(
        parser, "--model", "--k", "--alpha", "--threshold", "--back-steps", threshold={"default": 0.45}
    )
    parser.add_argument(
        "--n-show", type=number(int, 0), default=4, help="held-out questions to answer side by side"
    )
    parser.add_argument("--out", type=output_folder, default="runs/demo", help="folder for the demo's files")


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """``fasb generate``: a saved Steerer, the prompts, the generation settings and where answers go."""
    parser.add_argument(
        "prompts",
        nargs="*",
        type=nonempty,
        help="questions (or, with --raw, whole prompts) to answer, before those of --prompts-file",
    )
    parser.add_argument(
        "--steerer",
        type=existing_folder,
        required=True,
        help="Steerer folder (from fasb fit) fitted on --model",
    )
    parser.add_argument(
        "--prompts-file",
        type=prompts_file,
        default=None,
        help="UTF-8 file of prompts: one per non-blank line, or for a .jsonl file one JSON object per line "
        'with a "prompt" string',
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="feed each prompt as given, not as a question in the TruthfulQA generation prompt (instruction, "
        "6-shot primer, 'Q: {prompt}'; answers cut at the next 'Q:')",
    )
    add_shared(parser, "--model")
    add_placement_options(parser)
    parser.add_argument("--method", default=GenerationConfig.method, choices=METHODS, help="steering method")
    add_shared(parser, "--alpha", "--threshold", "--back-steps", "--max-new-tokens", "--history")
    parser.add_argument("--sample", action="store_true", help="sample tokens instead of greedy decoding")
    parser.add_argument(
        "--temperature",
        type=number(float, above=0),
        default=GenerationConfig.temperature,
        help="sampling temperature (with --sample)",
    )
    parser.add_argument(
        "--top-k",
        type=number(int, 0),
        default=GenerationConfig.top_k,
        help="sample among the k most likely tokens, 0 for all (with --sample)",
    )
    parser.add_argument(
        "--top-p",
        type=number(float, 0, 1),
        default=GenerationConfig.top_p,
        help="sample from the smallest set of tokens reaching this probability (with --sample)",
    )
    parser.add_argument(
        "--seed",
        type=number(int, 0, 2**63 - 1),
        default=GenerationConfig.seed,
        help="seed of each answer's random stream (with --sample)",
    )
    parser.add_argument(
        "--num-return-sequences",
        type=number(int, 1),
        default=GenerationConfig.num_return_sequences,
        help="answers per prompt (more than 1 needs --sample)",
    )
    parser.add_argument("--batch-size", type=number(int, 1), default=8, help="answers decoded together")
    parser.add_argument(
        "--out",
        type=output_file,
        default=None,
        help="also write one JSON line per answer, with FASB's trace, to this file (default: print only)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def add_plot_options(parser: argparse.ArgumentParser) -> None:
    """``fasb plot``: a result folder and where its figures go."""
    parser.add_argument("folder", type=existing_folder, help="result folder written by fasb eval or sweep")
    parser.add_argument(
        "--out", type=output_folder, default=None, help="folder for the PNG files (default: FOLDER/figures)"
    )


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    """``fasb eval`` (and ``fasb sweep``): model, tasks, methods, steering settings, sizes, judges, controls."""
    add_shared(parser, "--model")
    add_placement_options(parser)
    parser.add_argument(
        "--task",
        type=names(("truthfulqa", *TASKS, *ALTERNATIVE_TASKS), alone=("all",)),
        default="truthfulqa",
        help="truthfulqa, copa, storycloze, nli, mmlu, sst2, winogrande, xnli_en, a comma list, or all",
    )
    parser.add_argument(
        "--methods",
        type=names(ALL_METHODS),
        default=",".join(ALL_METHODS),
        help=f"a comma list of {', '.join(ALL_METHODS)}",
    )
    parser.add_argument(
        "--steerer",
        type=existing_folder,
        default=None,
        help="evaluate this Steerer folder instead of fitting one: a TruthfulQA Steerer of one fold of the "
        "plan's split (only that fold's test questions are run) or one fitted on the --task's pool; its K "
        "and direction replace --k, and every row carries its content hash (default: fit one per fold or task)",
    )
    parser.add_argument(
        "--caa-layer", type=number(int, 0), default=None, help="CAA residual layer (default: the middle)"
    )
    parser.add_argument("--caa-multiplier", type=number(float, 0), default=1.0, help="CAA vector multiplier")
    parser.add_argument(
        "--protocols",
        type=names(PROTOCOLS),
        default="paper,question",
        help="MC protocols for the monitored methods",
    )
    add_shared(parser, "--data-dir", "--k", "--alpha", "--threshold", "--back-steps", "--history")
    parser.add_argument(
        "--iti-history",
        default="persistent",
        choices=HISTORIES,
        help="KV-cache history of the iti generation rows: persistent is ITI's own cached generate, reference "
        "the released FASB loop (--history sets the FASB methods')",
    )
    add_shared(parser, "--max-new-tokens")
    parser.add_argument(
        "--n-mc", type=number(int, 1), default=None, help="TruthfulQA MC questions (default: all 817)"
    )
    parser.add_argument(
        "--n-gen", type=number(int, 1), default=200, help="TruthfulQA generation questions (seeded subset)"
    )
    parser.add_argument(
        "--n-items", type=number(int, 1), default=200, help="evaluation items per multiple-choice task"
    )
    parser.add_argument(
        "--n-pool", type=number(int, 2), default=300, help="probe-pool items per multiple-choice task"
    )
    parser.add_argument(
        "--judges",
        type=names(JUDGE_NAMES),
        default="bleu-proxy,rouge1-proxy,info-proxy",
        help=f"{', '.join(JUDGE_NAMES)}; the allenai judges load on the model's device in --dtype",
    )
    parser.add_argument("--no-generation", action="store_true", help="skip TruthfulQA generation")
    parser.add_argument(
        "--detection",
        action="store_true",
        help="also compare the head probes with a text-only detector on each TruthfulQA test fold",
    )
    parser.add_argument("--no-mc", action="store_true", help="skip TruthfulQA multiple choice")
    parser.add_argument(
        "--controls",
        type=names(ALL_CONTROLS, empty=True),
        default="",
        help="comma-separated controls run beside every steering method: reversed, random (directions), "
        "random_heads (K random heads instead of the top-K, the released code's --use_random_dir)",
    )
    parser.add_argument("--n-random", type=number(int, 1), default=3, help="seeds of each random control")
    add_shared(parser, "--tie-break")
    parser.add_argument(
        "--thresholds",
        type=names(THRESHOLD_MODES),
        default="fixed",
        help="fixed (the --threshold value) and/or calibrated (per fold, on held-out answers in the "
        "generation format; TruthfulQA only)",
    )
    parser.add_argument(
        "--out", type=output_folder, default="runs/eval", help="result folder (rows, answers, Steerers)"
    )


# The settings a sweep can take a grid of, each with the checker of its comma list of values.
GRID_SETTINGS = {
    "alpha": numbers(float, 0),
    "threshold": numbers(float, 0, 1),
    "back_steps": numbers(int, 0),
    "k": numbers(int, 1),
}


def add_sweep_options(parser: argparse.ArgumentParser) -> None:
    """``fasb sweep``: the options of ``fasb eval`` and a comma list of values per setting of the grid."""
    add_eval_options(parser)
    for name, values in GRID_SETTINGS.items():
        parser.add_argument(
            f"--grid-{name.replace('_', '-')}",
            dest=f"grid_{name}",
            type=values,
            default="",
            help=f"comma-separated values of {name} (default: none, the single --{name.replace('_', '-')})",
        )


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    """``fasb bench``: the fields of :class:`~fasb_tl.bench.BenchConfig` it lets one change, and the folder."""
    add_shared(parser, "--model")
    parser.add_argument(
        "--n-prompts", type=number(int, 1), default=16, help="held-out questions each decoding stage answers"
    )
    add_shared(parser, "--max-new-tokens", "--k")
    parser.add_argument(
        "--repeats", type=number(int, 1), default=3, help="timed repeats of the fit and extraction stages"
    )
    parser.add_argument("--out", type=output_folder, default="runs/bench", help="folder for the bench report")


# name, help and options of each command, in the order ``fasb --help`` lists them.
COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("fit", "fit per-head probes and save a Steerer + heatmap", add_fit_options),
    ("demo", "fit, generate and score end to end on the embedded model (offline)", add_demo_options),
    (
        "generate",
        "answer prompts with a saved Steerer, showing what FASB did (trigger, backtrack, P(true) trace)",
        add_generate_options,
    ),
    ("eval", "evaluate methods on TruthfulQA and the six MC tasks (resumable)", add_eval_options),
    (
        "plot",
        "draw a result folder's figures (heatmaps, MC and generation scores with intervals)",
        add_plot_options,
    ),
    ("sweep", "evaluate over a grid of alpha, threshold, back_steps and K", add_sweep_options),
    (
        "bench",
        "side-by-side cost of plain decoding vs FASB (analysis/benchmark.py adds the released code's loop)",
        add_bench_options,
    ),
)


def command_parser(handlers: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The ``fasb`` parser: one subcommand per entry of :data:`COMMANDS`, each with ``handlers[name]`` as its
    ``handler`` default and every option's default in its ``--help``."""
    parser = argparse.ArgumentParser(
        prog="fasb",
        description="FASB activation steering on TransformerLens",
        formatter_class=DefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_options in COMMANDS:
        command = commands.add_parser(name, help=help_text, formatter_class=DefaultsHelpFormatter)
        add_options(command)
        command.set_defaults(handler=handlers[name])
    return parser

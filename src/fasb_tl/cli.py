"""The ``fasb`` command line: thin wrappers that parse options and call the library."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from fasb_tl.cli_args import GRID_SETTINGS, command_parser
from fasb_tl.cli_generate import cmd_generate


def _load(args: argparse.Namespace, shard=None):
    """The model the options ask for; under torchrun with CUDA each rank takes the GPU of its local rank."""
    import os

    import torch

    from fasb_tl.models import load_model

    device = args.device
    if device is None and args.device_map is None and shard is not None and shard.distributed:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    return load_model(args.model, device=device, dtype=args.dtype, device_map=args.device_map)


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a Steerer and write it with its head-accuracy heatmap."""
    from fasb_tl.data import dataset_splits, load_dataset, probe_bank
    from fasb_tl.fitting import fit_steerer
    from fasb_tl.plotting import plot_head_accuracy, save_figure
    from fasb_tl.steering import check_save_target

    start = time.perf_counter()
    out = Path(args.out)
    try:  # before any work: an --out that cannot be written fails now, not after the fit
        check_save_target(out, args.overwrite, knob="--overwrite")
    except OSError as err:
        raise SystemExit(f"fasb fit: {err}") from err
    records = load_dataset(args.dataset, args.data_dir)
    splits = dataset_splits(args.dataset, len(records), args.folds, args.val_fraction, args.seed)
    if not 0 <= args.fold < len(splits):
        raise SystemExit(f"--fold must be in [0, {len(splits) - 1}], got {args.fold}")
    model = _load(args)
    with _k_named(args):
        steerer = fit_steerer(
            model,
            records,
            splits[args.fold],
            k=args.k,
            direction=args.direction,
            backend=args.backend,
            seed=args.seed,
            dataset=args.dataset,
            fold=args.fold,
            probe_format=args.probe_format,
            tie_break=args.tie_break,
            batch_size=args.batch_size,
        )
    steerer.save(out, overwrite=args.overwrite)
    val_share_true = float(probe_bank([records[i] for i in splits[args.fold].val]).labels.float().mean())
    figure = plot_head_accuracy(
        steerer.val_accuracy,
        steerer.heads,
        majority=max(val_share_true, 1 - val_share_true),
        model=args.model,
        dataset=args.dataset,
    )
    heatmap = save_figure(figure, out / "head_accuracy.png")
    if args.calibrate:
        _calibrate(args, model, steerer, [records[i] for i in splits[args.fold].val], out)
    best = steerer.val_accuracy.max().item()
    print(f"fitted {steerer.k} heads (best val accuracy {best:.3f}) in {time.perf_counter() - start:.1f} s")
    print(f"Steerer: {out}\nheatmap: {heatmap}")
    return 0


def _calibrate(args: argparse.Namespace, model, steerer, held_out, out: Path) -> None:
    """Calibrate the threshold on held-out answers in the generation format and store it with the Steerer."""
    from fasb_tl.calibration import calibrate_threshold, calibration_path, generation_format_scores
    from fasb_tl.generation import GenerationConfig

    scores, labels = generation_format_scores(model, steerer, held_out, back_steps=args.back_steps)
    calibration = calibrate_threshold(scores, labels)
    calibration.save(calibration_path(out, args.back_steps))
    paper = GenerationConfig.threshold
    print(
        f"calibrated threshold {calibration.threshold:.3f} (back_steps {args.back_steps}): triggers on "
        f"{100 * calibration.trigger_rate_true:.1f}% of true and {100 * calibration.trigger_rate_false:.1f}% "
        f"of false held-out answers; the paper's {paper} would trigger on "
        f"{100 * float((scores[labels == 1] < paper).mean()):.1f}% and "
        f"{100 * float((scores[labels == 0] < paper).mean()):.1f}%"
    )


@contextmanager
def _k_named(args: argparse.Namespace) -> Iterator[None]:
    """Name ``--k`` when it asks for more heads than the model has (known once the model is loaded)."""
    from fasb_tl.probes import ProbeError

    try:
        yield
    except ProbeError as err:
        if not str(err).startswith("k must"):
            raise
        raise SystemExit(f"fasb {args.command}: error: argument --k: {err}") from err


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo on the embedded model."""
    from fasb_tl.demo import DemoConfig, run_demo

    with _k_named(args):
        run_demo(_config(DemoConfig, args))
    return 0


def _config(config_class, args: argparse.Namespace):
    """A ``config_class`` dataclass with each field the command has an option for set from it; its other
    fields keep their defaults."""
    return config_class(
        **{f.name: getattr(args, f.name) for f in fields(config_class) if hasattr(args, f.name)}
    )


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _plan(args: argparse.Namespace):
    """The plan the options describe; a bad or empty value stops here, before a model is loaded."""
    from fasb_tl.evaluation.runner import ALL_TASKS

    tasks = list(ALL_TASKS) if _split(args.task) == ["all"] else _split(args.task)
    steering = {
        "k": args.k,
        "alpha": args.alpha,
        "threshold": args.threshold,
        "back_steps": args.back_steps,
        "tie_break": args.tie_break,
    }
    try:
        return _eval_plan(args, tasks, steering)
    except ValueError as err:  # the options' own checks leave little to find here
        raise SystemExit(f"fasb {args.command}: error: {err}") from err


def _eval_plan(args: argparse.Namespace, tasks: list[str], steering: dict):
    from fasb_tl.caa import CAAConfig
    from fasb_tl.evaluation.multichoice import MultiChoiceConfig
    from fasb_tl.evaluation.runner import EvalPlan
    from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig

    return EvalPlan(
        tasks=tasks,
        methods=_split(args.methods),
        protocols=_split(args.protocols),
        truthfulqa=TruthfulQAConfig(
            **steering,
            n_mc=args.n_mc,
            n_generation=args.n_gen,
            max_new_tokens=args.max_new_tokens,
            history=args.history,
            iti_history=args.iti_history,
        ),
        multichoice=MultiChoiceConfig(**steering, n_pool=args.n_pool, n_eval=args.n_items),
        caa=CAAConfig(layer=args.caa_layer, multiplier=args.caa_multiplier),
        judges=_split(args.judges),
        generation=not args.no_generation,
        mc=not args.no_mc,
        detection=args.detection,
        controls=_split(args.controls),
        n_random=args.n_random,
        thresholds=_split(args.thresholds),
    )


def _print_tables(out: Path) -> None:
    from fasb_tl.evaluation.results import ResultStore
    from fasb_tl.evaluation.tables import (
        generation_histories,
        multichoice_table,
        to_markdown,
        truthfulqa_table,
    )

    rows = ResultStore(out).rows
    print("\nTruthfulQA (fold-averaged, %):\n" + to_markdown(truthfulqa_table(rows)))
    if generation_histories(rows):
        print(
            generation_histories(rows)
            + " (reference: the released FASB loop; persistent: ITI's cached generate)"
        )
    for protocol in ("paper", "question"):
        print(
            f"Multiple-choice accuracy (%), {protocol} protocol:\n"
            + to_markdown(multichoice_table(rows, protocol))
        )
    print(f"Rows: {out / 'results.jsonl'} (also results.csv)")


def _supplied(args: argparse.Namespace, plan):
    """The plan and the ``--steerer`` Steerer (None without it), with the Steerer's K and direction in the
    plan; a Steerer that is unreadable or that the plan cannot evaluate honestly stops here, before the model
    loads (:mod:`fasb_tl.evaluation.supplied`)."""
    from fasb_tl.evaluation.supplied import SuppliedSteererError
    from fasb_tl.steering import Steerer

    if args.steerer is None:
        return plan, None
    if getattr(args, "grid_k", None):
        raise SystemExit(
            f"fasb {args.command}: error: argument --grid-k: a Steerer given by --steerer has one K"
        )
    try:
        steerer = Steerer.load(Path(args.steerer).expanduser())
        plan = plan.with_steerer(steerer)  # a Steerer's direction that no config takes fails here
    except ValueError as err:
        raise SystemExit(f"fasb {args.command}: error: argument --steerer: {err}") from err
    try:
        plan.check_steerer(steerer, args.data_dir)
    except SuppliedSteererError as err:
        raise SystemExit(f"fasb {args.command}: error: argument --steerer: {err}") from err
    return plan, steerer


def _check_fits(args: argparse.Namespace, model, plans: list, steerer=None) -> None:
    """Stop before any row when a setting does not fit the loaded model (K heads, the CAA layer), or when the
    supplied Steerer was fitted on another model (shape, name or weights fingerprint)."""
    from fasb_tl.steering import ModelMismatchError

    flags = {"k": "--grid-k" if getattr(args, "grid_k", None) else "--k", "caa_layer": "--caa-layer"}
    problems = {name: problem for plan in plans for name, problem in plan.model_problems(model).items()}
    found = [f"argument {flags[name]}: {problem}" for name, problem in problems.items()]
    if steerer is not None:
        try:
            steerer.check_model(model)
        except ModelMismatchError as err:
            found.append(f"argument --steerer: {err}")
    if found:
        raise SystemExit(f"fasb {args.command}: error: {'; '.join(found)}")


def _holding(out: str, shard):
    """The result folder held for the whole command, before the model loads: a second run into it is refused
    at once, and a sweep keeps it between its points (``run_plan`` nests inside)."""
    from fasb_tl.evaluation.sharding import open_result_folder

    return open_result_folder(Path(out), shard)


def _run_options(args: argparse.Namespace, shard, steerer) -> dict:
    """What ``run_plan`` takes from the options besides the plan: the data, the ranks, the supplied Steerer,
    and the judges' placement (the command's --device, else the model's, in its --dtype)."""
    return {
        "data_dir": args.data_dir,
        "shard": shard,
        "steerer": steerer,
        "judge_device": args.device,
        "judge_dtype": args.dtype,
    }


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate methods on tasks into a resumable result folder (data-parallel under torchrun)."""
    from fasb_tl.distributed import init_from_env
    from fasb_tl.evaluation.runner import run_plan

    plan, steerer = _supplied(args, _plan(args))
    shard = init_from_env()
    with _holding(args.out, shard):
        model = _load(args, shard)
        _check_fits(args, model, [plan], steerer)
        run_plan(model, plan, args.out, **_run_options(args, shard, steerer))
    if shard.is_main:
        _print_tables(Path(args.out))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the evaluation over a grid of steering settings."""
    from fasb_tl.distributed import init_from_env
    from fasb_tl.evaluation.runner import run_plan, sweep_plans

    grid = {name: getattr(args, f"grid_{name}") for name in GRID_SETTINGS if getattr(args, f"grid_{name}")}
    plan, steerer = _supplied(args, _plan(args))
    try:  # every grid point is checked here, before the first one runs
        plans = sweep_plans(plan, grid)
    except ValueError as err:
        raise SystemExit(f"fasb sweep: error: {err}") from err
    shard = init_from_env()
    with _holding(args.out, shard):
        model = _load(args, shard)
        _check_fits(args, model, plans, steerer)
        for index, plan in enumerate(plans, start=1):
            if shard.is_main:
                print(f"sweep point {index}/{len(plans)}")
            run_plan(model, plan, args.out, **_run_options(args, shard, steerer))
    if shard.is_main:
        print(
            f"Rows: {Path(args.out) / 'results.jsonl'} (one per task, method and grid point; config in every row)"
        )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw a result folder's figures."""
    from fasb_tl.report_figures import ResultFolderError, plot_result_folder

    try:
        written = plot_result_folder(Path(args.folder), None if args.out is None else Path(args.out))
    except ResultFolderError as err:
        raise SystemExit(f"fasb plot: error: {err}") from err
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure decoding, monitoring, backtracking, probe fitting and extraction side by side."""
    from fasb_tl.bench import BenchConfig, run_bench

    with _k_named(args):
        run_bench(_config(BenchConfig, args), args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fasb`` argument parser (options in :mod:`fasb_tl.cli_args`), each command with its handler."""
    return command_parser(
        {
            "fit": cmd_fit,
            "demo": cmd_demo,
            "plot": cmd_plot,
            "generate": cmd_generate,
            "eval": cmd_eval,
            "sweep": cmd_sweep,
            "bench": cmd_bench,
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fasb`` command."""
    from fasb_tl._io import FolderLockedError
    from fasb_tl.evaluation.results import ResultFileError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FolderLockedError, ResultFileError) as err:  # the user's folder, not a bug: no traceback
        raise SystemExit(f"fasb {args.command}: error: {err}") from err


if __name__ == "__main__":
    sys.exit(main())

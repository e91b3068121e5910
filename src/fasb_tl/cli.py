"""The ``fasb`` command line: thin wrappers that parse options and call the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fasb_tl.data import DATASETS
from fasb_tl.data.prompts import PROBE_FORMATS
from fasb_tl.methods import ALL_METHODS

DATA_DIR_HELP = (
    "folder with one subfolder per dataset (default: $FASB_TL_DATA, else the repository's data/, else the "
    "TruthfulQA copy installed with the package)"
)


def _add_placement_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="one device for the whole model (cpu, cuda:0, ...)")
    parser.add_argument(
        "--device-map",
        default=None,
        help="accelerate device map over several GPUs, e.g. auto (not with --device)",
    )
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")


def _load(args: argparse.Namespace, shard=None):
    """The model the options ask for; under torchrun with CUDA each rank takes the GPU of its local rank."""
    import os

    import torch

    from fasb_tl.models import load_model

    device = args.device
    if device is None and args.device_map is None and shard is not None and shard.distributed:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    return load_model(args.model, device=device, dtype=args.dtype, device_map=args.device_map)


def _add_model_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="model name, local HF folder or Hub id"
    )
    _add_placement_options(parser)
    parser.add_argument("--dataset", default="builtin", choices=DATASETS)
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    parser.add_argument("--folds", type=int, default=2, help="number of question folds")
    parser.add_argument("--fold", type=int, default=0, help="which fold is held out as the test set")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=24, help="number of heads to steer")
    parser.add_argument("--direction", default="mass_mean", choices=("mass_mean", "probe", "random"))
    parser.add_argument("--backend", default="torch", choices=("torch", "sklearn"))
    parser.add_argument("--batch-size", type=int, default=16)


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a Steerer and write it with its head-accuracy heatmap."""
    from fasb_tl.data import dataset_splits, load_dataset
    from fasb_tl.fitting import fit_steerer
    from fasb_tl.plotting import plot_head_accuracy, save_figure

    start = time.perf_counter()
    records = load_dataset(args.dataset, args.data_dir)
    splits = dataset_splits(args.dataset, len(records), args.folds, args.val_fraction, args.seed)
    if not 0 <= args.fold < len(splits):
        raise SystemExit(f"--fold must be in [0, {len(splits) - 1}], got {args.fold}")
    model = _load(args)
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
        batch_size=args.batch_size,
    )
    out = Path(args.out)
    steerer.save(out, overwrite=args.overwrite)
    figure = plot_head_accuracy(steerer.val_accuracy, steerer.heads, title=f"{args.model} on {args.dataset}")
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo on the embedded model."""
    from fasb_tl.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            model=args.model,
            alpha=args.alpha,
            threshold=args.threshold,
            back_steps=args.back_steps,
            n_show=args.n_show,
            out=args.out,
        )
    )
    return 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _plan(args: argparse.Namespace):
    from fasb_tl.caa import CAAConfig
    from fasb_tl.evaluation.multichoice import MultiChoiceConfig
    from fasb_tl.evaluation.runner import ALL_TASKS, EvalPlan
    from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig

    tasks = list(ALL_TASKS) if args.task == "all" else _split(args.task)
    steering = {"k": args.k, "alpha": args.alpha, "threshold": args.threshold, "back_steps": args.back_steps}
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
    from fasb_tl.evaluation.tables import multichoice_table, to_markdown, truthfulqa_table

    rows = ResultStore(out).rows
    print("\nTruthfulQA (fold-averaged, %):\n" + to_markdown(truthfulqa_table(rows)))
    for protocol in ("paper", "question"):
        print(
            f"Multiple-choice accuracy (%), {protocol} protocol:\n"
            + to_markdown(multichoice_table(rows, protocol))
        )
    print(f"Rows: {out / 'results.jsonl'} (also results.csv)")


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate methods on tasks into a resumable result folder (data-parallel under torchrun)."""
    from fasb_tl.distributed import init_from_env
    from fasb_tl.evaluation.runner import run_plan

    plan = _plan(args)
    shard = init_from_env()
    run_plan(_load(args, shard), plan, args.out, data_dir=args.data_dir, shard=shard)
    if shard.is_main:
        _print_tables(Path(args.out))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the evaluation over a grid of steering settings."""
    from fasb_tl.distributed import init_from_env
    from fasb_tl.evaluation.runner import run_plan, sweep_plans

    grid = {}
    for name, cast in (("alpha", float), ("threshold", float), ("back_steps", int), ("k", int)):
        values = getattr(args, f"grid_{name}")
        if values:
            grid[name] = [cast(v) for v in _split(values)]
    plans = sweep_plans(_plan(args), grid)
    shard = init_from_env()
    model = _load(args, shard)
    for index, plan in enumerate(plans, start=1):
        if shard.is_main:
            print(f"sweep point {index}/{len(plans)}")
        run_plan(model, plan, args.out, data_dir=args.data_dir, shard=shard)
    if shard.is_main:
        print(
            f"Rows: {Path(args.out) / 'results.jsonl'} (one per task, method and grid point; config in every row)"
        )
    return 0


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct")
    _add_placement_options(parser)
    parser.add_argument(
        "--task",
        default="truthfulqa",
        help="truthfulqa, copa, storycloze, nli, mmlu, sst2, winogrande, xnli_en, a comma list, or all",
    )
    parser.add_argument(
        "--methods", default=",".join(ALL_METHODS), help=f"a comma list of {', '.join(ALL_METHODS)}"
    )
    parser.add_argument(
        "--caa-layer", type=int, default=None, help="CAA residual layer (default: the middle)"
    )
    parser.add_argument("--caa-multiplier", type=float, default=1.0, help="CAA vector multiplier")
    parser.add_argument(
        "--protocols", default="paper,question", help="MC protocols for the monitored methods"
    )
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    parser.add_argument("--k", type=int, default=24)
    parser.add_argument("--alpha", type=float, default=15.0)
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--back-steps", type=int, default=10)
    parser.add_argument("--history", default="reference", choices=("reference", "persistent"))
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--n-mc", type=int, default=None, help="TruthfulQA MC questions (default: all 817)")
    parser.add_argument(
        "--n-gen", type=int, default=200, help="TruthfulQA generation questions (seeded subset)"
    )
    parser.add_argument("--n-items", type=int, default=200, help="evaluation items per multiple-choice task")
    parser.add_argument("--n-pool", type=int, default=300, help="probe-pool items per multiple-choice task")
    parser.add_argument(
        "--judges",
        default="bleu-proxy,rouge1-proxy,info-proxy",
        help="bleu-proxy, rouge1-proxy, info-proxy, allenai-truth, allenai-info",
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
        default="",
        help="comma-separated direction controls run beside every steering method: reversed, random",
    )
    parser.add_argument("--n-random", type=int, default=3, help="seeds of the random-direction control")
    parser.add_argument(
        "--thresholds",
        default="fixed",
        help="fixed (the --threshold value) and/or calibrated (per fold, on held-out answers in the "
        "generation format; TruthfulQA only)",
    )
    parser.add_argument("--out", default="runs/eval")


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure decoding, monitoring, backtracking, probe fitting and extraction side by side."""
    from fasb_tl.bench import BenchConfig, run_bench

    config = BenchConfig(
        model=args.model,
        n_prompts=args.n_prompts,
        max_new_tokens=args.max_new_tokens,
        k=args.k,
        repeats=args.repeats,
    )
    run_bench(config, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fasb`` argument parser."""
    parser = argparse.ArgumentParser(prog="fasb", description="FASB activation steering on TransformerLens")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="fit per-head probes and save a Steerer + heatmap")
    _add_model_data_options(fit)
    _add_fit_options(fit)
    fit.add_argument("--out", default="runs/steerer", help="Steerer folder to write")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing Steerer folder")
    fit.add_argument(
        "--probe-format",
        default="qa",
        choices=PROBE_FORMATS,
        help="probe bank as the paper's 'Q: A:' prompts or in the generation prompt format",
    )
    fit.add_argument(
        "--calibrate",
        action="store_true",
        help="also calibrate the threshold on the validation answers in the generation format",
    )
    fit.add_argument("--back-steps", type=int, default=10, help="back_steps the calibration assumes")
    fit.set_defaults(handler=cmd_fit)

    demo = commands.add_parser(
        "demo", help="fit, generate and score end to end on the embedded model (offline)"
    )
    demo.add_argument("--model", default="smollm2-135m-instruct")
    demo.add_argument("--alpha", type=float, default=15.0)
    demo.add_argument("--threshold", type=float, default=0.45)
    demo.add_argument("--back-steps", type=int, default=10)
    demo.add_argument("--n-show", type=int, default=4, help="held-out questions to answer side by side")
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(handler=cmd_demo)

    evaluate = commands.add_parser(
        "eval", help="evaluate methods on TruthfulQA and the six MC tasks (resumable)"
    )
    _add_eval_options(evaluate)
    evaluate.set_defaults(handler=cmd_eval)

    sweep = commands.add_parser("sweep", help="evaluate over a grid of alpha, threshold, back_steps and K")
    _add_eval_options(sweep)
    for name in ("alpha", "threshold", "back_steps", "k"):
        sweep.add_argument(
            f"--grid-{name.replace('_', '-')}",
            dest=f"grid_{name}",
            default="",
            help=f"comma-separated values of {name}",
        )
    sweep.set_defaults(handler=cmd_sweep)

    bench = commands.add_parser(
        "bench",
        help="side-by-side cost of plain decoding vs FASB (analysis/benchmark.py "
        "adds the released code's loop)",
    )
    bench.add_argument("--model", default="smollm2-135m-instruct")
    bench.add_argument("--n-prompts", type=int, default=16)
    bench.add_argument("--max-new-tokens", type=int, default=50)
    bench.add_argument("--k", type=int, default=24)
    bench.add_argument(
        "--repeats", type=int, default=3, help="timed repeats of the fit and extraction stages"
    )
    bench.add_argument("--out", default="runs/bench")
    bench.set_defaults(handler=cmd_bench)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fasb`` command."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

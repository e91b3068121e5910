"""``fasb bench``: side-by-side cost of plain decoding, FASB monitoring, backtracking, probe fitting and
extraction, measured in one run on the same model, prompts and settings.

Every stage is timed per prompt (median over prompts) and its peak resident memory is sampled while it runs.
Ratios are computed between stages of the same run, never against stored numbers, because the machines are
shared and noisy. Extra stages (the released code's loop in ``analysis/benchmark.py``) plug in by name.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from typing_extensions import Self

from fasb_tl._io import atomic_write_text
from fasb_tl.activations import collect_head_activations
from fasb_tl.data import QARecord, Split, dataset_splits, generation_prompt, load_builtin, probe_bank
from fasb_tl.fitting import fit_steerer
from fasb_tl.generation import GenerationConfig, generate
from fasb_tl.probes import HeadProbes
from fasb_tl.run_config import RunConfig
from fasb_tl.steering import Steerer


@dataclass
class Stage:
    """One measured stage: per-item (or per-repeat) seconds, produced units (tokens or prompts) and peak RSS."""

    name: str
    seconds: list[float] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_unit(self) -> float:
        """Median over items of seconds per produced unit."""
        return statistics.median(s / max(u, 1) for s, u in zip(self.seconds, self.units))


class PeakRSS:
    """Samples this process's resident memory in a thread while a block runs (peak in MB)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def current_mb() -> float:
        """Current resident set size from /proc (0 where it is unavailable)."""
        try:
            with open("/proc/self/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current_mb())
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self.peak = self.current_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current_mb())


@dataclass(frozen=True)
class BenchConfig(RunConfig):
    """What the benchmark runs: the model and FASB settings of :class:`RunConfig`, the number of prompts and
    the timed repeats of the fit and extraction stages."""

    n_prompts: int = 16
    repeats: int = 3

    def __post_init__(self) -> None:
        for name in ("n_prompts", "max_new_tokens", "k", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _time_interleaved(runs: dict[str, Callable[[object], int]], items: list) -> dict[str, Stage]:
    """Each of ``runs`` timed on every item, the runs taking turns on each item so drift in machine load hits
    them alike; the stages share one peak-RSS reading."""
    stages = {name: Stage(name) for name in runs}
    with PeakRSS() as memory:
        for item in items:
            for name, run in runs.items():
                start = time.perf_counter()
                units = run(item)
                stages[name].seconds.append(time.perf_counter() - start)
                stages[name].units.append(units)
    for stage in stages.values():
        stage.peak_rss_mb = memory.peak
    return stages


def _time_each(name: str, items: list, run: Callable[[object], int]) -> Stage:
    return _time_interleaved({name: run}, items)[name]


def decoding_stages(model, steerer: Steerer, prompts: list[str], config: BenchConfig) -> dict[str, Stage]:
    """(a) plain cached greedy, (b) monitoring only, (c)/(d) a forced trigger at ``back_steps`` with reference
    and persistent history; time per produced token counts the regenerated tokens' cost."""
    base = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        back_steps=config.back_steps,
        alpha=config.alpha,
        stop_at_eos=False,
    )
    settings = {
        "a_plain": (None, GenerationConfig(**{**asdict(base), "method": "none"})),
        "b_monitor": (steerer, GenerationConfig(**{**asdict(base), "threshold": 0.0})),
        "c_trigger_reference": (
            steerer,
            GenerationConfig(**{**asdict(base), "threshold": 2.0, "force_threshold": True}),
        ),
        "d_trigger_persistent": (
            steerer,
            GenerationConfig(
                **{**asdict(base), "threshold": 2.0, "force_threshold": True, "history": "persistent"}
            ),
        ),
    }
    generate(model, prompts[:1], None, GenerationConfig(method="none", max_new_tokens=4), progress=False)

    def decode(use, generation) -> Callable[[str], int]:
        return lambda prompt: len(
            generate(model, [prompt], use, generation, batch_size=1, progress=False)[0].token_ids
        )

    return _time_interleaved({name: decode(*setting) for name, setting in settings.items()}, prompts)


@dataclass(frozen=True)
class FitBank:
    """The ``Q: {q} A: {a}`` prompts that fitting a Steerer extracts and fits probes on (train, then val)."""

    prompts: list[str]
    labels: torch.Tensor
    n_train: int


def probe_bank_prompts(records: list[QARecord], split: Split) -> FitBank:
    """The probe bank of ``split``, as :func:`fasb_tl.steering.fit_steerer` builds it."""
    train = probe_bank([records[i] for i in split.train])
    val = probe_bank([records[i] for i in split.val])
    labels = torch.cat([train.labels, val.labels])
    return FitBank(prompts=train.prompts + val.prompts, labels=labels, n_train=len(train.prompts))


def probe_fit_stage(
    acts: Float[torch.Tensor, "n layer head d_head"], bank: FitBank, config: BenchConfig
) -> dict[str, Stage]:
    """(f) all-head probe fitting on ``bank``'s activations: torch batched vs a loop of sklearn fits, with their
    agreement."""
    n = bank.n_train
    data = (acts[:n], bank.labels[:n], acts[n:], bank.labels[n:])
    fitted = {}

    def fit(backend):
        def run(_) -> int:
            fitted[backend] = HeadProbes(backend).fit(*data, progress=False)
            return 1

        return run

    repeats = list(range(config.repeats))
    # Timed in separate blocks, not interleaved: on 2 cores a torch fit started right after an sklearn loop
    # took 0.13-0.16 s against 0.07-0.09 s alone, as the two libraries' thread pools got in each other's way.
    stages = {f"f_fit_{b}": _time_each(f"f_fit_{b}", repeats, fit(b)) for b in ("torch", "sklearn")}
    torch_fit, sklearn_fit = fitted["torch"], fitted["sklearn"]
    overlap = {tuple(h) for h in torch_fit.top_heads(config.k).tolist()} & {
        tuple(h) for h in sklearn_fit.top_heads(config.k).tolist()
    }
    stages["f_fit_torch"].extra = {
        "mean_abs_val_acc_diff": float((torch_fit.val_accuracy_ - sklearn_fit.val_accuracy_).abs().mean()),
        f"top{config.k}_overlap": len(overlap) / config.k,
        "n_train_prompts": n,
    }
    return stages


def extraction_stages(
    model, prompts: list[str], label: str, repeats: int
) -> tuple[dict[str, Stage], Float[torch.Tensor, "n layer head d_head"]]:
    """(g) hook_z extraction prompts/s at batch 1 vs batch 16 (time per prompt), stages ``{label}_batch{b}``;
    also returns the activations, so later stages need not extract them again."""
    extracted = {}

    def extract(batch: int) -> Callable[[object], int]:
        def run(_) -> int:
            extracted[batch] = collect_head_activations(model, prompts, batch_size=batch, progress=False)
            return len(prompts)

        return run

    stages = _time_interleaved({f"{label}_batch{b}": extract(b) for b in (1, 16)}, list(range(repeats)))
    return stages, extracted[16]


def _throughput_stage(name: str, model, steerer, prompts, generation: GenerationConfig, batch: int) -> Stage:
    def run(ps) -> int:
        results = generate(model, ps, steerer, generation, batch_size=batch, progress=False)
        return sum(len(r.token_ids) for r in results)

    return _time_each(name, [prompts], run)


def batch_generation_stages(
    model, steerer: Steerer, prompts: list[str], config: BenchConfig
) -> dict[str, Stage]:
    """(h) FASB generation throughput (real triggers at threshold 0.5) at batch 1 vs batch 8, and stage (c)'s
    forced trigger at batch 8, ``generate``'s default batch size."""
    settings = {
        "max_new_tokens": config.max_new_tokens,
        "back_steps": config.back_steps,
        "alpha": config.alpha,
        "stop_at_eos": False,
    }
    real = GenerationConfig(threshold=0.5, **settings)
    forced = GenerationConfig(threshold=2.0, force_threshold=True, **settings)
    return {
        "h_fasb_batch1": _throughput_stage("h_fasb_batch1", model, steerer, prompts, real, 1),
        "h_fasb_batch8": _throughput_stage("h_fasb_batch8", model, steerer, prompts, real, 8),
        "c_trigger_reference_batch8": _throughput_stage(
            "c_trigger_reference_batch8", model, steerer, prompts, forced, 8
        ),
    }


RATIOS = {
    "(b)/(a) time per token, target <= 1.10": ("b_monitor", "a_plain"),
    "(c)/(a) time per produced token, target <= 1.5": ("c_trigger_reference", "a_plain"),
    "(d)/(a) time per produced token": ("d_trigger_persistent", "a_plain"),
    "(e)/(c) released loop vs ours, both batch 1": ("e_released_loop", "c_trigger_reference"),
    # The released loop runs one question at a time; ours at batch 8 is timed over all prompts in one item.
    "(e)/(c) released loop (batch 1) vs ours at batch 8, target >= 10": (
        "e_released_loop",
        "c_trigger_reference_batch8",
    ),
    "(f) sklearn/torch fit time, target >= 10 (agreement in bench.json)": ("f_fit_sklearn", "f_fit_torch"),
    "(g) batch16/batch1 prompts per s, probe-bank prompts, target >= 3": (
        "g_bank_extract_batch1",
        "g_bank_extract_batch16",
    ),
    "(g) batch16/batch1 prompts per s, 6-shot generation prompts": ("g_extract_batch1", "g_extract_batch16"),
    "(h) batch8/batch1 tokens per s, target >= 2.5": ("h_fasb_batch1", "h_fasb_batch8"),
}


def run_bench(
    config: BenchConfig,
    out: str | os.PathLike = "runs/bench",
    extra: dict[str, Callable] | None = None,
) -> dict:
    """Run every stage, print the table and write ``bench.json``; ``extra`` maps stage names to callables
    ``(model, steerer, prompts, config) -> Stage``."""
    from fasb_tl.models import load_model

    model = load_model(config.model)
    records = load_builtin()
    split = dataset_splits("builtin", len(records), seed=config.seed)[0]
    steerer = fit_steerer(model, records, split, k=config.k, seed=config.seed, progress=False)
    questions = [records[i].question for i in split.test[: config.n_prompts]]
    prompts = [generation_prompt(q) for q in questions]
    stages = decoding_stages(model, steerer, prompts, config)
    for name, make in (extra or {}).items():
        stages[name] = make(model, steerer, prompts, config)
    bank = probe_bank_prompts(records, split)
    bank_extraction, bank_acts = extraction_stages(model, bank.prompts, "g_bank_extract", config.repeats)
    stages.update(probe_fit_stage(bank_acts, bank, config))
    stages.update(bank_extraction)
    stages.update(extraction_stages(model, prompts, "g_extract", config.repeats)[0])
    stages.update(batch_generation_stages(model, steerer, prompts, config))
    ratios = {
        label: stages[num].seconds_per_unit / stages[den].seconds_per_unit
        for label, (num, den) in RATIOS.items()
        if num in stages and den in stages
    }
    report = {
        "config": asdict(config),
        "torch_threads": torch.get_num_threads(),
        "stages": {
            name: {
                "median_seconds_per_unit": s.seconds_per_unit,
                "peak_rss_mb": s.peak_rss_mb,
                "items": len(s.seconds),
                "total_seconds": sum(s.seconds),
                **s.extra,
            }
            for name, s in stages.items()
        },
        "ratios": ratios,
    }
    print(f"{'stage':28s} {'median s/unit':>14s} {'peak RSS MB':>12s}")
    for name, s in stages.items():
        print(f"{name:28s} {s.seconds_per_unit:14.4f} {s.peak_rss_mb:12.0f}")
    print()
    for label, value in ratios.items():
        print(f"{label:72s} {value:8.2f}")
    atomic_write_text(Path(out) / "bench.json", json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {Path(out) / 'bench.json'}")
    return report

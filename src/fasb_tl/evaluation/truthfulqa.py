"""The TruthfulQA protocol of the released FASB code (itself ITI's): folds, probes, MC1/2/3 and generation.

Per fold (2 folds over questions in ``mc_task.json`` order, val fraction 0.2, seed 42): probes on the training
questions' ``mc2_targets`` answers (``Q: {q} A: {a}``), top-K heads by validation accuracy, mass-mean
directions from train + val, sigmas from the tuning bank ``Q: {q} A: {a} Q: {random q}`` over the CSV answers
of all questions; then the test fold is scored (MC, on the CSV's reference answers, as TruthfulQA's
``MC_calcs``) and answered (greedy, 50 new tokens, cut at the next ``Q:``). Metrics are averaged over folds;
True*Info is fold-averaged True times fold-averaged Info, as the paper computes it.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from fasb_tl._io import atomic_write_text
from fasb_tl._version import __version__
from fasb_tl.activations import collect_head_activations
from fasb_tl.caa import CAAConfig, ResidualSteerer, fit_caa
from fasb_tl.calibration import (
    ThresholdCalibration,
    calibrate_threshold,
    calibration_path,
    generation_format_scores,
)
from fasb_tl.data import (
    QARecord,
    extract_answer,
    generation_prefix,
    generation_prompt,
    probe_bank,
    question_splits,
)
from fasb_tl.data.prompts import tuning_bank
from fasb_tl.distributed import Shard, current_shard, sharded_map
from fasb_tl.evaluation.judges import Judge, accept
from fasb_tl.evaluation.results import ResultStore, row_key
from fasb_tl.evaluation.sharding import (
    ShardedRows,
    load_or_compute,
    load_steerer_if_valid,
    sharded_score_choices,
)
from fasb_tl.evaluation.variants import PLAIN, Variant
from fasb_tl.generation import GenerationConfig, GenerationResult, generate
from fasb_tl.methods import ALL_METHODS
from fasb_tl.models import model_name
from fasb_tl.prefix import PrefixCache, build_prefix_cache
from fasb_tl.scoring import ScoringConfig, named_configs
from fasb_tl.steering import (
    Steerer,
    control_steerer,
    model_meta,
    steerer_from_activations,
)
from fasb_tl.text_baseline import TextOnlyDetector, answer_texts, detection_metrics

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

GENERATION_METHODS = ALL_METHODS
MC_METHODS = GENERATION_METHODS
# Detectors of a true vs a false answer compared per fold: FASB's own score and one that never sees the model.
DETECTORS = ("probes", "text_only")


@dataclass(frozen=True)
class TruthfulQAConfig:
    """Protocol settings; the steering defaults are the released script's values for Llama-2-7B-chat."""

    n_folds: int = 2
    val_fraction: float = 0.2
    seed: int = 42
    k: int = 24
    direction: str = "mass_mean"
    backend: str = "torch"
    alpha: float = 60.0
    threshold: float = 0.6
    back_steps: int = 10
    max_new_tokens: int = 50
    history: str = "reference"
    n_mc: int | None = None
    n_generation: int | None = None
    batch_size: int = 16
    generation_batch_size: int = 8


def mc_metrics(
    scores_true: Sequence[float], scores_false: Sequence[float], best_index: int
) -> dict[str, float]:
    """TruthfulQA's ``MC_calcs``: MC1 (best answer beats every false one), MC2 (normalised probability mass
    of the true answers), MC3 (fraction of true answers beating every false one)."""
    true = np.asarray(scores_true, dtype=np.float64)
    false = np.asarray(scores_false, dtype=np.float64)
    if true.size == 0 or false.size == 0:
        raise ValueError("MC metrics need at least one true and one false answer")
    max_false = false.max()
    shift = max(true.max(), max_false)
    probs_true, probs_false = np.exp(true - shift), np.exp(false - shift)
    return {
        "mc1": float(true[best_index] > max_false),
        "mc2": float(probs_true.sum() / (probs_true.sum() + probs_false.sum())),
        "mc3": float((true > max_false).mean()),
    }


def reference_answers(record: QARecord) -> tuple[list[str], list[str], int]:
    """The CSV's true answers (best answer included), false answers, and the best answer's index."""
    true = list(record.extra["correct_answers"])
    best = record.extra["best_answer"]
    if best not in true:
        true.append(best)
    return true, list(record.extra["incorrect_answers"]), true.index(best)


def tuning_prompts(records: list[QARecord], seed: int) -> list[str]:
    """The label-free tuning bank over the CSV answers of every question (the released ``tqa_gen_end_q``)."""
    csv_records = [
        replace(
            r,
            true_answers=tuple(r.extra["correct_answers"]),
            false_answers=tuple(r.extra["incorrect_answers"]),
        )
        for r in records
    ]
    return tuning_bank(csv_records, seed=seed)


class TruthfulQAEvaluation:
    """Runs the protocol fold by fold into a :class:`ResultStore`, skipping rows that are already there."""

    def __init__(
        self,
        model: TransformerBridge,
        records: list[QARecord],
        config: TruthfulQAConfig,
        out: str | Path,
        judges: Sequence[Judge] = (),
        progress: bool = True,
        caa: CAAConfig | None = None,
        shard: Shard | None = None,
        steerer_dir: str | Path | None = None,
    ):
        self.shard = shard or current_shard()
        self.model = model
        self.records = records
        self.config = config
        self.out = Path(out)
        # Fitted Steerers (and their calibrations) may be shared between result folders: the fit depends only
        # on the splits and the steering settings, not on how many questions are evaluated.
        self.steerer_dir = Path(steerer_dir) if steerer_dir is not None else self.out / "steerers"
        self.judges = list(judges)
        self.progress = progress and self.shard.is_main
        self.store = ResultStore(self.out)
        self.rows = ShardedRows(self.store, self.shard)
        self.splits = question_splits(len(records), config.n_folds, config.val_fraction, config.seed)
        self._tuning: torch.Tensor | None = None
        self._prefix: PrefixCache | None = None
        self.caa = caa or CAAConfig()
        self._caa: dict[int, ResidualSteerer] = {}
        self._calibration: dict[int, ThresholdCalibration] = {}
        self._steerers: dict[int, Steerer] = {}

    def _identity(self, **fields) -> dict:
        identity = {"task": fields.pop("task"), "model": model_name(self.model), **fields}
        identity["config"] = asdict(self.config)
        if fields.get("method") == "caa":
            identity["caa"] = asdict(self.caa)
        return identity

    def caa_steerer(self, fold: int) -> ResidualSteerer:
        """The fold's CAA vector from its train + val probe-bank answers (computed once per fold)."""
        if fold not in self._caa:
            split = self.splits[fold]
            records = [self.records[i] for i in (*split.train, *split.val)]
            prompts, labels, _ = probe_bank(records)
            self._caa[fold] = fit_caa(
                self.model,
                prompts,
                torch.from_numpy(labels),
                self.caa.layer,
                batch_size=self.config.batch_size,
                progress=self.progress,
                shard=self.shard,
            )
        return self._caa[fold]

    def _steerer_folder(self, fold: int) -> Path:
        return self.steerer_dir / f"fold{fold}-{self.config.direction}-k{self.config.k}"

    def steering_for(self, fold: int, variant: Variant) -> Steerer:
        """The Steerer that steers under ``variant``: the fold's own, or a control with the same probes."""
        steerer = self.steerer(fold)
        return steerer if variant.control is None else control_steerer(steerer, variant.control, variant.seed)

    def calibration(self, fold: int) -> ThresholdCalibration:
        """The fold's threshold calibrated on its validation questions in the generation format (balanced
        accuracy), stored next to the Steerer so reruns reuse it."""
        if fold not in self._calibration:
            path = calibration_path(self._steerer_folder(fold), self.config.back_steps)
            self._calibration[fold] = load_or_compute(
                self.shard,
                lambda: ThresholdCalibration.load(path) if path.is_file() else None,
                lambda: self._calibrate(fold),
                lambda calibration: calibration.save(path),
            )
        return self._calibration[fold]

    def _calibrate(self, fold: int) -> ThresholdCalibration:
        scores, labels = generation_format_scores(
            self.model,
            self.steerer(fold),
            [self.records[i] for i in self.splits[fold].val],
            back_steps=self.config.back_steps,
            batch_size=self.config.generation_batch_size,
            progress=self.progress,
            shard=self.shard,
        )
        return calibrate_threshold(scores, labels)

    def steerer(self, fold: int) -> Steerer:
        """The fold's Steerer: kept in memory, else loaded from ``steerers/fold{i}-...``, else fitted and saved
        there."""
        if fold not in self._steerers:
            folder = self._steerer_folder(fold)
            self._steerers[fold] = load_or_compute(
                self.shard,
                lambda: load_steerer_if_valid(folder, self.model),
                lambda: self._fit_steerer(fold),
                lambda steerer: steerer.save(folder, overwrite=True),
            )
        return self._steerers[fold]

    def _fit_steerer(self, fold: int) -> Steerer:
        split = self.splits[fold]
        # Each fold's probe bank covers only its own train + val questions (the other folds' test sets), so
        # fitting every fold extracts each question once; the tuning bank is shared by all folds.
        if self._tuning is None:
            self._tuning = collect_head_activations(
                self.model,
                tuning_prompts(self.records, self.config.seed),
                batch_size=self.config.batch_size,
                progress=self.progress,
                shard=self.shard,
            )
        train_prompts, train_labels, _ = probe_bank([self.records[i] for i in split.train])
        val_prompts, val_labels, _ = probe_bank([self.records[i] for i in split.val])
        acts = collect_head_activations(
            self.model,
            train_prompts + val_prompts,
            batch_size=self.config.batch_size,
            progress=self.progress,
            shard=self.shard,
        )
        n_train = len(train_prompts)
        meta = model_meta(
            self.model,
            self.config.direction,
            dataset="truthfulqa",
            split_seed=self.config.seed,
            fold=fold,
            n_train=len(split.train),
            n_val=len(split.val),
        )
        steerer, _ = steerer_from_activations(
            acts[:n_train],
            torch.from_numpy(train_labels),
            acts[n_train:],
            torch.from_numpy(val_labels),
            self._tuning,
            meta,
            k=self.config.k,
            backend=self.config.backend,
            seed=self.config.seed,
            progress=self.progress,
        )
        return steerer

    @property
    def prefix(self) -> PrefixCache:
        """The KV cache of the instruction + 6-shot primer, computed once."""
        if self._prefix is None:
            self._prefix = build_prefix_cache(self.model, generation_prefix())
        return self._prefix

    def _subset(self, test: np.ndarray, n: int | None, salt: int) -> list[int]:
        if n is None or n >= len(self.records):
            return test.tolist()
        chosen = np.random.RandomState(self.config.seed + salt).choice(len(self.records), n, replace=False)
        return sorted(set(test.tolist()) & set(chosen.tolist()))

    def scoring_configs(self, methods: Sequence[str], protocols: Sequence[str]) -> dict[str, ScoringConfig]:
        """Named scoring configs (monitored methods once per protocol)."""
        cfg = self.config
        return named_configs(methods, protocols, cfg.alpha, cfg.threshold, cfg.back_steps)

    def run_mc(
        self,
        methods: Sequence[str] = MC_METHODS,
        protocols: Sequence[str] = ("paper", "question"),
        variants: Sequence[Variant] = (PLAIN,),
    ) -> None:
        """MC1/MC2/MC3 of each method (and protocol) and variant on each test fold; ``caa`` is the CAA
        baseline. All variants of a fold share one unsteered pass."""
        for fold, split in enumerate(self.splits):
            entries = []
            for variant in variants:
                steering = [m for m in methods if m != "caa" and variant.applies_to(m)]
                entries += [
                    (name, variant, c) for name, c in self.scoring_configs(steering, protocols).items()
                ]
            self._run_mc_group(fold, split, entries, self.steerer, self.steering_for)
            if "caa" in methods:
                caa = [("caa", PLAIN, ScoringConfig(method="iti", alpha=self.caa.multiplier))]
                self._run_mc_group(
                    fold, split, caa, self.caa_steerer, lambda fold, variant: self.caa_steerer(fold)
                )

    def _run_mc_group(self, fold: int, split, entries, get_steerer, get_intervention) -> None:
        def identity(name: str, variant: Variant) -> dict:
            return self._identity(task="truthfulqa-mc", method=name, fold=fold, **variant.identity())

        todo = {}
        for name, variant, config in entries:
            key = row_key(**identity(name, variant))
            if not self.store.has(key):
                todo[name + variant.suffix()] = (name, variant, config, key)
        if not todo:
            return
        start = time.perf_counter()
        questions = [self.records[i] for i in self._subset(split.test, self.config.n_mc, salt=1)]
        refs = [reference_answers(r) for r in questions]
        contexts = [generation_prompt(r.question) + "\nA:" for r in questions]
        options = [[" " + a for a in true + false] for true, false, _ in refs]
        steering = any(config.method != "none" for _, _, config, _ in todo.values())
        steerer = get_steerer(fold) if steering else None
        configs, interventions = {}, {}
        for tag, (_, variant, config, _) in todo.items():
            if variant.calibrated:
                config = replace(config, threshold=self.calibration(fold).threshold)
            configs[tag] = config
            if variant.control is not None:
                interventions[tag] = get_intervention(fold, variant)
        keys = [entry[-1] for entry in todo.values()]
        scored = sharded_score_choices(
            self.rows,
            keys,
            self.model,
            contexts,
            options,
            steerer,
            configs,
            interventions=interventions,
            prefix=self.prefix,
            batch_size=self.config.batch_size,
            progress=self.progress,
        )
        for tag, results in scored.items():
            name, variant, _, key = todo[tag]
            per_question = {"mc1": [], "mc2": [], "mc3": []}
            delta_true, delta_false, steered = [], [], []
            for (true, false, best), result in zip(refs, results):
                n_true = len(true)
                metrics = mc_metrics(result.scores[:n_true].tolist(), result.scores[n_true:].tolist(), best)
                for metric, value in metrics.items():
                    per_question[metric].append(value)
                change = (result.scores - result.unsteered).tolist()
                delta_true += change[:n_true]
                delta_false += change[n_true:]
                steered += result.triggered
            row = identity(name, variant)
            row.update(
                key=key,
                n_questions=len(questions),
                **{metric: float(np.mean(values)) for metric, values in per_question.items()},
                steered_fraction=float(np.mean(steered)),
                loglik_change_true=float(np.mean(delta_true)),
                loglik_change_false=float(np.mean(delta_false)),
                per_question=per_question,
                question_ids=[r.id for r in questions],
                **self._threshold_fields(fold, variant),
                seconds=time.perf_counter() - start,
                version=__version__,
            )
            self.rows.commit(row)
        self.rows.finish(keys)

    def _threshold_fields(self, fold: int, variant: Variant) -> dict:
        if not variant.calibrated:
            return {}
        calibration = self.calibration(fold)
        return {"threshold_used": calibration.threshold, "calibration": calibration.to_dict()}

    def run_detection(self) -> None:
        """Per fold, how well the test answers' truth is read off (a) FASB's score, the mean P(true) of the
        fold's top-K head probes, and (b) a bag-of-words model of the answer text alone, trained on the same
        train + val questions: accuracy and AUROC on every test-fold answer (``Q: {q} A: {a}``, the probes'
        own format). Rows ``truthfulqa-detect`` / ``probes`` and ``text_only``."""
        for fold, split in enumerate(self.splits):
            keys = {
                name: row_key(**self._identity(task="truthfulqa-detect", method=name, fold=fold))
                for name in DETECTORS
            }
            if all(self.store.has(key) for key in keys.values()):
                continue
            start = time.perf_counter()
            test = [self.records[i] for i in split.test]
            prompts, labels, _ = probe_bank(test)
            steerer = self.steerer(fold)
            activations = collect_head_activations(
                self.model,
                prompts,
                layers=steerer.layers,
                batch_size=self.config.batch_size,
                progress=self.progress,
                shard=self.shard,
            )
            by_layer = {layer: activations[:, i] for i, layer in enumerate(steerer.layers)}
            train_texts, train_labels = answer_texts([self.records[i] for i in (*split.train, *split.val)])
            test_texts, _ = answer_texts(test)
            p_true = {
                "probes": steerer.p_true(steerer.head_values(by_layer)).numpy(),
                "text_only": TextOnlyDetector(seed=self.config.seed)
                .fit(train_texts, train_labels)
                .predict_proba(test_texts),
            }
            for name, key in keys.items():
                row = None
                if self.shard.is_main:
                    row = self._identity(task="truthfulqa-detect", method=name, fold=fold)
                    row.update(
                        key=key,
                        n_answers=len(labels),
                        n_questions=len(test),
                        **detection_metrics(p_true[name], labels),
                        seconds=time.perf_counter() - start,
                        version=__version__,
                    )
                self.rows.commit(row)
            self.rows.finish(list(keys.values()))

    def run_generation(
        self, methods: Sequence[str] = GENERATION_METHODS, variants: Sequence[Variant] = (PLAIN,)
    ) -> None:
        """Greedy answers of each method and variant on each test fold, judged by every judge; answers saved
        as CSV (``answers/{method}{variant}-fold{i}.csv``)."""
        cfg = self.config
        for fold, split in enumerate(self.splits):
            questions = [self.records[i] for i in self._subset(split.test, cfg.n_generation, salt=2)]
            for variant in variants:
                for method in methods:
                    if variant.applies_to(method):
                        self._generate_row(fold, questions, method, variant)

    def _generate_row(self, fold: int, questions: list[QARecord], method: str, variant: Variant) -> None:
        cfg = self.config
        identity = self._identity(task="truthfulqa-gen", method=method, fold=fold, **variant.identity())
        key = row_key(**identity)
        if self.store.has(key) or not questions:
            return
        start = time.perf_counter()
        caa = method == "caa"
        generation = GenerationConfig(
            method="iti" if caa else method,
            alpha=self.caa.multiplier if caa else cfg.alpha,
            threshold=self.calibration(fold).threshold if variant.calibrated else cfg.threshold,
            back_steps=cfg.back_steps,
            max_new_tokens=cfg.max_new_tokens,
            history=cfg.history,
        )
        if method == "none":
            steerer = None
        else:
            steerer = self.caa_steerer(fold) if caa else self.steering_for(fold, variant)
        prompts = [generation_prompt(r.question) for r in questions]
        results = sharded_map(
            self.shard,
            prompts,
            cfg.generation_batch_size,
            lambda batch: generate(
                self.model,
                batch,
                steerer,
                generation,
                prefix=self.prefix,
                batch_size=cfg.generation_batch_size,
                progress=self.progress,
            ),
            store=self.rows.shard_folder([key]),
            encode=asdict,
            decode=lambda value: GenerationResult(**value),
        )
        row = None
        if self.shard.is_main:
            row = self._generation_row(identity, key, fold, questions, results, variant, start)
        self.rows.commit(row)
        self.rows.finish([key])

    def _generation_row(
        self,
        identity: dict,
        key: str,
        fold: int,
        questions: list[QARecord],
        results: list[GenerationResult],
        variant: Variant,
        start: float,
    ) -> dict:
        answers = [extract_answer(r.text) for r in results]
        judged = self._judge(questions, answers)
        method = identity["method"]
        self._save_answers(method + variant.suffix(), fold, questions, answers, results, judged)
        row = identity
        row.update(
            key=key,
            n_questions=len(questions),
            **{name: float(np.mean(accept(scores))) for name, scores in judged.items()},
            judges={j.name: {"kind": j.kind, "proxy": j.is_proxy} for j in self.judges},
            trigger_rate=float(np.mean([r.triggered for r in results])),
            mean_removed_tokens=float(np.mean([r.n_removed for r in results])),
            question_ids=[r.id for r in questions],
            per_question={name: accept(scores) for name, scores in judged.items()},
            **self._threshold_fields(fold, variant),
            seconds=time.perf_counter() - start,
            version=__version__,
        )
        return row

    def _judge(self, questions: list[QARecord], answers: list[str]) -> dict[str, list[float]]:
        texts = [r.question for r in questions]
        true_refs = [reference_answers(r)[0] for r in questions]
        false_refs = [reference_answers(r)[1] for r in questions]
        out = {}
        for judge in tqdm(self.judges, desc="judges", disable=not self.progress, leave=False):
            out[judge.name] = judge.score(texts, answers, true_refs, false_refs)
        return out

    def _save_answers(self, method, fold, questions, answers, results, judged) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "question", "answer", "triggered", "trigger_step", "n_removed", *judged])
        for i, (record, answer, result) in enumerate(zip(questions, answers, results)):
            writer.writerow(
                [record.id, record.question, answer, result.triggered, result.trigger_step, result.n_removed]
                + [judged[name][i] for name in judged]
            )
        atomic_write_text(self.out / "answers" / f"{method}-fold{fold}.csv", buffer.getvalue())

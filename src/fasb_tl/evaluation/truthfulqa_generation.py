"""TruthfulQA generation rows (task ``truthfulqa-gen``): greedy answers of each method and variant on each test
fold, judged by every judge, and saved as CSV (``answers/{method}{variant suffix}-fold{i}.csv``, with
``-steerer-{digest}`` before ``.csv`` for a supplied Steerer)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fasb_tl._io import atomic_write_text
from fasb_tl.data import QARecord, extract_answer, generation_prompt
from fasb_tl.distributed import sharded_map
from fasb_tl.evaluation.judges import Judge, accept
from fasb_tl.evaluation.rows import RowFields, RowSpec, run_rows
from fasb_tl.evaluation.truthfulqa import GENERATION_METHODS, TruthfulQAFolds, reference_answers
from fasb_tl.evaluation.variants import PLAIN, Variant
from fasb_tl.generation import GenerationConfig, GenerationResult, generate


def run_generation(
    folds: TruthfulQAFolds,
    *,
    judges: Sequence[Judge] = (),
    methods: Sequence[str] = GENERATION_METHODS,
    variants: Sequence[Variant] = (PLAIN,),
) -> None:
    """One row per fold, variant and method that has the variant (``caa``: the CAA baseline)."""
    for fold in folds.test_folds:
        questions = folds.questions(fold, folds.config.n_generation, salt=2)
        if not questions:
            continue
        for variant in variants:
            for method in methods:
                if variant.applies_to(method):
                    spec = RowSpec(folds.identity("truthfulqa-gen", method, fold, variant), variant)
                    answer = _Answering(folds, list(judges), fold, questions)
                    run_rows(folds.ctx, [spec], answer.compute)


class _Answering:
    """One row's answers: generated on every rank, judged and saved by rank 0."""

    def __init__(self, folds: TruthfulQAFolds, judges: list[Judge], fold: int, questions: list[QARecord]):
        self.folds, self.judges, self.fold, self.questions = folds, judges, fold, questions

    def compute(self, todo: list[RowSpec], folder: Path) -> RowFields:
        (spec,) = todo
        folds, cfg, method = self.folds, self.folds.config, spec.identity["method"]
        caa = method == "caa"
        generation = GenerationConfig(
            method="iti" if caa else method,
            alpha=folds.caa.multiplier if caa else cfg.alpha,
            threshold=folds.calibration(self.fold).threshold if spec.variant.calibrated else cfg.threshold,
            back_steps=cfg.back_steps,
            max_new_tokens=cfg.max_new_tokens,
            history=cfg.history_of(method),
        )
        if method == "none":
            steerer = None
        else:
            steerer = folds.caa_steerer(self.fold) if caa else folds.steering_for(self.fold, spec.variant)
        results = sharded_map(
            folds.ctx.shard,
            [generation_prompt(r.question) for r in self.questions],
            cfg.generation_batch_size,
            lambda batch: generate(
                folds.ctx.model,
                batch,
                steerer,
                generation,
                prefix=folds.prefix(),
                batch_size=cfg.generation_batch_size,
                progress=folds.ctx.progress,
            ),
            store=folder,
            encode=asdict,
            decode=lambda value: GenerationResult(**value),
        )
        return lambda spec: self._fields(spec, results)

    def _fields(self, spec: RowSpec, results: list[GenerationResult]) -> dict:
        answers = [extract_answer(r.text) for r in results]
        judged = self._judge(answers)
        self._save(spec.tag, answers, results, judged)
        return dict(
            n_questions=len(self.questions),
            **{name: float(np.mean(accept(scores))) for name, scores in judged.items()},
            judges={j.name: {"kind": j.kind, "proxy": j.is_proxy} for j in self.judges},
            trigger_rate=float(np.mean([r.triggered for r in results])),
            mean_removed_tokens=float(np.mean([r.n_removed for r in results])),
            question_ids=[r.id for r in self.questions],
            per_question={name: accept(scores) for name, scores in judged.items()},
            **self.folds.threshold_fields(self.fold, spec.variant),
        )

    def _judge(self, answers: list[str]) -> dict[str, list[float]]:
        texts = [r.question for r in self.questions]
        true_refs = [reference_answers(r)[0] for r in self.questions]
        false_refs = [reference_answers(r)[1] for r in self.questions]
        out = {}
        for judge in tqdm(self.judges, desc="judges", disable=not self.folds.ctx.progress, leave=False):
            out[judge.name] = judge.score(texts, answers, true_refs, false_refs)
        return out

    def _save(self, tag: str, answers, results, judged) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "question", "answer", "triggered", "trigger_step", "n_removed", *judged])
        for i, (record, answer, result) in enumerate(zip(self.questions, answers, results)):
            writer.writerow(
                [record.id, record.question, answer, result.triggered, result.trigger_step, result.n_removed]
                + [judged[name][i] for name in judged]
            )
        name = f"{tag}-fold{self.fold}{self.folds.file_suffix}.csv"
        atomic_write_text(self.folds.ctx.out / "answers" / name, buffer.getvalue())

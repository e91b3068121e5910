"""TruthfulQA detection rows (task ``truthfulqa-detect``): how well a test answer's truth is read off FASB's
score, against a detector that never sees the model."""

from __future__ import annotations

from fasb_tl.activations import collect_head_activations
from fasb_tl.data import probe_bank
from fasb_tl.evaluation.rows import RowFields, RowSpec, run_rows
from fasb_tl.evaluation.truthfulqa import TruthfulQAFolds
from fasb_tl.text_baseline import TextOnlyDetector, answer_texts, detection_metrics

# The detectors compared per fold: FASB's own score and a bag-of-words model of the answer text.
DETECTORS = ("probes", "text_only")


def run_detection(folds: TruthfulQAFolds) -> None:
    """Per fold, accuracy and AUROC on every test-fold answer (``Q: {q} A: {a}``, the probes' own format) of
    (a) the mean P(true) of the fold's top-K head probes and (b) a bag-of-words model trained on the same
    train + val questions. Rows ``probes`` and ``text_only``."""
    for fold in folds.test_folds:
        specs = [RowSpec(folds.identity("truthfulqa-detect", name, fold)) for name in DETECTORS]
        run_rows(folds.ctx, specs, lambda todo, folder, fold=fold: _detect(folds, fold))


def _detect(folds: TruthfulQAFolds, fold: int) -> RowFields:
    ctx, split = folds.ctx, folds.splits[fold]
    test = [folds.records[i] for i in split.test]
    bank = probe_bank(test)
    steerer = folds.steerer(fold)
    activations = collect_head_activations(
        ctx.model,
        bank.prompts,
        layers=steerer.layers,
        batch_size=folds.config.batch_size,
        progress=ctx.progress,
        shard=ctx.shard,
    )
    by_layer = {layer: activations[:, i] for i, layer in enumerate(steerer.layers)}
    train_texts, train_labels = answer_texts([folds.records[i] for i in (*split.train, *split.val)])
    test_texts, _ = answer_texts(test)
    p_true = {
        "probes": steerer.p_true(steerer.head_values(by_layer)).numpy(),
        "text_only": TextOnlyDetector(seed=folds.config.seed)
        .fit(train_texts, train_labels)
        .predict_proba(test_texts),
    }
    labels = bank.labels.numpy()
    return lambda spec: dict(
        n_answers=len(labels),
        n_questions=len(test),
        **detection_metrics(p_true[spec.identity["method"]], labels),
    )

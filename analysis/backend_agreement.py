"""Do the two probe solvers choose the same heads on TruthfulQA? The committed results were fitted with the
torch Newton backend; this fits both backends on each fold's probe bank, exactly as the evaluation builds it
(train + val questions of the fold, the paper's ``Q: A:`` prompts), and compares the top-K heads.

    python analysis/backend_agreement.py            # SmolLM2, both folds -> results/backend_agreement.json

Reported per fold: the largest and mean |val accuracy difference| over all heads, how many heads' accuracies
differ at all, and the top-K sets under both tie rules (which heads only one backend picks).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fasb_tl import collect_head_activations, load_model
from fasb_tl._io import atomic_write_text
from fasb_tl.data import load_truthfulqa, probe_bank
from fasb_tl.evaluation.truthfulqa import TruthfulQAConfig, fold_splits
from fasb_tl.probes import TIE_BREAKS, HeadProbes

ROOT = Path(__file__).resolve().parents[1]


def compare_fold(model, records, split, k: int, seed: int) -> dict:
    bank = probe_bank([records[i] for i in (*split.train, *split.val)])
    is_val = bank.groups >= len(split.train)
    acts = collect_head_activations(model, bank.prompts, batch_size=32)
    fits = {
        backend: HeadProbes(backend, random_state=seed).fit(
            acts[~is_val], bank.labels[~is_val], acts[is_val], bank.labels[is_val]
        )
        for backend in ("torch", "sklearn")
    }
    difference = (fits["torch"].val_accuracy_ - fits["sklearn"].val_accuracy_).abs()
    result = {
        "n_prompts": len(bank.prompts),
        "max_abs_val_accuracy_difference": float(difference.max()),
        "mean_abs_val_accuracy_difference": float(difference.mean()),
        "heads_with_different_val_accuracy": int((difference > 0).sum()),
        "max_abs_coef_difference": float((fits["torch"].coef_ - fits["sklearn"].coef_).abs().max()),
    }
    for rule in TIE_BREAKS:
        chosen = {b: {tuple(h) for h in fit.top_heads(k, rule).tolist()} for b, fit in fits.items()}
        result[f"top{k}_{rule}"] = {
            "same_set": chosen["torch"] == chosen["sklearn"],
            "only_torch": sorted(chosen["torch"] - chosen["sklearn"]),
            "only_sklearn": sorted(chosen["sklearn"] - chosen["torch"]),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default=str(ROOT / "results" / "backend_agreement.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    config = TruthfulQAConfig()
    model = load_model(args.model)
    records = load_truthfulqa(ROOT / "data")
    splits = fold_splits(len(records), config)
    folds = {f"fold{i}": compare_fold(model, records, split, config.k, config.seed) for i, split in enumerate(splits)}
    report = {
        "model": args.model,
        "k": config.k,
        "seed": config.seed,
        "torch_version": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "folds": folds,
    }
    atomic_write_text(Path(args.out), json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

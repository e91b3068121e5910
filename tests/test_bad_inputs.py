"""Every input a user can get wrong raises a clear error naming the value and what was expected.

One table, one case per row, so the list of bad inputs and the error each one gets is readable in one place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from fasb_tl.activations import NonFiniteActivationError, collect_head_activations
from fasb_tl.data import DatasetError, QARecord, load_truthfulqa, probe_bank
from fasb_tl.data.records import check_unique_questions
from fasb_tl.data.splits import Split, question_splits
from fasb_tl.evaluation.multichoice_data import load_task
from fasb_tl.fitting import steerer_from_activations
from fasb_tl.generation import GenerationConfig, GenerationConfigError, generate
from fasb_tl.models import ContextLengthError, ModelNotAvailableError, load_model
from fasb_tl.probes import HeadProbes, ProbeError
from fasb_tl.scoring import ScoringConfig, ScoringConfigError, score_choices
from fasb_tl.steering import ModelMismatchError, Steerer, SteererFormatError

QUESTION = QARecord(id="q", question="Is it?", true_answers=("Yes.",), false_answers=("No.",))


def activations(n: int, layers: int = 2, heads: int = 4, d_head: int = 16) -> torch.Tensor:
    return torch.randn(n, layers, heads, d_head, generator=torch.Generator().manual_seed(0))


def labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 2


def foreign_steerer(steerer: Steerer) -> Steerer:
    """A valid Steerer for a 3-layer model (the tiny model has 2 layers)."""
    meta = replace(steerer.meta, model_name="other-model", n_layers=3)
    return steerer_from_activations(
        activations(20, layers=3),
        labels(20),
        activations(10, layers=3),
        labels(10),
        activations(8, layers=3),
        meta,
        k=2,
        progress=False,
    )


def copy_data_without(data_dir, tmp_path, name: str):
    """A TruthfulQA data folder missing ``name`` (a file) or with ``name`` dropped from the CSV header."""
    folder = tmp_path / "data"
    (folder / "truthfulqa").mkdir(parents=True)
    for file in ("TruthfulQA.csv", "mc_task.json"):
        shutil.copy(data_dir / "truthfulqa" / file, folder / "truthfulqa" / file)
    if name.endswith((".csv", ".json")):
        (folder / "truthfulqa" / name).unlink()
    else:
        csv = folder / "truthfulqa" / "TruthfulQA.csv"
        header, *rest = csv.read_text(encoding="utf-8").split("\n")
        csv.write_text("\n".join([header.replace(name, "Renamed"), *rest]), encoding="utf-8")
    return folder


def tampered_steerer_folder(steerer: Steerer, tmp_path, edit) -> str:
    folder = steerer.save(tmp_path / "steerer")
    meta = json.loads((folder / "steerer.json").read_text())
    edit(meta)
    (folder / "steerer.json").write_text(json.dumps(meta))
    return folder


# (case, call, expected exception, message pattern). ``call`` gets a namespace of fixtures.
CASES = [
    ("empty dataset (probe bank)", lambda f: probe_bank([]), DatasetError, "no records"),
    ("empty dataset (splits)", lambda f: question_splits(0), DatasetError, "at least 4 questions"),
    (
        "question with only true answers",
        lambda f: probe_bank([replace(QUESTION, false_answers=())]),
        DatasetError,
        "no false answer",
    ),
    (
        "question with only false answers",
        lambda f: probe_bank([replace(QUESTION, true_answers=())]),
        DatasetError,
        "no true answer",
    ),
    (
        "probe bank with one class",
        lambda f: HeadProbes().fit(activations(6), torch.ones(6, dtype=torch.long), progress=False),
        ProbeError,
        "only label 1",
    ),
    (
        "labels other than 0/1",
        lambda f: HeadProbes().fit(activations(4), torch.tensor([0, 1, 2, 1])),
        ProbeError,
        r"labels must be 0/1, got \[0, 1, 2\]",
    ),
    (
        "K larger than n_layers x n_heads",
        lambda f: f.fitted_probes.top_heads(9),
        ProbeError,
        "between 1 and n_layers \\* n_heads = 8, got 9",
    ),
    ("K < 1", lambda f: f.fitted_probes.top_heads(0), ProbeError, "got 0"),
    ("threshold > 1", lambda f: GenerationConfig(threshold=1.5), GenerationConfigError, "threshold.*1.5"),
    ("threshold < 0", lambda f: ScoringConfig(threshold=-0.1), ScoringConfigError, "threshold.*-0.1"),
    ("negative alpha", lambda f: GenerationConfig(alpha=-1.0), GenerationConfigError, "alpha must be >= 0"),
    ("NaN alpha", lambda f: ScoringConfig(alpha=float("nan")), ScoringConfigError, "alpha must be >= 0"),
    (
        "negative back_steps",
        lambda f: GenerationConfig(back_steps=-2),
        GenerationConfigError,
        "back_steps.*-2",
    ),
    ("unknown method", lambda f: GenerationConfig(method="steer"), GenerationConfigError, "'steer'"),
    (
        "prompt longer than the context (generation)",
        lambda f: generate(f.model, ["a" * 1100], config=GenerationConfig(method="none"), progress=False),
        ContextLengthError,
        "at most 1024",
    ),
    (
        "prompt longer than the context (extraction)",
        lambda f: collect_head_activations(f.model, ["a" * 1100], progress=False),
        ContextLengthError,
        "at most 1024",
    ),
    (
        "prompt longer than the context (scoring)",
        lambda f: score_choices(
            f.model, ["a" * 1100], [["b", "c"]], None, ScoringConfig(method="none"), progress=False
        ),
        ContextLengthError,
        "at most 1024",
    ),
    ("unknown model name", lambda f: load_model("llama-9000"), ModelNotAvailableError, "llama-9000"),
    (
        "Steerer for another model",
        lambda f: foreign_steerer(f.steerer).check_model(f.model),
        ModelMismatchError,
        r"\(n_layers, n_heads, d_head\) = \(3, 4, 16\).*\(2, 4, 16\)",
    ),
    (
        "Steerer for another model (load)",
        lambda f: Steerer.load(foreign_steerer(f.steerer).save(f.tmp_path / "other"), model=f.model),
        ModelMismatchError,
        "other-model",
    ),
    (
        "Steerer with a newer format version",
        lambda f: Steerer.load(
            tampered_steerer_folder(f.steerer, f.tmp_path, lambda m: m.update(format_version=99))
        ),
        SteererFormatError,
        "99",
    ),
    (
        "Steerer whose metadata claims another shape",
        lambda f: Steerer.load(tampered_steerer_folder(f.steerer, f.tmp_path, lambda m: m.update(d_head=32))),
        SteererFormatError,
        "shape",
    ),
    (
        "data folder missing a file",
        lambda f: load_truthfulqa(copy_data_without(f.data_dir, f.tmp_path, "mc_task.json")),
        DatasetError,
        "mc_task.json",
    ),
    (
        "data folder missing a column",
        lambda f: load_truthfulqa(copy_data_without(f.data_dir, f.tmp_path, "Incorrect Answers")),
        DatasetError,
        "Incorrect Answers",
    ),
    (
        "missing data folder",
        lambda f: load_task("copa", "eval", f.tmp_path / "nowhere"),
        DatasetError,
        "nowhere",
    ),
    (
        "non-finite activations (probes)",
        lambda f: HeadProbes().fit(activations(4).index_fill(0, torch.tensor([1]), float("nan")), labels(4)),
        ProbeError,
        "NaN or infinite",
    ),
    (
        "non-finite activations (extraction)",
        lambda f: collect_head_activations(f.nan_model, ["Q: a"], progress=False),
        NonFiniteActivationError,
        "non-finite",
    ),
    (
        "empty prompt list (generation)",
        lambda f: generate(f.model, [], config=GenerationConfig(method="none")),
        ValueError,
        "empty prompt list",
    ),
    (
        "empty prompt list (extraction)",
        lambda f: collect_head_activations(f.model, []),
        ValueError,
        "empty prompt list",
    ),
    ("empty prompt", lambda f: collect_head_activations(f.model, [[]]), ValueError, "prompt 0 has no tokens"),
    (
        "duplicate questions across splits",
        lambda f: Split(
            train=torch.tensor([0, 1]).numpy(),
            val=torch.tensor([2]).numpy(),
            test=torch.tensor([1, 3]).numpy(),
        ),
        DatasetError,
        r"\[1\] in both train and test",
    ),
    (
        "the same question twice in a dataset",
        lambda f: check_unique_questions([QUESTION, replace(QUESTION, id="q2", question=" is IT? ")], "test"),
        DatasetError,
        "appears twice",
    ),
    (
        "steering without a Steerer",
        lambda f: generate(f.model, ["Q: a"], None, GenerationConfig(method="fasb")),
        GenerationConfigError,
        "needs a Steerer",
    ),
]


class Fixtures:
    def __init__(self, model, steerer, tmp_path, data_dir, monkeypatch):
        self.model, self.steerer, self.tmp_path, self.data_dir = model, steerer, tmp_path, data_dir
        self._monkeypatch = monkeypatch

    @property
    def fitted_probes(self) -> HeadProbes:
        return HeadProbes().fit(activations(8), labels(8), activations(4), labels(4), progress=False)

    @property
    def nan_model(self):
        """The tiny model with a hook that writes NaN into layer 0's attention output (removed after the test)."""
        point = self.model.hook_dict["blocks.0.attn.hook_z"]
        handle = point.register_forward_hook(lambda module, args, out: out * float("nan"))
        self._monkeypatch.setattr(self, "_nan_handle", handle, raising=False)
        return self.model


@pytest.mark.parametrize("case, call, error, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(
    case, call, error, pattern, tiny_model, steerer, tmp_path, data_dir, monkeypatch
):
    fixtures = Fixtures(tiny_model, steerer, tmp_path, data_dir, monkeypatch)
    try:
        with pytest.raises(error, match=pattern):
            call(fixtures)
    finally:
        handle = getattr(fixtures, "_nan_handle", None)
        if handle is not None:
            handle.remove()

"""The researcher's API on plain TransformerLens: steering windows in ``Steerer.steering``, fitting from
contrastive pairs, and quiet model loading."""

from __future__ import annotations

import pytest
import torch

from fasb_tl import fit_steerer_from_pairs, load_model, steerer_from_activations
from fasb_tl.activations import collect_head_activations, hook_z_name
from fasb_tl.contrastive import PairsError, pair_split
from fasb_tl.data import load_builtin
from fasb_tl.fitting import model_meta
from fasb_tl.intervention import SteeringScale, check_positions

PROMPT = torch.tensor([[1, 40, 41, 42, 43, 44]])
GREEDY = {
    "max_new_tokens": 6,
    "do_sample": False,
    "return_type": "tokens",
    "verbose": False,
    "stop_at_eos": False,
}
ALPHA = 40.0


def window_mask(positions, prompt_len: int, length: int) -> torch.Tensor:
    """The positions a window steers in a sequence of ``length``, written out by hand."""
    columns = torch.arange(length)
    if positions == "generated":
        return (columns >= prompt_len - 1).float()
    stop = length if positions.stop is None else positions.stop
    return ((columns >= (positions.start or 0)) & (columns < stop)).float()


def greedy_by_hand(model, steerer, positions) -> torch.Tensor:
    """Greedy decoding with one full forward per token and the window's mask as an explicit scale."""
    tokens = PROMPT.clone()
    for _ in range(GREEDY["max_new_tokens"]):
        mask = window_mask(positions, PROMPT.shape[1], tokens.shape[1])
        with steerer.attach(model, SteeringScale(ALPHA * mask[None])):
            logits = model(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


@pytest.mark.parametrize("positions", ["generated", slice(2, 9), slice(7, None)])
@pytest.mark.parametrize("kv_cache", [True, False])
def test_a_steering_window_steers_the_same_tokens_as_a_hand_loop(tiny_model, steerer, positions, kv_cache):
    with steerer.steering(tiny_model, alpha=ALPHA, positions=positions):
        got = tiny_model.generate(PROMPT, use_past_kv_cache=kv_cache, **GREEDY)
    assert torch.equal(got.cpu(), greedy_by_hand(tiny_model, steerer, positions))


def test_the_windows_change_what_is_generated(tiny_model, steerer):
    outputs = {}
    for name, positions in {"none": slice(0, 0), "all": None, "generated": "generated"}.items():
        with steerer.steering(tiny_model, alpha=ALPHA, positions=positions):
            outputs[name] = tiny_model.generate(PROMPT, **GREEDY).tolist()
    assert outputs["none"] == tiny_model.generate(PROMPT, **GREEDY).tolist()
    assert len({str(tokens) for tokens in outputs.values()}) == 3


@pytest.mark.parametrize(
    ("positions", "steered"), [("generated", [5]), (slice(1, 3), [1, 2]), (None, range(6))]
)
def test_a_window_adds_the_vector_at_exactly_its_positions(tiny_model, steerer, positions, steered):
    layer = int(steerer.heads[0, 0])
    on_layer = steerer.heads[:, 0] == layer
    name = hook_z_name(layer)
    _, plain = tiny_model.run_with_cache(PROMPT, names_filter=name)
    with steerer.steering(tiny_model, alpha=ALPHA, positions=positions):
        _, steered_cache = tiny_model.run_with_cache(PROMPT, names_filter=name)
    change = (steered_cache[name] - plain[name])[0][:, steerer.heads[on_layer, 1]]
    expected = torch.zeros_like(change)
    expected[list(steered)] = ALPHA * steerer.delta[on_layer]
    torch.testing.assert_close(change, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad", ["prompt", slice(-3, None), slice(0, 8, 2), 3, slice(1.5, 4)])
def test_a_bad_window_is_refused_naming_it(bad):
    with pytest.raises((TypeError, ValueError), match="positions must be"):
        check_positions(bad)


def test_a_window_leaves_no_hook_behind_even_on_error(tiny_model, steerer):
    plain = tiny_model(PROMPT)
    with (
        pytest.raises(RuntimeError, match="inside"),
        steerer.steering(tiny_model, alpha=ALPHA, positions="generated"),
    ):
        raise RuntimeError("inside the block")
    assert not tiny_model._forward_pre_hooks and not tiny_model._forward_hooks
    assert torch.equal(tiny_model(PROMPT), plain)


@pytest.fixture(scope="module")
def qa_pairs():
    records = load_builtin()[:24]
    positives = [{"question": r.question, "answer": r.true_answers[0]} for r in records]
    negatives = [{"question": r.question, "answer": r.false_answers[0]} for r in records]
    return positives, negatives


TEMPLATE = "Question: {question}\nAnswer: {answer}"


def test_pairs_fit_equals_the_low_level_path(tiny_model, qa_pairs):
    positives, negatives = qa_pairs
    fitted = fit_steerer_from_pairs(tiny_model, positives, negatives, template=TEMPLATE, k=4, progress=False)
    texts = [TEMPLATE.format(**item) for item in positives + negatives]
    acts = collect_head_activations(tiny_model, texts, progress=False)
    train, val = pair_split(len(positives), 0.25, 42)
    n = len(positives)

    def side(indices):
        labels = torch.tensor([1] * len(indices) + [0] * len(indices))
        return acts[indices + [n + i for i in indices]], labels

    meta = model_meta(
        tiny_model, "mass_mean", dataset="pairs", split_seed=42, n_train=len(train), n_val=len(val)
    )
    by_hand = steerer_from_activations(*side(train), *side(val), acts, meta, k=4, progress=False)
    for name, tensor in by_hand.tensors().items():
        torch.testing.assert_close(fitted.tensors()[name], tensor, msg=name)
    assert fitted.meta == by_hand.meta and (fitted.meta.n_train, fitted.meta.n_val) == (18, 6)


def test_pairs_orient_the_probes_and_directions_towards_the_positives(tiny_model, qa_pairs):
    positives, negatives = qa_pairs
    forward = fit_steerer_from_pairs(tiny_model, positives, negatives, template=TEMPLATE, k=4, progress=False)
    backward = fit_steerer_from_pairs(
        tiny_model, negatives, positives, template=TEMPLATE, k=4, progress=False
    )
    torch.testing.assert_close(forward.val_accuracy, backward.val_accuracy)
    assert torch.equal(forward.heads, backward.heads)
    torch.testing.assert_close(forward.directions, -backward.directions)
    with forward.monitoring(tiny_model, all_positions=False) as readout:
        p_true = []
        for items in (positives, negatives):
            for item in items:
                tiny_model(TEMPLATE.format(**item), return_type=None)
                p_true.append(float(readout.p_true))
    n = len(positives)
    assert sum(p_true[:n]) / n > sum(p_true[n:]) / n


def test_string_pairs_fill_the_text_field_of_a_template(tiny_model):
    positives = [f"I am glad to help with task {i}." for i in range(6)]
    negatives = [f"I refuse to help with task {i}." for i in range(6)]
    plain = fit_steerer_from_pairs(
        tiny_model,
        [f"Reply: {t}" for t in positives],
        [f"Reply: {t}" for t in negatives],
        k=2,
        progress=False,
    )
    templated = fit_steerer_from_pairs(
        tiny_model, positives, negatives, template="Reply: {text}", k=2, progress=False
    )
    assert all(torch.equal(plain.tensors()[n], t) for n, t in templated.tensors().items())


@pytest.mark.parametrize(
    ("positives", "negatives", "kwargs", "error", "match"),
    [
        (["a", "b", "c"], ["x", "y"], {}, PairsError, "3 positives and 2 negatives"),
        (["a"], ["x"], {}, PairsError, "at least 2 pairs"),
        ([{"question": "q"}] * 2, ["x", "y"], {}, PairsError, r"positives\[0\] is a dict: pass template="),
        ([{"question": "q"}] * 2, [{"question": "q"}] * 2, {"template": TEMPLATE}, PairsError, "'answer'"),
        ("positive text", ["x"], {}, TypeError, "positives must be a list of prompts"),
        (["a", "b"], ["x", "y"], {"val_fraction": 1.0}, PairsError, "val_fraction must be in"),
        (["a", "b"], ["x", "y"], {"k": 99}, ValueError, "k must be between 1 and"),
    ],
)
def test_bad_pairs_are_refused_before_any_forward(tiny_model, positives, negatives, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_steerer_from_pairs(tiny_model, positives, negatives, progress=False, **kwargs)


def test_pair_split_keeps_pairs_whole_and_is_seeded():
    train, val = pair_split(10, 0.3, seed=7)
    assert sorted(train + val) == list(range(10)) and len(val) == 3
    assert pair_split(10, 0.3, seed=7) == (train, val)
    assert len({tuple(pair_split(10, 0.3, seed)[1]) for seed in range(5)}) > 1


@pytest.mark.parametrize("progress", [False, True])
def test_load_model_progress_controls_the_loading_bar(capfd, progress):
    load_model("tiny-random-llama", progress=progress)
    assert ("Loading weights" in capfd.readouterr().err) is progress


def test_a_model_that_is_not_a_bridge_is_refused_by_name(steerer):
    hf_model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="TransformerBridge.*torch.nn.modules.linear.Linear"):
        collect_head_activations(hf_model, ["Q: A:"])
    with pytest.raises(TypeError, match="TransformerBridge"), steerer.steering(hf_model, alpha=1.0):
        pass

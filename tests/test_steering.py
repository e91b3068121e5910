import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fasb_tl import HeadProbes, collect_head_activations
from fasb_tl.caa import ResidualSteerer
from fasb_tl.data import dataset_splits, load_builtin, probe_bank, tuning_bank
from fasb_tl.fitting import _bank_activations, control_steerer, fit_steerer
from fasb_tl.intervention import Intervention, ScaleShapeError, SteeringScale
from fasb_tl.models import encode
from fasb_tl.steering import ModelMismatchError, Readout, Steerer, SteererFormatError, SteererMeta


@pytest.fixture(scope="module")
def builtin_split():
    records = load_builtin()
    return records, dataset_splits("builtin", len(records))[0]


@pytest.fixture(scope="module")
def fitted(tiny_model, builtin_split):
    records, split = builtin_split
    return fit_steerer(tiny_model, records, split, k=5, dataset="builtin", progress=False)


def test_fit_steerer_produces_consistent_tensors(fitted, builtin_split):
    steerer = fitted
    probes = steerer.fit_report
    assert steerer.k == 5 and steerer.heads.tolist() == probes.top_heads(5).tolist()
    assert torch.allclose(steerer.directions.norm(dim=1), torch.ones(5))
    assert (steerer.sigmas > 0).all()
    assert steerer.meta.n_train == len(builtin_split[1].train)


def test_probe_activations_read_inside_tuning_prompts_equal_their_own_forward(tiny_model, builtin_split):
    records, split = builtin_split
    probe_prompts = probe_bank([records[i] for i in split.train[:12]]).prompts
    # Only some questions are in the tuning records, so some probe prompts need a forward of their own.
    tuning_prompts = tuning_bank([records[i] for i in split.train[:6]] + records[-3:], seed=1)
    probe_acts, tuning_acts = _bank_activations(tiny_model, probe_prompts, tuning_prompts, 5, False)
    hosted = sum(any(t.startswith(p + " Q: ") for t in tuning_prompts) for p in probe_prompts)
    assert 0 < hosted < len(probe_prompts)
    alone = collect_head_activations(tiny_model, probe_prompts, batch_size=3, progress=False)
    assert torch.allclose(probe_acts, alone, atol=1e-5)
    assert torch.allclose(
        tuning_acts, collect_head_activations(tiny_model, tuning_prompts, progress=False), atol=1e-5
    )


def test_random_direction_keeps_the_same_heads_and_probes(tiny_model, fitted, builtin_split):
    records, split = builtin_split
    control = fit_steerer(tiny_model, records, split, k=5, direction="random", progress=False)
    steerer = fitted
    assert torch.equal(control.heads, steerer.heads)
    assert torch.equal(control.probe_weights, steerer.probe_weights)
    assert not torch.allclose(control.directions, steerer.directions)


def test_p_true_equals_mean_of_sklearn_predict_proba(tiny_model, builtin_split):
    records, split = builtin_split
    bank = probe_bank([records[i] for i in split.train[:30]])
    acts = collect_head_activations(tiny_model, bank.prompts, progress=False)
    probes = HeadProbes("sklearn").fit(acts, bank.labels, acts, bank.labels, progress=False)
    heads = probes.top_heads(4)
    cfg = tiny_model.cfg
    steerer = Steerer(
        heads=heads,
        directions=torch.nn.functional.normalize(torch.randn(4, 16), dim=1),
        sigmas=torch.ones(4),
        probe_weights=probes.coef_[heads[:, 0], heads[:, 1]],
        probe_bias=probes.intercept_[heads[:, 0], heads[:, 1]],
        val_accuracy=probes.val_accuracy_,
        meta=SteererMeta("tiny", cfg.n_layers, cfg.n_heads, cfg.d_head, "random"),
    )
    expected = np.mean(
        [
            LogisticRegression(max_iter=1000)
            .fit(acts[:, l, h].numpy(), bank.labels.numpy())
            .predict_proba(acts[:, l, h].numpy())[:, 1]
            for l, h in heads.tolist()
        ],
        axis=0,
    )
    got = steerer.p_true(acts[:, heads[:, 0], heads[:, 1]])
    assert np.allclose(got.numpy(), expected, atol=1e-5)


def test_save_load_round_trips_exactly(fitted, tmp_path, tiny_model):
    steerer = fitted
    steerer.save(tmp_path / "s")
    loaded = Steerer.load(tmp_path / "s", model=tiny_model)
    for name, tensor in steerer.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert loaded.meta == steerer.meta
    with pytest.raises(FileExistsError):
        steerer.save(tmp_path / "s")


def test_mismatched_model_is_refused(fitted, smollm2):
    steerer = fitted
    with pytest.raises(ModelMismatchError, match=r"\(2, 4, 16\).*\(30, 9, 64\)"):
        steerer.check_model(smollm2)


def test_pickle_and_tampering_are_refused(fitted, tmp_path):
    steerer = fitted
    folder = steerer.save(tmp_path / "s")
    (folder / "steerer.safetensors").write_bytes(pickle.dumps({"heads": torch.zeros(2)}))
    with pytest.raises(SteererFormatError, match="cannot read the Steerer safely"):
        Steerer.load(folder)
    folder = steerer.save(tmp_path / "t")
    meta = json.loads((folder / "steerer.json").read_text())
    meta["d_head"] = 32
    (folder / "steerer.json").write_text(json.dumps(meta))
    with pytest.raises(SteererFormatError, match="'directions' has shape \\(5, 16\\), expected \\(5, 32\\)"):
        Steerer.load(folder)
    meta["d_head"], meta["format_version"] = 16, 99
    (folder / "steerer.json").write_text(json.dumps(meta))
    with pytest.raises(SteererFormatError, match="format_version 99"):
        Steerer.load(folder)


def test_monitored_p_true_equals_p_true_of_extracted_activations(fitted, tiny_model):
    steerer = fitted
    prompts = ["Q: Is it? A: Yes.", "Q: Why not? A: Because."]
    acts = collect_head_activations(tiny_model, prompts, progress=False)
    expected = steerer.p_true(acts[:, steerer.heads[:, 0], steerer.heads[:, 1]])
    for index, prompt in enumerate(prompts):
        ids = torch.tensor([encode(tiny_model, prompt)])
        with steerer.monitoring(tiny_model, all_positions=False) as readout:
            tiny_model(ids, return_type=None)
        assert readout.p_true.item() == pytest.approx(expected[index].item(), abs=1e-5)
        _, cache = tiny_model.run_with_cache(ids)
        assert steerer.p_true_from_cache(cache)[0, -1].item() == pytest.approx(
            expected[index].item(), abs=1e-5
        )


def test_hooks_read_and_steer_then_leave_no_hook(fitted, tiny_model):
    steerer = fitted
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    plain = tiny_model(ids)
    readout = Readout(steerer)
    with steerer.attach(tiny_model, SteeringScale(torch.full((1, 1), 50.0)), readout):
        steered = tiny_model(ids)
    assert not torch.allclose(plain, steered)
    assert set(readout.values) == set(steerer.layers)
    assert torch.equal(tiny_model(ids), plain)
    with pytest.raises(RuntimeError, match="boom"), steerer.steering(tiny_model, alpha=5.0):
        raise RuntimeError("boom")
    assert torch.equal(tiny_model(ids), plain)


def test_steering_block_equals_attach_with_the_same_scale(fitted, tiny_model):
    steerer = fitted
    ids = torch.tensor([[1, 40, 41, 42, 43], [1, 44, 45, 46, 47]])
    with steerer.attach(tiny_model, SteeringScale(torch.full((2, 5), 15.0 * 0.4))):
        expected = tiny_model(ids)
    with steerer.steering(tiny_model, alpha=15.0, strength=0.4):
        got = tiny_model(ids)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, tiny_model(ids))


def test_reading_sees_the_values_before_steering_at_the_same_layer(fitted, tiny_model):
    first_layer = fitted.heads[:, 0] == fitted.heads[0, 0]
    tensors = {name: fitted.tensors()[name][first_layer] for name in ("heads", "directions", "sigmas")}
    tensors |= {name: fitted.tensors()[name][first_layer] for name in ("probe_weights", "probe_bias")}
    one_layer = dataclasses.replace(fitted, **tensors)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with one_layer.monitoring(tiny_model) as plain:
        tiny_model(ids, return_type=None)
    # Hooks run in the order they were installed: a monitoring block inside a steering block reads the
    # steered values, attach() reads before its own steering (what the FASB trigger needs).
    with one_layer.steering(tiny_model, alpha=50.0), one_layer.monitoring(tiny_model) as under_steering:
        tiny_model(ids, return_type=None)
    assert not torch.allclose(under_steering.p_true, plain.p_true)
    readout = Readout(one_layer)
    with one_layer.attach(tiny_model, SteeringScale(50.0), readout):
        tiny_model(ids, return_type=None)
    assert torch.equal(readout.p_true, plain.p_true)


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (torch.ones(5), r"a number or a \[batch, pos\] tensor, got shape \(5,\)"),
        (torch.ones(3, 1), r"shape \(3, 1\) does not fit activations of batch 1 and 5 positions"),
        (torch.ones(1, 4), r"shape \(1, 4\) does not fit"),
        (float("nan"), "must be finite"),
    ],
)
def test_a_scale_of_the_wrong_shape_is_refused_with_its_shape(fitted, tiny_model, scale, message):
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with pytest.raises(ScaleShapeError, match=message):
        steering = SteeringScale()
        steering.set(scale)
        with fitted.attach(tiny_model, steering):
            tiny_model(ids)


def test_to_moves_the_steering_vectors_and_keeps_probes_float32(fitted, tmp_path):
    half = fitted.to(dtype=torch.bfloat16)
    assert half.directions.dtype == half.sigmas.dtype == torch.bfloat16
    assert half.probe_weights.dtype == half.probe_bias.dtype == torch.float32
    assert torch.equal(half.probe_weights, fitted.probe_weights)
    assert torch.allclose(half.delta.float(), fitted.delta, rtol=1e-2)
    loaded = Steerer.load(half.save(tmp_path / "half"))
    assert loaded.directions.dtype == torch.float32
    assert torch.equal(loaded.directions, half.directions.float())


def test_controls_keep_heads_probes_and_sigmas(fitted):
    reversed_ = control_steerer(fitted, "reversed")
    assert torch.equal(reversed_.directions, -fitted.directions)
    assert reversed_.meta.direction == "reversed-mass_mean"
    random_ = control_steerer(fitted, "random", seed=3)
    assert torch.allclose(random_.directions.norm(dim=1), torch.ones(fitted.k))
    assert not torch.allclose(random_.directions, fitted.directions)
    for control in (reversed_, random_):
        for name in ("heads", "sigmas", "probe_weights", "probe_bias", "val_accuracy"):
            assert torch.equal(getattr(control, name), getattr(fitted, name)), name


def test_steerer_and_caa_vector_are_interventions_and_the_steerer_repr_is_short(fitted):
    caa = ResidualSteerer(layer=0, vector=torch.ones(64), model_name="tiny", n_layers=2)
    assert isinstance(fitted, Intervention) and isinstance(caa, Intervention)
    text = repr(fitted)
    assert text.startswith("Steerer(model=") and "k=5" in text and "direction='mass_mean'" in text
    assert len(text) < 200


@pytest.mark.integration
def test_torch_and_sklearn_probes_agree_on_smollm2(smollm2, builtin_split):
    records, split = builtin_split
    train, val = probe_bank([records[i] for i in split.train]), probe_bank([records[i] for i in split.val])
    acts = collect_head_activations(smollm2, train.prompts + val.prompts, batch_size=32, progress=False)
    n = len(train.prompts)
    args = (acts[:n], train.labels, acts[n:], val.labels)
    fast = HeadProbes("torch").fit(*args, progress=False)
    ref = HeadProbes("sklearn").fit(*args, progress=False)
    assert (fast.val_accuracy_ - ref.val_accuracy_).abs().mean() <= 0.01
    overlap = {tuple(h) for h in fast.top_heads(24).tolist()} & {tuple(h) for h in ref.top_heads(24).tolist()}
    assert len(overlap) / 24 >= 0.9
    assert fast.val_accuracy_.max() > 0.65


def test_to_frame_lists_every_head_with_the_accuracy_grid_and_the_selection(fitted):
    frame = fitted.to_frame()
    layers, heads = fitted.val_accuracy.shape
    assert len(frame) == layers * heads
    grid = torch.tensor(frame["val_accuracy"].to_numpy(), dtype=torch.float32).reshape(layers, heads)
    assert torch.equal(grid, fitted.val_accuracy)
    assert torch.equal(
        torch.tensor(frame["train_accuracy"].to_numpy()).reshape(layers, heads),
        fitted.fit_report.train_accuracy_,
    )
    assert ((frame["val_low"] <= frame["val_accuracy"]) & (frame["val_accuracy"] <= frame["val_high"])).all()
    chosen = frame[frame["selected"]].sort_values("rank")
    assert chosen[["layer", "head"]].to_numpy().tolist() == fitted.heads.tolist()
    assert chosen["sigma"].tolist() == pytest.approx(fitted.sigmas.tolist())
    assert frame.loc[~frame["selected"], "sigma"].isna().all()
    without_report = dataclasses.replace(fitted, fit_report=None).to_frame()
    assert "train_accuracy" not in without_report and without_report["selected"].sum() == fitted.k


def test_head_probes_repr_names_the_grid_and_the_accuracy_range(fitted):
    text = repr(fitted.fit_report)
    assert text.startswith("HeadProbes(backend='torch', 2 layers x 4 heads, ")
    low, high = float(fitted.val_accuracy.min()), float(fitted.val_accuracy.max())
    assert f"val_accuracy={low:.3f}-{high:.3f}" in text
    assert repr(HeadProbes()) == "HeadProbes(backend='torch', not fitted)"

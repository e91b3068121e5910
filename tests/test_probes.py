import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fasb_tl.directions import head_directions
from fasb_tl.probes import HeadProbes, ProbeError, _check_xy, _fit_torch

PLANTED = [(1, 2), (3, 0), (0, 4)]


def planted_data(n: int, seed: int, direction: torch.Tensor):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 5, 16, generator=generator)
    y = (torch.rand(n, generator=generator) > 0.5).long()
    for rank, (layer, head) in enumerate(PLANTED):
        x[:, layer, head] += (3.0 - rank * 0.7) * (2 * y[:, None] - 1) * direction
    return x, y


@pytest.fixture(scope="module")
def planted():
    direction = torch.nn.functional.normalize(
        torch.randn(16, generator=torch.Generator().manual_seed(1)), dim=0
    )
    return direction, planted_data(800, 2, direction), planted_data(400, 3, direction)


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_top_heads_finds_the_planted_heads(planted, backend):
    _, (x, y), (xv, yv) = planted
    probes = HeadProbes(backend=backend).fit(x, y, xv, yv, progress=False)
    assert [tuple(h) for h in probes.top_heads(3).tolist()] == PLANTED
    assert probes.val_accuracy_.shape == (4, 5)


def test_mass_mean_direction_points_along_the_plant(planted):
    direction, (x, y), _ = planted
    heads = torch.tensor(PLANTED)
    acts = x[:, heads[:, 0], heads[:, 1]]
    found = head_directions("mass_mean", acts, y, torch.zeros(3, 16))
    cosines = found @ direction
    assert (cosines > 0.99).all()
    assert torch.allclose(found.norm(dim=1), torch.ones(3))


def test_torch_backend_matches_sklearn(planted):
    _, (x, y), (xv, yv) = planted
    fast = HeadProbes("torch").fit(x, y, xv, yv, progress=False)
    ref = HeadProbes("sklearn").fit(x, y, xv, yv, progress=False)
    assert (fast.val_accuracy_ - ref.val_accuracy_).abs().mean() <= 0.01
    # sklearn's lbfgs stops at tol=1e-4: weights agree to ~2% of their scale, and Newton's optimum is never worse.
    assert (fast.coef_ - ref.coef_).abs().max() <= 0.02 * ref.coef_.abs().max()
    assert (fast.intercept_ - ref.intercept_).abs().max() <= 0.02 * ref.coef_.abs().max()
    assert (objective(fast, x, y) <= objective(ref, x, y) + 1e-4).all()


def objective(probes, x, y):
    logits = probes.decision_function(x).double()
    targets = y.double()[:, None, None].expand_as(logits)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(0)
    return loss + 0.5 * (probes.coef_.double() ** 2).sum(-1)


def mixed_heads(n: int = 300, heads: int = 6, seed: int = 5):
    """Heads of mixed difficulty: pure noise, a weak signal, and a separable head with large features
    (an ill-conditioned Hessian, which float32 handles worst)."""
    generator = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=generator) > 0.5).long()
    x = torch.randn(n, heads, 16, generator=generator)
    x[:, 1, 0] += 0.5 * (2 * y - 1)
    x[:, 2] *= 40.0
    x[:, 2, 0] += 200.0 * (2 * y - 1)
    return x, y


def test_torch_fit_reaches_the_float64_optimum_despite_float32_hessians():
    x, y = mixed_heads()
    w, b, unconverged = _fit_torch(x, y, 1.0, 100, 1e-12)
    assert unconverged == 0
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    logits = torch.einsum("nhd,hd->nh", x.double(), w) + b
    targets = y.double()[:, None].expand_as(logits)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    (loss + 0.5 * (w**2).sum()).backward()
    assert w.grad.abs().max() <= 1e-5 * max(1.0, float(w.detach().abs().max()))
    assert b.grad.abs().max() <= 1e-5


def test_torch_fit_of_a_head_does_not_depend_on_the_heads_fitted_with_it():
    x, y = mixed_heads()
    w_all, b_all, _ = _fit_torch(x, y, 1.0, 100, 1e-12)
    for head in range(x.shape[1]):
        w, b, _ = _fit_torch(x[:, head : head + 1], y, 1.0, 100, 1e-12)
        assert torch.allclose(w[0], w_all[head], rtol=1e-6, atol=1e-8)
        assert torch.allclose(b[0], b_all[head], rtol=1e-6, atol=1e-8)


def test_torch_fit_reports_problems_stopped_by_the_iteration_limit():
    x, y = mixed_heads()
    assert _fit_torch(x, y, 1.0, 1, 1e-12)[2] == x.shape[1]


def test_large_finite_activations_are_not_mistaken_for_infinite():
    labels = torch.tensor([0, 1, 0, 1])
    huge = torch.full((4, 1, 1, 2), 3e38)  # finite, but their float32 sum overflows
    _check_xy(huge, labels, "fit")
    huge[2, 0, 0, 1] = torch.inf
    with pytest.raises(ProbeError, match="NaN or infinite"):
        _check_xy(huge, labels, "fit")


def test_predict_proba_equals_sklearn_for_the_same_weights(planted):
    _, (x, y), _ = planted
    probes = HeadProbes("sklearn").fit(x, y, progress=False)
    model = LogisticRegression(max_iter=1000).fit(x[:, 1, 2].numpy(), y.numpy())
    expected = model.predict_proba(x[:, 1, 2].numpy())[:, 1]
    assert np.allclose(probes.predict_proba(x)[:, 1, 2].numpy(), expected, atol=1e-5)


def test_the_lowest_tie_rule_breaks_ties_by_layer_then_head():
    probes = HeadProbes()
    probes.val_accuracy_ = torch.tensor([[0.5, 0.7], [0.7, 0.7]])
    assert probes.top_heads(3, tie_break="lowest").tolist() == [[0, 1], [1, 0], [1, 1]]


def released_top_k(accuracy: torch.Tensor, k: int) -> list[list[int]]:
    """The released FASB/ITI code's head choice, as written there: argsort of the flattened grid, reversed."""
    heads = accuracy.shape[1]
    acc = np.array(accuracy.flatten().tolist())
    return [[int(i) // heads, int(i) % heads] for i in np.argsort(acc)[::-1][:k]]


def test_the_default_tie_rule_is_the_released_codes():
    # A small grid sorts by insertion (stable), so the released expression sends ties to the higher index.
    probes = HeadProbes()
    probes.val_accuracy_ = torch.tensor([[0.5, 0.7], [0.7, 0.7]])
    assert probes.top_heads(3).tolist() == [[1, 1], [1, 0], [0, 1]]
    assert probes.top_heads(2).tolist() != probes.top_heads(2, tie_break="lowest").tolist()


@pytest.mark.parametrize("seed", range(5))
def test_the_released_rule_matches_the_released_expression_on_many_ties(seed):
    # 30 x 9 grids of accuracies from 17 levels: the 24th place is a tie in most of them, and numpy's
    # default sort is not stable at this size, so only the released expression itself gives its choice.
    generator = torch.Generator().manual_seed(seed)
    accuracy = torch.randint(60, 77, (30, 9), generator=generator).float() / 100
    probes = HeadProbes()
    probes.val_accuracy_ = accuracy
    assert probes.top_heads(24).tolist() == released_top_k(accuracy, 24)
    by_value = sorted(accuracy.flatten().tolist(), reverse=True)[:24]
    chosen = [
        float(accuracy[layer, head]) for layer, head in probes.top_heads(24, tie_break="lowest").tolist()
    ]
    assert chosen == by_value


def test_an_unknown_tie_rule_is_refused():
    probes = HeadProbes()
    probes.val_accuracy_ = torch.tensor([[0.5, 0.7]])
    with pytest.raises(ProbeError, match="unknown tie_break 'random'"):
        probes.top_heads(1, tie_break="random")


def test_probe_errors(planted):
    _, (x, y), (xv, yv) = planted
    with pytest.raises(ProbeError, match="only label 1"):
        HeadProbes().fit(x, torch.ones_like(y), progress=False)
    with pytest.raises(ProbeError, match="unknown probe backend"):
        HeadProbes(backend="jax")
    probes = HeadProbes().fit(x, y, xv, yv, progress=False)
    for k in (0, 21):
        with pytest.raises(ProbeError, match="k must be between 1 and n_layers \\* n_heads = 20"):
            probes.top_heads(k)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ProbeError, match="NaN"):
        HeadProbes().fit(bad, y, progress=False)

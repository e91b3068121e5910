"""One logistic-regression probe per attention head, fitted and scored all at once.

Both backends minimise sklearn's ``LogisticRegression`` default objective (L2, ``C = 1``, unpenalised
intercept) on raw features:

    C * sum_i logloss(y_i, sigmoid(w . x_i + b)) + 0.5 * ||w||^2

``"sklearn"`` is the reference (one ``LogisticRegression(max_iter=1000)`` per head, as in the ITI/FASB code);
``"torch"`` solves the ``layer * head`` problems together with batched, damped Newton steps (float64
gradients and line search, float32 Hessians).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

Backend = Literal["torch", "sklearn"]
BACKENDS = ("torch", "sklearn")
TieBreak = Literal["released", "lowest"]
TIE_BREAKS = ("released", "lowest")


def top_head_indices(
    accuracy: Float[Tensor, "layer head"], k: int, tie_break: TieBreak = "released"
) -> Int[Tensor, "k 2"]:
    """The ``k`` most accurate heads as ``(layer, head)`` rows, best first.

    ``"released"`` is the released FASB/ITI code's rule, ``np.argsort(acc)[::-1][:k]`` over the layer-major
    grid in float64. numpy's default sort is not stable, so among equal accuracies the head it picks follows
    numpy's sort implementation: the same numpy build picks the same heads as the released code would.
    ``"lowest"`` sends ties to the lower layer, then the lower head, whatever numpy does.
    """
    if tie_break not in TIE_BREAKS:
        raise ProbeError(f"unknown tie_break {tie_break!r}: expected one of {TIE_BREAKS}")
    layers, heads = accuracy.shape
    if not 1 <= k <= layers * heads:
        raise ProbeError(f"k must be between 1 and n_layers * n_heads = {layers * heads}, got {k}")
    flat = accuracy.detach().cpu().double().flatten().numpy()
    if tie_break == "released":
        best = np.argsort(flat)[::-1][:k].tolist()
    else:
        best = sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k]
    return torch.tensor([[i // heads, i % heads] for i in best], dtype=torch.long)


class ConvergenceWarning(UserWarning):
    """Some probes stopped at the iteration limit before reaching the tolerance."""


class ProbeError(ValueError):
    """Probe data or settings that cannot give a meaningful probe."""


def _check_xy(x: Tensor, y: Tensor, what: str) -> None:
    if x.ndim != 4:
        raise ProbeError(f"{what}: expected activations [n, layer, head, d_head], got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ProbeError(f"{what}: expected {x.shape[0]} labels, got shape {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ProbeError(f"{what}: no examples")
    values = set(torch.unique(y).tolist())
    if not values <= {0, 1}:
        raise ProbeError(f"{what}: labels must be 0/1, got {sorted(values)}")
    # NaN and inf propagate into a sum, so a finite sum proves every value finite in one pass; a sum that
    # overflows from large finite values falls through to the element-wise test, which clears it.
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise ProbeError(f"{what}: activations contain NaN or infinite values")


def _fit_torch(
    x: Float[Tensor, "n problem d"], y: Int[Tensor, " n"], c: float, max_iter: int, tol: float
) -> tuple[Float[Tensor, "problem d"], Float[Tensor, " problem"], int]:
    """Batched damped Newton for independent L2 logistic regressions that share labels; also returns how many
    problems were still short of ``tol`` after ``max_iter`` iterations.

    Gradients, logits, objectives and the line search are float64, so each problem stops at its float64
    optimum (to ``tol``). The Hessians are built and solved in float32: their batched products were most of
    the fit, and an approximate Hessian only makes each step slightly less than a full Newton step, which the
    float64 line search still judges.
    """
    n, problems, d = x.shape
    y = y.to(torch.float64)
    rows = torch.empty(problems, n, d + 1, dtype=torch.float64)
    rows[:, :, :d] = x.transpose(0, 1)
    rows[:, :, d] = 1.0
    rows32 = rows.to(torch.float32)
    theta = torch.zeros(problems, d + 1, dtype=torch.float64)
    penalty = torch.ones(d + 1, dtype=torch.float64)
    penalty[-1] = 0.0
    # The intercept is unpenalised; a tiny ridge keeps H invertible when a class is (nearly) separable.
    ridge = torch.diag(penalty).to(torch.float32)
    ridge[-1, -1] = 1e-10

    def objective(logits: Tensor, t: Tensor) -> Tensor:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y.expand_as(logits), reduction="none"
        ).sum(1)
        return c * loss + 0.5 * (t * t * penalty).sum(1)

    logits = torch.zeros(problems, n, dtype=torch.float64)
    current = objective(logits, theta)
    active = torch.arange(problems)
    done = torch.zeros(problems, dtype=torch.bool)
    for _ in range(max_iter):
        t = theta[active]
        p = torch.sigmoid(logits)
        grad = c * torch.bmm((p - y).unsqueeze(1), rows).squeeze(1) + penalty * t
        scaled = rows32 * (c * p * (1 - p)).sqrt().to(torch.float32)[:, :, None]
        hess = torch.bmm(scaled.transpose(1, 2), scaled) + ridge
        step = torch.linalg.solve(hess, grad.to(torch.float32).unsqueeze(-1)).squeeze(-1).to(torch.float64)
        # Newton decrement: half of it estimates how far each objective still is from its minimum.
        done = (grad * step).sum(1) / 2 <= tol * (1 + current[active].abs())
        if done.all():
            break
        # Each problem stops at its own convergence. Dropping a finished one copies every remaining design row,
        # so that waits until a quarter are done; until then finished problems stay in place with a zero step.
        if 4 * done.sum() >= done.numel():
            keep = ~done
            active, rows, rows32 = active[keep], rows[keep], rows32[keep]
            t, step, logits = t[keep], step[keep], logits[keep]
        else:
            step = torch.where(done[:, None], 0.0, step)
        before = current[active]
        # Logits are linear in theta, so one product serves every step length the line search tries.
        delta = torch.bmm(rows, step.unsqueeze(-1)).squeeze(-1)
        scale = torch.ones(active.numel(), dtype=torch.float64)
        candidate = objective(logits - scale[:, None] * delta, t - scale[:, None] * step)
        for _ in range(30):
            worse = candidate > before
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
            candidate = objective(logits - scale[:, None] * delta, t - scale[:, None] * step)
        improved = candidate <= before
        theta[active] = torch.where(improved[:, None], t - scale[:, None] * step, t)
        logits = torch.where(improved[:, None], logits - scale[:, None] * delta, logits)
        current[active] = torch.where(improved, candidate, before)
    return theta[:, :-1], theta[:, -1], int((~done).sum())


def wilson_interval(accuracy: np.ndarray, n: int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (95% by default) of accuracies measured on ``n`` items."""
    centre = (accuracy + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(accuracy * (1 - accuracy) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


class HeadProbes:
    """Per-head linear probes with an sklearn-style interface over ``[n, layer, head, d_head]`` activations.

    After ``fit``, ``coef_`` is ``[layer, head, d_head]``, ``intercept_``, ``train_accuracy_`` and
    ``val_accuracy_`` are ``[layer, head]``. Example::

        probes = HeadProbes().fit(acts[train], labels[train], acts[val], labels[val])
        probes.top_heads(8)  # [8, 2] (layer, head), best validation accuracy first
        probes.predict_proba(acts[val]).shape  # (m, layer, head)
    """

    def __init__(
        self, backend: Backend = "torch", C: float = 1.0, max_iter: int = 1000, random_state: int = 42
    ):
        if backend not in BACKENDS:
            raise ProbeError(f"unknown probe backend {backend!r}: expected one of {BACKENDS}")
        if not C > 0:
            raise ProbeError(f"C must be > 0, got {C}")
        self.backend = backend
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state
        self.coef_: Float[Tensor, "layer head d_head"] | None = None
        self.intercept_: Float[Tensor, "layer head"] | None = None
        self.val_accuracy_: Float[Tensor, "layer head"] | None = None
        self.train_accuracy_: Float[Tensor, "layer head"] | None = None
        self.n_train_ = 0
        self.n_val_ = 0

    def __repr__(self) -> str:
        if self.coef_ is None:
            return f"HeadProbes(backend={self.backend!r}, not fitted)"
        layers, heads = self.coef_.shape[:2]
        text = f"HeadProbes(backend={self.backend!r}, {layers} layers x {heads} heads, {self.n_train_} train"
        if self.val_accuracy_ is None:
            return text + ")"
        low, high = float(self.val_accuracy_.min()), float(self.val_accuracy_.max())
        return text + f" / {self.n_val_} val, val_accuracy={low:.3f}-{high:.3f})"

    def fit(
        self,
        x: Float[Tensor, "n layer head d_head"],
        y: Int[Tensor, " n"],
        x_val: Float[Tensor, "m layer head d_head"] | None = None,
        y_val: Int[Tensor, " m"] | None = None,
        progress: bool = True,
    ) -> HeadProbes:
        """Fit every head's probe on ``(x, y)``; when validation data is given, score it too."""
        y = torch.as_tensor(y)
        _check_xy(x, y, "fit")
        if torch.unique(y).numel() < 2:
            raise ProbeError(f"fit: the probe bank has only label {int(y[0])}; both labels are needed")
        n, layers, heads, d_head = x.shape
        if self.backend == "torch":
            flat = x.reshape(n, layers * heads, d_head)
            coef, intercept, unconverged = [], [], 0
            # Each Newton iteration passes over a chunk's [problems, n, d] design tensors (a float64 copy, a float32
            # copy and its weighted version) several times, so chunks are sized to stay in the last-level cache
            # (~10 MB): on the bench activations (208 prompts, 270 heads) chunks of 45 heads took 0.071-0.078 s
            # against 0.091-0.099 s for all 270 at once (medians of 15, two runs). Smaller chunks lose it again
            # to per-call overhead, hence at least 8 heads per chunk, unless a huge probe bank would push a chunk's
            # design tensors past ~130 MB.
            cells = n * (d_head + 1)
            chunk = max(1, min(max(8, int(6e5 // cells)), int(8e6 // cells)))
            bar = tqdm(total=layers * heads, desc="probes (torch)", disable=not progress, leave=False)
            for start in range(0, layers * heads, chunk):
                w, b, short = _fit_torch(flat[:, start : start + chunk], y, self.C, 100, 1e-12)
                unconverged += short
                coef.append(w)
                intercept.append(b)
                bar.update(w.shape[0])
            bar.close()
            if unconverged:
                warnings.warn(
                    f"{unconverged} of {layers * heads} head probes did not converge in 100 Newton iterations",
                    ConvergenceWarning,
                    stacklevel=2,
                )
            self.coef_ = torch.cat(coef).reshape(layers, heads, d_head).to(torch.float32)
            self.intercept_ = torch.cat(intercept).reshape(layers, heads).to(torch.float32)
        else:
            from sklearn.linear_model import LogisticRegression

            coef = torch.zeros(layers, heads, d_head)
            intercept = torch.zeros(layers, heads)
            features = x.numpy()
            labels = y.numpy()
            for layer in tqdm(range(layers), desc="probes (sklearn)", disable=not progress, leave=False):
                for head in range(heads):
                    model = LogisticRegression(
                        C=self.C, max_iter=self.max_iter, random_state=self.random_state
                    )
                    model.fit(features[:, layer, head], labels)
                    coef[layer, head] = torch.from_numpy(model.coef_[0].astype(np.float32))
                    intercept[layer, head] = float(model.intercept_[0])
            self.coef_, self.intercept_ = coef, intercept
        self.n_train_ = n
        self.train_accuracy_ = self.score(x, y)
        if x_val is not None and y_val is not None:
            self.val_accuracy_ = self.score(x_val, y_val)
            self.n_val_ = int(x_val.shape[0])
        return self

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer``, ``head``, ``train_accuracy`` and, when validation data was scored,
        ``val_accuracy`` with its 95% Wilson interval (``val_low``, ``val_high``) over the ``n_val`` answers."""
        self._require_fitted()
        frame = grid_frame(train_accuracy=self.train_accuracy_)
        if self.val_accuracy_ is not None:
            accuracy = self.val_accuracy_.flatten().double().numpy()
            frame["val_accuracy"] = accuracy
            frame["val_low"], frame["val_high"] = wilson_interval(accuracy, self.n_val_)
            frame["n_val"] = self.n_val_
        return frame

    def _require_fitted(self) -> None:
        if self.coef_ is None or self.intercept_ is None:
            raise ProbeError("the probes are not fitted yet; call fit() first")

    def decision_function(self, x: Float[Tensor, "n layer head d_head"]) -> Float[Tensor, "n layer head"]:
        """Each head's logit ``w . x + b``."""
        self._require_fitted()
        return torch.einsum("nlhd,lhd->nlh", x.to(torch.float32), self.coef_) + self.intercept_

    def predict_proba(self, x: Float[Tensor, "n layer head d_head"]) -> Float[Tensor, "n layer head"]:
        """Each head's probability of label 1 (true)."""
        return torch.sigmoid(self.decision_function(x))

    def score(
        self, x: Float[Tensor, "n layer head d_head"], y: Int[Tensor, " n"]
    ) -> Float[Tensor, "layer head"]:
        """Accuracy of every head's probe on ``(x, y)``."""
        y = torch.as_tensor(y)
        _check_xy(x, y, "score")
        predictions = (self.decision_function(x) > 0).long()
        return (predictions == y[:, None, None]).float().mean(0)

    def top_heads(self, k: int, tie_break: TieBreak = "released") -> Int[Tensor, "k 2"]:
        """The ``k`` heads with the best validation accuracy as ``(layer, head)`` rows, ties broken by
        ``tie_break`` (:func:`top_head_indices`)."""
        if self.val_accuracy_ is None:
            raise ProbeError("no validation accuracy: pass x_val and y_val to fit() first")
        return top_head_indices(self.val_accuracy_, k, tie_break)


def grid_frame(**grids: Float[Tensor, "layer head"]) -> pd.DataFrame:
    """One row per ``(layer, head)``, layer-major, with a column per named ``[layer, head]`` grid."""
    layers, heads = next(iter(grids.values())).shape
    columns = {"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers)}
    return pd.DataFrame(columns | {name: grid.flatten().numpy() for name, grid in grids.items()})


def heads_table(
    val_accuracy: Float[Tensor, "layer head"],
    heads: Int[Tensor, "k 2"],
    sigmas: Float[Tensor, " k"],
    report: HeadProbes | None = None,
) -> pd.DataFrame:
    """One row per head: accuracies (``report.to_frame()`` when given, else the validation grid), whether the
    head is one of the K selected ``heads``, its ``rank`` among them (1 = first) and its steering ``sigma``."""
    frame = report.to_frame() if report is not None else grid_frame(val_accuracy=val_accuracy)
    place = {(layer, head): k for k, (layer, head) in enumerate(heads.tolist())}
    ks = [place.get(pair) for pair in zip(frame["layer"].tolist(), frame["head"].tolist())]
    frame["selected"] = [k is not None for k in ks]
    frame["rank"] = pd.array([None if k is None else k + 1 for k in ks], dtype="Int64")
    values = sigmas.double().tolist()
    frame["sigma"] = [np.nan if k is None else values[k] for k in ks]
    return frame

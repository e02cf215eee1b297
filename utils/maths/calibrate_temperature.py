"""Fitting temperatures by validation NLL: one home for the single-model and the duo problem.

Both are the same convex problem. With member logits X_1..X_d and non-negative weights w,
    z = sum_j w_j X_j,    NLL(w) = mean_i [logsumexp(z_i) - z_{i, y_i}],
which is convex in w (a log-sum-exp of a linear map). A single model is d = 1 with w = 1/T; a duo
is d = 2 with the paper's Eq. 2 weights, w = 1/(2T) in the official code's (l/T_l + s/T_s)/2 form.
`method="exact"` solves it to the optimum with projected Newton in float64 (analytic gradient and
Hessian, Armijo backtracking, active-set handling of the w >= 0 bound, so "revert to the large
model", w_small = 0 / T_small = inf, is reachable). `method="official"` reproduces the official
code: a grid over T, then one torch `LBFGS(lr=0.01, max_iter=50)` step in float32 (torch is imported
only for that method: the exact fit, like the rest of the evaluation, is numpy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from utils.errors import UserError
from utils.maths.duo_modes import temperature_to_weight, weight_to_temperature
from utils.maths.uncertainty_metrics import map_row_blocks

METHODS = ("exact", "official")
MAX_WEIGHT = 1e3              # w <= 1e3, i.e. T >= 1e-3 (bounds the separable, NLL -> 0 case)
_GRAD_TOL = 1e-10
_MAX_ITER = 100


@dataclass
class TemperatureFit:
    temperature: float
    nll_before: float
    nll_after: float
    converged: bool
    iterations: int
    method: str
    unbounded: bool = False    # the NLL kept falling to the bound T = 1/MAX_WEIGHT: val is separated perfectly


@dataclass
class DuoFit:
    weight_large: float
    weight_small: float
    nll: float
    converged: bool
    iterations: int
    method: str
    unbounded: bool = False    # a weight reached MAX_WEIGHT: val is separated perfectly, the optimum is at infinity

    @property
    def temperature_large(self) -> float:
        return weight_to_temperature(self.weight_large)

    @property
    def temperature_small(self) -> float:
        return weight_to_temperature(self.weight_small)


# ----------------------------------------------------------------------------- the objective

def _as_members(members) -> list[np.ndarray]:
    arrays = [np.asarray(m) for m in members]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"member logits must share one [N, K] shape, got {sorted(shapes)}")
    return arrays


def _objective(members: list[np.ndarray], labels: np.ndarray, weights: np.ndarray,
               order: int = 2) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """Mean NLL at `weights`, and (order >= 1) its gradient, (order >= 2) its Hessian, in float64."""
    d = len(members)
    n, k = members[0].shape
    w = np.asarray(weights, dtype=np.float64)

    def work(rows: slice, exp):
        xs = [m[rows].astype(np.float64) for m in members]
        at = (np.arange(len(xs[0])), labels[rows])
        z = xs[0] * w[0]
        for j in range(1, d):
            z += xs[j] * w[j]
        top = z.max(axis=1, keepdims=True)
        z -= top
        p = exp(z)
        norm = p.sum(axis=1)
        total = float(np.sum(np.log(norm) - z[at]))               # logsumexp(z) - z_y, z shifted by its max
        if order < 1:
            return total, None, None
        p /= norm[:, None]
        means = [np.einsum("ij,ij->i", p, x) for x in xs]          # E_p[X_j] per row
        grad = np.array([float(np.sum(means[j] - xs[j][at])) for j in range(d)])
        if order < 2:
            return total, grad, None
        hess = np.zeros((d, d))
        for j in range(d):
            weighted = p * xs[j]
            for i in range(j + 1):
                second = np.einsum("ij,ij->i", weighted, xs[i])      # E_p[X_j X_i]
                hess[j, i] = hess[i, j] = float(np.sum(second - means[j] * means[i]))
        return total, grad, hess

    parts = map_row_blocks(n, k, work)
    total = sum(part[0] for part in parts) / n
    grad = sum(part[1] for part in parts) / n if order >= 1 else None
    hess = sum(part[2] for part in parts) / n if order >= 2 else None
    return total, grad, hess


def nll_at(members, labels, weights) -> float:
    """Mean validation NLL of z = sum_j weights[j] * members[j] (float64)."""
    return _objective(_as_members(members), np.asarray(labels, dtype=np.int64),
                      np.asarray(weights, dtype=np.float64), order=0)[0]


def _power_of_two_scale(member: np.ndarray) -> float:
    """1 for logits of ordinary magnitude; else the power of two near their largest |value|. Dividing
    by it is exact, and keeps the objective's second moments (~|x|^2) inside float64."""
    largest = float(np.max(np.abs(member))) if member.size else 0.0
    if largest == 0.0 or 2.0 ** -20 <= largest <= 2.0 ** 64:
        return 1.0
    return 2.0 ** math.floor(math.log2(largest))


def minimise_nll(members, labels, initial_weights,
                 max_weight: float = MAX_WEIGHT) -> tuple[np.ndarray, float, bool, int, bool]:
    """Projected Newton for min NLL(w) over 0 <= w <= max_weight. Returns (w, nll, converged, iterations,
    at the upper bound).

    NLL(w; X) = NLL(w * s; X / s), so members of extreme magnitude (e.g. 1e200 or 1e-30) are solved
    as X / s with s a power of two, the bound applying to w * s, and mapped back: the temperature of
    logits scaled by c is c times theirs."""
    arrays = _as_members(members)
    scales = np.array([_power_of_two_scale(a) for a in arrays])
    arrays = [a if s == 1.0 else a.astype(np.float64) / s for a, s in zip(arrays, scales)]
    start = _unsaturated_start(arrays, np.asarray(initial_weights, dtype=np.float64) * scales)
    w, f, converged, iterations = _projected_newton(arrays, labels, start, max_weight)
    return w / scales, f, converged, iterations, bool(np.any(w >= max_weight))


_SATURATED_SPREAD = 30.0      # a softmax over logits this far apart is 1 and 0 to ~1e-13: Newton sees no curvature


def _unsaturated_start(members: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The starting weights, shrunk where a member's weighted logits would saturate the softmax (logits of
    size 1e4, e.g. a Monte-Carlo predictive's log-probabilities): there the Hessian is 0 and Newton stalls
    at the start. Ordinary logits keep the given start."""
    start = weights.copy()
    for j, member in enumerate(members):
        rows = np.asarray(member[:4096], dtype=np.float64)
        spread = float(np.median(rows.max(axis=1) - rows.min(axis=1))) if rows.size else 0.0
        if spread * start[j] > _SATURATED_SPREAD:
            start[j] = _SATURATED_SPREAD / spread
    return start


def _projected_newton(members, labels, initial_weights, max_weight: float) -> tuple[np.ndarray, float, bool, int]:
    y = np.asarray(labels, dtype=np.int64)
    w = np.clip(np.asarray(initial_weights, dtype=np.float64), 0.0, max_weight)
    f, g, h = _objective(members, y, w)
    for iteration in range(1, _MAX_ITER + 1):
        at_lower, at_upper = w <= 0.0, w >= max_weight
        blocked = (at_lower & (g > 0)) | (at_upper & (g < 0))
        free = ~blocked
        if np.max(np.abs(np.where(free, g, 0.0)), initial=0.0) < _GRAD_TOL:
            return w, f, True, iteration - 1
        direction = np.zeros_like(w)
        h_free = h[np.ix_(free, free)]
        ridge = 1e-12 * max(np.trace(h_free), 1e-12)
        try:
            direction[free] = -np.linalg.solve(h_free + ridge * np.eye(free.sum()), g[free])
        except np.linalg.LinAlgError:
            direction[free] = -g[free]
        if direction @ g >= 0:                          # not a descent direction: fall back to the gradient
            direction = np.where(free, -g, 0.0)
        step = 1.0
        while True:
            candidate = np.clip(w + step * direction, 0.0, max_weight)
            f_new = _objective(members, y, candidate, order=0)[0]
            if f_new <= f + 1e-4 * float(g @ (candidate - w)) or step < 1e-12:
                break
            step *= 0.5
        if f_new > f or np.array_equal(candidate, w):
            # No further decrease representable in float64: at the optimum up to rounding, or stalled
            at_optimum = abs(f - f_new) <= 1e-14 * max(1.0, abs(f))
            return w, f, at_optimum or np.max(np.abs(np.where(free, g, 0.0))) < 1e-7, iteration
        w = candidate
        f, g, h = _objective(members, y, w)
    return w, f, False, _MAX_ITER


# ----------------------------------------------------------------------------- public fits

def fit_temperature(logits, labels, method: str = "exact") -> TemperatureFit:
    """Single-model temperature T > 0 minimising the validation NLL of logits / T."""
    _check_method(method)
    labels = np.asarray(labels, dtype=np.int64)
    nll_before = nll_at([logits], labels, [1.0])
    if method == "official":
        temperature = _official_single(logits, labels)
        return TemperatureFit(temperature, nll_before, nll_at([logits], labels, [1.0 / temperature]),
                              True, 1, method)
    w, f, converged, iterations, unbounded = minimise_nll([logits], labels, [1.0])
    return TemperatureFit(math.inf if w[0] <= 0 else 1.0 / w[0], nll_before, f, converged, iterations, method,
                          unbounded)


def fit_duo_weights(logits_large, logits_small, labels, method: str = "exact") -> DuoFit:
    """Duo weights (w_large, w_small) >= 0 minimising the validation NLL of w_l * l + w_s * s."""
    _check_method(method)
    labels = np.asarray(labels, dtype=np.int64)
    if method == "official":
        t_large, t_small = _official_duo(logits_large, logits_small, labels)
        w = np.array([temperature_to_weight(t_large), temperature_to_weight(t_small)])
        return DuoFit(w[0], w[1], nll_at([logits_large, logits_small], labels, w), True, 1, method)
    w, f, converged, iterations, unbounded = minimise_nll([logits_large, logits_small], labels, [0.5, 0.5])
    return DuoFit(float(w[0]), float(w[1]), f, converged, iterations, method, unbounded)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"--method: unknown fitting method '{method}' (choose from {', '.join(METHODS)})")


# ----------------------------------------------------------------------------- the official procedure

def _official_single(logits, labels) -> float:
    import torch
    x = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    y = torch.as_tensor(labels)
    grid = torch.arange(0.05, 5.05, 0.05)
    with torch.no_grad():
        losses = torch.stack([torch.nn.functional.cross_entropy(x / t, y) for t in grid])
    temperature = torch.nn.Parameter(grid[int(losses.argmin())].clone().reshape(1))
    _lbfgs([temperature], lambda: torch.nn.functional.cross_entropy(x / temperature, y))
    value = float(temperature.detach())
    if not value > 0:
        raise UserError(f"the official grid+LBFGS fit ended at a non-positive temperature ({value:.4g}); "
                        f"use --method exact")
    return value


def _official_duo(logits_large, logits_small, labels) -> tuple[float, float]:
    import torch
    large = torch.as_tensor(np.asarray(logits_large, dtype=np.float32))
    small = torch.as_tensor(np.asarray(logits_small, dtype=np.float32))
    y = torch.as_tensor(labels)
    grid = torch.arange(0.05, 5.05, 0.2)
    best, best_pair = math.inf, (1.0, 1.0)
    with torch.no_grad():
        for t_large in grid:
            scaled_large = large / t_large
            for t_small in grid:
                loss = float(torch.nn.functional.cross_entropy((scaled_large + small / t_small) / 2, y))
                if loss < best:
                    best, best_pair = loss, (float(t_large), float(t_small))
    t_l = torch.nn.Parameter(torch.tensor([best_pair[0]]))
    t_s = torch.nn.Parameter(torch.tensor([best_pair[1]]))
    _lbfgs([t_l, t_s], lambda: torch.nn.functional.cross_entropy((large / t_l + small / t_s) / 2, y))
    values = float(t_l.detach()), float(t_s.detach())
    if not min(values) > 0:
        raise UserError(f"the official grid+LBFGS duo fit ended at non-positive temperatures {values}; "
                        f"use --method exact")
    return values


def _lbfgs(params: list, loss_fn) -> None:
    import torch
    optimiser = torch.optim.LBFGS(params, lr=0.01, max_iter=50)

    def closure():
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimiser.step(closure)

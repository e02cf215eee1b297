import math

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

from utils.cli.parsing import UserError
from utils.maths import calibrate_temperature as ct
from utils.maths import duo_modes


def synthetic(n=1500, k=20, seed=0, scale_large=1.0, scale_small=1.0, small_informative=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    shared = 0.5 * rng.normal(size=(n, k))
    large = shared + 0.7 * rng.normal(size=(n, k))
    large[np.arange(n), labels] += 2.0
    small = (shared if small_informative else 0) + rng.normal(size=(n, k))
    # an informative sidekick leans towards the label; a useless one slightly away from it, so the
    # unconstrained optimum has w_small < 0 and the constrained one sits on the boundary w_small = 0
    small[np.arange(n), labels] += 1.2 if small_informative else -0.3
    return (scale_large * large).astype(np.float32), (scale_small * small).astype(np.float32), labels


def reference_single(logits, labels):
    """Dense grid over log T, then a bounded scalar refinement around the best grid point."""
    grid = np.linspace(np.log(1e-3), np.log(1e3), 801)
    values = [ct.nll_at([logits], labels, [np.exp(-g)]) for g in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(lambda g: ct.nll_at([logits], labels, [np.exp(-g)]), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-12})
    return min(res.fun, values[i])


def reference_duo(large, small, labels):
    """Dense grid over (w_large, w_small) >= 0 including the boundary, then bounded L-BFGS-B."""
    grid = np.concatenate([[0.0], np.geomspace(1e-3, 20, 30)])
    best = min(((ct.nll_at([large, small], labels, [a, b]), a, b) for a in grid for b in grid))
    res = minimize(lambda w: ct.nll_at([large, small], labels, w), [best[1], best[2]], method="L-BFGS-B",
                   bounds=[(0, None), (0, None)], options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 1000})
    return min(res.fun, best[0]), res.x


@pytest.mark.parametrize("scale", [0.2, 1.0, 8.0], ids=["under-confident", "moderate", "over-confident"])
def test_single_temperature_reaches_optimum(scale):
    logits, _, labels = synthetic(seed=1, scale_large=scale)
    fit = ct.fit_temperature(logits, labels)
    assert fit.converged
    assert fit.nll_after == pytest.approx(ct.nll_at([logits], labels, [1 / fit.temperature]), abs=1e-12)
    assert abs(fit.nll_after - reference_single(logits, labels)) <= 1e-7
    assert (fit.temperature > 1) == (scale > 1.5)        # over-confident logits are cooled, under- heated
    assert fit.nll_before == pytest.approx(ct.nll_at([logits], labels, [1.0]))


@pytest.mark.parametrize("case", ["moderate", "over-confident", "under-confident", "useless-sidekick"])
def test_duo_weights_reach_optimum(case):
    kwargs = {"moderate": {}, "over-confident": {"scale_large": 6.0, "scale_small": 4.0},
              "under-confident": {"scale_large": 0.15, "scale_small": 0.2},
              "useless-sidekick": {"small_informative": False}}[case]
    large, small, labels = synthetic(seed=2, **kwargs)
    fit = ct.fit_duo_weights(large, small, labels)
    reference, reference_w = reference_duo(large, small, labels)
    assert fit.converged
    assert fit.weight_large >= 0 and fit.weight_small >= 0
    assert abs(fit.nll - reference) <= 1e-7
    if case == "useless-sidekick":
        # the optimum reverts to the large model: w_small = 0 exactly, T_small = inf
        assert reference_w[1] < 1e-6
        assert fit.weight_small == 0.0 and math.isinf(fit.temperature_small)
    else:
        assert fit.weight_small > 0


def test_duo_not_worse_than_its_members_or_unweighted():
    large, small, labels = synthetic(seed=3)
    fit = ct.fit_duo_weights(large, small, labels)
    single = ct.fit_temperature(large, labels)
    assert fit.nll <= single.nll_after + 1e-12
    assert fit.nll <= ct.nll_at([large, small], labels, [0.5, 0.5])


def test_fit_does_not_depend_on_random_state_or_sample_order():
    """The fit uses no random numbers (the same answer whatever the global RNGs hold) and sums over samples (the
    same answer, to rounding, for the samples in another order)."""
    import torch
    large, small, labels = synthetic(seed=4)
    np.random.seed(0), torch.manual_seed(0)
    first = ct.fit_duo_weights(large, small, labels)
    np.random.seed(1), torch.manual_seed(1), np.random.random(1000), torch.rand(1000)
    assert ct.fit_duo_weights(large, small, labels) == first
    order = np.random.default_rng(7).permutation(len(labels))
    shuffled = ct.fit_duo_weights(large[order], small[order], labels[order])
    assert shuffled.weight_large == pytest.approx(first.weight_large, rel=1e-5)
    assert shuffled.weight_small == pytest.approx(first.weight_small, rel=1e-5, abs=1e-9)
    assert shuffled.nll == pytest.approx(first.nll, rel=1e-9)


def test_temperature_weight_conversion():
    assert duo_modes.weight_to_temperature(0.25) == 2.0
    assert duo_modes.temperature_to_weight(2.0) == 0.25
    assert math.isinf(duo_modes.weight_to_temperature(0.0)) and duo_modes.temperature_to_weight(math.inf) == 0.0


def test_official_method_follows_grid_then_lbfgs():
    large, small, labels = synthetic(seed=5)
    official = ct.fit_duo_weights(large, small, labels, method="official")
    exact = ct.fit_duo_weights(large, small, labels)
    assert official.method == "official"
    assert 0.05 <= official.temperature_large <= 6 and 0.05 <= official.temperature_small <= 6
    assert exact.nll <= official.nll + 1e-9
    single = ct.fit_temperature(large, labels, method="official")
    assert single.temperature > 0 and single.nll_after <= single.nll_before


def test_official_cannot_reach_reverting_to_large():
    large, small, labels = synthetic(seed=6, small_informative=False)
    official = ct.fit_duo_weights(large, small, labels, method="official")
    exact = ct.fit_duo_weights(large, small, labels)
    assert exact.weight_small == 0.0
    assert official.weight_small > 0            # the grid caps T at 4.85, i.e. w_small >= 0.1
    assert exact.nll < official.nll


def test_unknown_method_is_a_user_error():
    large, small, labels = synthetic(n=50, seed=7)
    with pytest.raises(UserError, match="--method"):
        ct.fit_temperature(large, labels, method="newton")


@pytest.mark.parametrize("factor", [1e200, 1e-30])
def test_extreme_logit_scales_give_the_scaled_temperature(factor):
    """T is scale-equivariant: logits times c have temperature c * T, with the same NLL (no overflow)."""
    logits, small, labels = synthetic(seed=4)
    base = ct.fit_temperature(logits, labels)
    scaled = ct.fit_temperature(logits.astype(np.float64) * factor, labels)
    assert scaled.converged and scaled.temperature / factor == pytest.approx(base.temperature, rel=1e-9)
    assert scaled.nll_after == pytest.approx(base.nll_after, rel=1e-12)
    duo = ct.fit_duo_weights(logits, small, labels)
    scaled_duo = ct.fit_duo_weights(logits.astype(np.float64) * factor, small, labels)
    assert scaled_duo.weight_large * factor == pytest.approx(duo.weight_large, rel=1e-7)
    assert scaled_duo.weight_small == pytest.approx(duo.weight_small, rel=1e-7)


def test_stages_score_huge_float64_logits_like_the_unscaled_ones(tmp_path, stage):
    """A float64 prediction file with logits near 1e200: stage 2 records the scaled temperature (no NaN
    row) and stage 4's temperature-scaled rows equal those of the unscaled file."""
    import pandas as pd

    from tests.helpers import make_duo_logits, write_set
    from utils.files.prediction_io import read_predictions
    pset = make_duo_logits(num_classes=5)["large"]
    for folder, factor in (("plain", 1.0), ("huge", 1e200)):
        path = write_set(pset, tmp_path / folder)
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        for key in [k for k in arrays if k.startswith("logits_")]:
            arrays[key] = arrays[key].astype(np.float64) * factor
        np.savez(path, **arrays)
        assert stage("evaluate/2_temp_scale.py", "--predictions", path, "--output_dir", tmp_path / f"cal_{folder}")[0] == 0
        code, _, err = stage("evaluate/4_evaluate_predictions.py", "--predictions_dir", tmp_path / folder, "--output_dir",
                             tmp_path / f"res_{folder}", "--calibrated_dir", tmp_path / f"cal_{folder}")
        assert code == 0, err
    assert read_predictions(tmp_path / "huge" / "large.npz").splits["val"].logits.max() > 1e199
    t_plain, t_huge = (pd.read_csv(tmp_path / f"cal_{f}" / "temperature_single_model.csv").temperature.item()
                       for f in ("plain", "huge"))
    assert t_huge / 1e200 == pytest.approx(t_plain, rel=1e-9)
    plain, huge = (pd.read_csv(tmp_path / f"res_{f}" / "evaluation_single_model_synthetic.csv") for f in ("plain", "huge"))
    scaled = [frame[frame.wrapper == "TempScaleWrapper"].drop(columns=["wrapper", "digest", "temperature"]).reset_index(drop=True)
              for frame in (plain, huge)]
    pd.testing.assert_frame_equal(scaled[0], scaled[1], rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_duo_fit_reaches_the_optimum_from_saturated_logits(seed):
    """Logits of size 1e4 (e.g. a Monte-Carlo predictive's log-probabilities) saturate the softmax at the
    default start w = (0.5, 0.5), where the Hessian is 0: the fit must still reach the optimum."""
    rng = np.random.default_rng(seed)
    n, k = 100, 2
    labels = rng.integers(0, k, n)
    large = rng.normal(size=(n, k)) * 1e4
    large[np.arange(n), labels] += 1e4
    small = rng.normal(size=(n, k))
    small[np.arange(n), labels] += 1
    fit = ct.fit_duo_weights(large, small, labels)
    reference = minimize(lambda w: ct.nll_at([large, small], labels, np.abs(w)), [1e-4, 0.1], method="Nelder-Mead",
                         options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 5000})
    assert fit.converged and not fit.unbounded
    assert fit.nll == pytest.approx(reference.fun, rel=1e-9)
    assert fit.nll < ct.nll_at([large], labels, [1.0 / ct.fit_temperature(large, labels).temperature])

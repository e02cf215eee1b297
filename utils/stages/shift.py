"""Shift-detection rows of stages 4 and 5: for every shifted split present (ood_test, the corruption splits),
how well each predictor's uncertainty separates the test split (in) from it (out) (utils/maths/shift_detection.py),
and for duos the paired bootstrap of duo - temperature-scaled large model."""
from __future__ import annotations

import numpy as np

from utils.maths import bootstrap
from utils.maths.shift_detection import DETECTION_COLUMNS, detection_metrics, resampled_detection
from utils.stages.intervals import scaled_terms

IN_SPLIT = "test"


def detection_rows(uncertainties: dict[str, dict[tuple, np.ndarray]], key_names: tuple[str, ...]) -> list[dict]:
    """`uncertainties`: {split: {key: per-sample uncertainty}}, keys named by `key_names` (e.g. mode,
    uncertainty_type). One row per shifted split and key present in the test split too."""
    rows = []
    inside = uncertainties.get(IN_SPLIT, {})
    for split, found in uncertainties.items():
        if split == IN_SPLIT:
            continue
        for key, values in found.items():
            if key in inside:
                rows.append({**dict(zip(key_names, key)), "split": split, **detection_metrics(inside[key], values)})
    return rows


def single_uncertainties(splits: dict, temperature: float, uncertainty_types) -> dict[str, dict[tuple, np.ndarray]]:
    """{split: {(wrapper, uncertainty_type): values}} of a single model, raw and temperature-scaled (the uncertainty
    types of stage 4: kl_disagreement, which needs two members, takes the softmax response)."""
    out = {}
    for split, data in splits.items():
        found = {}
        for wrapper, used in (("None", 1.0), ("TempScaleWrapper", temperature)):
            for uncertainty, terms in scaled_terms(data.logits, data.labels, used, uncertainty_types).items():
                found[(wrapper, uncertainty)] = terms.uncertainty
        out[split] = found
    return out


def _resampled(inside: np.ndarray, outside: np.ndarray, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """The detection metrics on `resamples` paired resamples: the test split and the shifted one each resampled
    (independent draws, seed and seed + 1; the same draws for every predictor compared)."""
    return resampled_detection(inside, outside, bootstrap.shared_counts(len(inside), resamples, seed),
                               bootstrap.shared_counts(len(outside), resamples, seed + 1))


def detection_deltas(duo: dict[str, dict[tuple, np.ndarray]], base: dict[str, dict[str, np.ndarray]],
                     resamples: int, seed: int) -> list[dict]:
    """Paired bootstrap rows (columns of a *_delta table) of every duo key (mode, uncertainty_type) minus the
    temperature-scaled large model with the same uncertainty type (`base`: {split: {uncertainty_type: values}}),
    per shifted split and detection metric."""
    rows = []
    for split, found in duo.items():
        if split == IN_SPLIT or split not in base or IN_SPLIT not in base:
            continue
        baselines = {}
        for (mode, uncertainty), values in found.items():
            if (mode, uncertainty) not in duo.get(IN_SPLIT, {}):
                continue
            bootstrap.check_samples(min(len(values), len(duo[IN_SPLIT][(mode, uncertainty)])), f"split '{split}'")
            if uncertainty not in baselines:
                b_in, b_out = base[IN_SPLIT][uncertainty], base[split][uncertainty]
                baselines[uncertainty] = (detection_metrics(b_in, b_out), _resampled(b_in, b_out, resamples, seed))
            point_base, drawn_base = baselines[uncertainty]
            inside = duo[IN_SPLIT][(mode, uncertainty)]
            point, drawn = detection_metrics(inside, values), _resampled(inside, values, resamples, seed)
            for metric in DETECTION_COLUMNS:
                differences = drawn[metric] - drawn_base[metric]
                low, high = np.percentile(differences, [2.5, 97.5])
                rows.append({"mode": mode, "uncertainty_type": uncertainty, "split": split, "metric": metric,
                             "delta": point[metric] - point_base[metric], "ci_low": low, "ci_high": high,
                             "significant": bool(bootstrap.excludes_zero(low, high)), "B": resamples, "seed": seed})
    return rows


def base_uncertainties(splits: dict, temperature: float, uncertainty_types) -> dict[str, dict[str, np.ndarray]]:
    """{split: {uncertainty_type: values}} of the temperature-scaled large model (the duo's baseline)."""
    return {split: {u: t.uncertainty for u, t in scaled_terms(data.logits, data.labels, temperature,
                                                              uncertainty_types).items()}
            for split, data in splits.items()}

"""Paired bootstrap intervals as result rows: a predictor's per-sample terms (utils/maths/bootstrap.py), the
temperature-scaled baseline's resampled metrics, and the *_delta rows of stages 4, 5 and 8."""
from __future__ import annotations

import numpy as np

from utils.files.model_names import baseline_backbone
from utils.files.prediction_io import aligned, read_predictions
from utils.files.results import eval_splits
from utils.maths import bootstrap
from utils.maths import uncertainty_metrics as um


def scaled_terms(logits, labels: np.ndarray, temperature: float, uncertainty_types) -> dict:
    """The temperature-scaled model's per-sample terms (utils/maths/bootstrap) for each uncertainty type: its
    softmax response or entropy; kl_disagreement, which needs two members, gets the softmax response's. At
    T = inf p is uniform and the predictions stay the raw logits' (as `single_model_metrics`)."""
    scaled = um.WeightedLogits([logits], [0.0 if np.isinf(temperature) else 1.0 / temperature])
    stats = um.softmax_stats(scaled, with_entropy="entropy" in uncertainty_types)
    predictions = np.argmax(logits, axis=1) if np.isinf(temperature) else stats.argmax
    measures = {"entropy": lambda: um.entropy(stats), "softmax_response": lambda: um.softmax_response(scaled, stats)}
    found = {uncertainty: bootstrap.sample_terms(scaled, labels, predictions, measures[uncertainty](), stats)
             for uncertainty in {k if k in measures else "softmax_response" for k in uncertainty_types}}
    return {uncertainty: found[uncertainty if uncertainty in measures else "softmax_response"]
            for uncertainty in uncertainty_types}


def resampled_baseline(terms: dict, resamples: int, seed: int) -> dict:
    """{uncertainty type: (point metrics, resampled metrics)} of a predictor's `scaled_terms`, each distinct terms
    object resampled once (uncertainty types that share terms share the work)."""
    distinct = {id(t): t for t in terms.values()}
    found = dict(zip(distinct, resolved([distinct], resamples, seed)[0].values()))
    return {uncertainty: found[id(t)] for uncertainty, t in terms.items()}


def mode_terms(out, labels: np.ndarray) -> dict:
    """{uncertainty type: SampleTerms} of one duo mode (a duo_modes.ModeOutput)."""
    return {name: bootstrap.sample_terms(out.logits, labels, out.predictions, values, out.stats)
            for name, values in out.uncertainty.items()}


def resolved(others: list[dict], resamples: int, seed: int) -> list[dict]:
    """The dicts {uncertainty: SampleTerms or (point, resampled)} with every SampleTerms replaced by its (point,
    resampled) metrics, all resampled in one call so that they share their work (the count matrix, and the passes
    of predictors with the same predictions or the same ranking: a duo's modes and uncertainty types often do)."""
    pending = [(i, key) for i, other in enumerate(others) for key, found in other.items()
               if isinstance(found, bootstrap.SampleTerms)]
    drawn = bootstrap.resampled_metrics([others[i][key] for i, key in pending], resamples, seed) if pending else []
    out = [dict(other) for other in others]
    for (i, key), metrics in zip(pending, drawn):
        out[i][key] = (bootstrap.point_metrics(others[i][key]), metrics)
    return out


def delta_rows(base: dict, other: dict, resamples: int, seed: int, descriptive: dict) -> list[dict]:
    """Rows of a *_delta results file: every metric of a predictor minus the baseline's, with the paired interval,
    per uncertainty type. `base`: {uncertainty: (point, resampled)} (`resampled_baseline`); `other`: {uncertainty: SampleTerms}
    or {uncertainty: (point, resampled)} drawn with the same (resamples, seed)."""
    rows = []
    for uncertainty, found in resolved([other], resamples, seed)[0].items():
        table = bootstrap.interval_table(base[uncertainty], found, resamples, seed)
        rows += [{**row, **descriptive, "uncertainty_type": uncertainty} for row in table.to_dict("records")]
    return rows


def bootstrap_baseline(data, temperature: float, uncertainty_types, resamples: int, seed: int, where: str) -> dict:
    """The temperature-scaled model's point and resampled metrics on one split (a Split), the baseline every
    paired interval of a duo is taken against; the split must be large enough for a bootstrap."""
    bootstrap.check_samples(len(data), where)
    return resampled_baseline(scaled_terms(data.logits, data.labels, temperature, uncertainty_types), resamples, seed)


def baseline_delta_rows(files, calibration, uncertainty_types, resamples: int, seed: int) -> list[dict]:
    """Rows of evaluation_single_model_delta: every baseline file among `files` (name -> path; a soup, IVON or
    Laplace predictive of a backbone that is among them too), raw and temperature-scaled, minus its
    temperature-scaled backbone, on the samples both predicted (aligned by id). `calibration`: the stage's
    utils/stages/calibration.Calibration."""
    derived: dict[str, list[str]] = {}
    for name in files:
        backbone = baseline_backbone(name)
        if backbone is not None and backbone in files:
            derived.setdefault(files.spelling(backbone), []).append(name)
    rows = []
    for backbone, names in sorted(derived.items()):
        base_set = read_predictions(files[backbone])
        base_temperature = calibration.temperature(base_set)
        baselines = {split: bootstrap_baseline(data, base_temperature, uncertainty_types, resamples, seed,
                                               f"{base_set.source}: split '{split}'")
                     for split, data in base_set.splits.items() if split in eval_splits(base_set.splits)}
        for name in sorted(names):
            other = read_predictions(files[name])
            for split, base in baselines.items():
                if split not in other.splits:
                    continue
                data = aligned(base_set, other, split)
                for wrapper, temperature in (("None", 1.0), ("TempScaleWrapper", calibration.temperature(other))):
                    terms = scaled_terms(data.logits, data.labels, temperature, uncertainty_types)
                    rows += delta_rows(base, terms, resamples, seed,
                                       {"model": name, "base": backbone, "wrapper": wrapper, "split": split,
                                        "digest": other.digest, "digest_base": base_set.digest,
                                        "temperature": temperature, "temperature_base": base_temperature})
            print(f"{name}: paired bootstrap against the temperature-scaled {backbone} (B={resamples})")
    return rows

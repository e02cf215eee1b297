"""Metrics of scored predictions as result rows: one model on one split (stage 4's rows), one duo on one split in
each mode (stage 5's rows), and the overflow guard for temperatures and weights. The paired intervals are
utils/stages/intervals.py's; what the stages read, utils/stages/inputs.py's."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from utils.errors import UserError
from utils.maths import uncertainty_metrics as um
from utils.stages.intervals import delta_rows, mode_terms, resolved

SINGLE_UNCERTAINTY_TYPES = um.SINGLE_UNCERTAINTY_TYPES


_LARGEST_LOGIT = 1e300       # beyond this, softmax's differences of logits overflow float64


def largest_magnitude(logits: np.ndarray) -> float:
    return max(float(np.max(logits)), -float(np.min(logits)))


def check_scaled_logits(magnitudes, weights, what: str) -> None:
    """Refuse weights (1/T, duo weights) that would push sum_j w_j * logits_j (members' largest |logit|
    given as `magnitudes`) out of float64 range, so an extreme hand-edited temperature is an error
    and never a NaN in a results table."""
    bound = sum(float(w) * m for m, w in zip(magnitudes, weights))
    if not bound <= _LARGEST_LOGIT:
        raise UserError(f"{what}: weights {[float(w) for w in weights]} scale the logits beyond float64's range "
                        f"(|z| up to {bound:.3g}); refit them with the temperature stages")


def metrics_by_uncertainty(logits, labels: np.ndarray, predictions: np.ndarray, uncertainties: dict[str, np.ndarray],
                           stats: um.SoftmaxStats) -> dict[str, dict[str, float]]:
    """All metric columns for each uncertainty type; accuracy and calibration are computed once."""
    shared = um.classification_metrics(labels, predictions, stats.num_classes)
    shared.update(um.calibration_metrics(logits, labels, stats))
    correct = predictions == labels
    out = {}
    for name, uncertainty in uncertainties.items():
        row = dict(shared, **um.selective_metrics(correct, uncertainty))
        out[name] = {column: row[column] for column in um.METRIC_COLUMNS}
    return out


def single_model_metrics(logits, labels: np.ndarray, uncertainty_types: Iterable[str] = SINGLE_UNCERTAINTY_TYPES,
                         predictions: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Metrics of one model's (possibly temperature-scaled) logits with argmax predictions, or the
    given `predictions` (a temperature never changes them; at T = inf they are the raw logits' argmax)."""
    uncertainty_types = list(uncertainty_types)
    stats = um.softmax_stats(logits, with_entropy="entropy" in uncertainty_types)
    measures = {"softmax_response": lambda: um.softmax_response(logits, stats), "entropy": lambda: um.entropy(stats)}
    unknown = [u for u in uncertainty_types if u not in measures]
    if unknown:
        raise UserError(f"--uncertainty_types: {unknown} not available for single models; choose from {list(measures)}")
    uncertainties = {name: measures[name]() for name in uncertainty_types}
    return metrics_by_uncertainty(logits, labels, stats.argmax if predictions is None else predictions,
                                  uncertainties, stats)


def single_rows(data, temperature: float, uncertainty_types: Iterable[str] = SINGLE_UNCERTAINTY_TYPES) -> list[dict]:
    """Stage 4's rows of one model on one split (a Split): raw and temperature-scaled, each uncertainty type (metrics
    plus wrapper, uncertainty_type and the temperature applied)."""
    import math
    # T = inf (uniform beat the model on val): probabilities are uniform, predictions stay its own
    kept = np.argmax(data.logits, axis=1) if math.isinf(temperature) else None
    rows = []
    for wrapper, logits, predictions, used in (
            ("None", data.logits, None, 1.0),
            ("TempScaleWrapper", um.WeightedLogits([data.logits], [1.0 / temperature]), kept, temperature)):
        for uncertainty, metrics in single_model_metrics(logits, data.labels, uncertainty_types, predictions).items():
            rows.append({**metrics, "wrapper": wrapper, "uncertainty_type": uncertainty, "temperature": used})
    return rows


def duo_rows(data_large, data_small, temps, modes, uncertainty_types, combine: str = "logits",
             normalizers: dict | None = None, base: dict | None = None, resamples: int = 0,
             seed: int = 0, uncertainties: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Stage 5's rows of one duo on one split (row-aligned Splits), each mode and uncertainty type (metrics plus mode,
    uncertainty_type and the member scalings used), and with a `bootstrap_baseline` `base` the paired intervals
    against it (plus the baseline's temperature). `uncertainties`, when given, receives every mode's per-sample
    uncertainty by (mode, uncertainty_type)."""
    from utils.maths.duo_modes import duo_outputs, member_scales
    outputs = duo_outputs(data_large.logits, data_small.logits, temps, modes, uncertainty_types, normalizers, combine)
    rows, deltas, compared = [], [], []
    for mode, out in outputs.items():
        scale_large, scale_small = member_scales(mode, temps)
        used = {"mode": mode, "scale_large": scale_large, "scale_small": scale_small}
        scored = metrics_by_uncertainty(out.logits, data_large.labels, out.predictions, out.uncertainty, out.stats)
        rows += [{**metrics, **used, "uncertainty_type": uncertainty} for uncertainty, metrics in scored.items()]
        if uncertainties is not None:       # kept for shift detection (utils/stages/shift.py)
            uncertainties.update({(mode, u): values for u, values in out.uncertainty.items()})
        if base is not None:
            compared.append((used, mode_terms(out, data_large.labels)))
    if compared:                  # every mode and uncertainty type resampled together: they share the work
        for (used, found) in zip((used for used, _ in compared),
                                 resolved([terms for _, terms in compared], resamples, seed)):
            deltas += delta_rows(base, found, resamples, seed, {**used, "temperature": temps.single_large})
    return rows, deltas

"""Fitting temperatures from prediction sets: the rows stages 2 and 3 record (and stages 4/5
record with --fit_missing). The optimisation itself lives in `utils.maths.calibrate_temperature`."""
from __future__ import annotations

import math

import numpy as np

from utils.cli.parsing import UserError, warn
from utils.files import tables
from utils.files.prediction_io import PredictionSet, align
from utils.maths import calibrate_temperature
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import DuoTemperatures

_SEPARATED = ("{source}: the validation NLL keeps falling as {bound}: {who} every 'val' sample correctly "
              "(a val split that is tiny, or labelled by the model's own predictions?), so no finite {what} minimises it; "
              "fit on a val split that is not predicted perfectly")


def _separated(logits, labels) -> bool:
    """Every row ranks its label strictly first: then the NLL of logits / T falls all the way to T -> 0
    (each term log(1 + sum_k exp(-margin_k / T)) decreases), even where float64 stops the fit early."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(labels))
    label_logit = logits[rows, labels].copy()
    logits[rows, labels] = -np.inf
    return bool(len(labels)) and bool(np.all(label_logit > logits.max(axis=1)))


def _constant_rows(logits) -> bool:
    return bool(np.all(np.max(logits, axis=1) == np.min(logits, axis=1)))


def single_temperature_row(pset: PredictionSet, method: str = "exact") -> dict:
    """Fit T on the 'val' split; the temperature_single_model.csv row."""
    val = pset.split("val", "to fit the temperature")
    fit = calibrate_temperature.fit_temperature(val.logits, val.labels, method=method)
    if not (math.isfinite(fit.nll_after) and fit.temperature > 0):
        raise UserError(f"{pset.source}: the temperature fit gave T={fit.temperature}, val NLL {fit.nll_after}; "
                        f"check the logits of split 'val'")
    if fit.unbounded or _separated(val.logits, val.labels):
        raise UserError(_SEPARATED.format(source=pset.source, bound="T -> 0", who="the model predicts",
                                          what="temperature"))
    if math.isinf(fit.temperature):
        warn(f"{pset.model}: the validation NLL is lowest at T = inf: uniform probabilities beat this model's "
             f"(its logits rank the true class worse than chance on val; check which column is which class). Its "
             f"temperature-scaled rows give uniform probabilities and keep its own predictions")
    elif _constant_rows(val.logits):
        warn(f"{pset.model}: every logit row of split 'val' is constant, so no temperature changes anything; "
             f"recorded T = {fit.temperature:g}")
    if not fit.converged:
        warn(f"{pset.model}: the temperature fit did not converge; check the logits in {pset.source}")
    scaled = um.WeightedLogits([val.logits], [1.0 / fit.temperature])
    return {"full_name": pset.model, "temperature": fit.temperature, "nll_before": fit.nll_before,
            "nll_after": fit.nll_after, "ece_before": um.calibration_metrics(val.logits, val.labels)["ECE"],
            "ece_after": um.calibration_metrics(scaled, val.labels)["ECE"], "n_val": len(val)}


def duo_weights_row(large: PredictionSet, small: PredictionSet, method: str = "exact") -> dict:
    """Fit (w_large, w_small) on the 'val' split, small aligned to large by sample id."""
    if large.model.casefold() == small.model.casefold():
        raise UserError(f"{large.source} and {small.source} are the same model ({large.model}); a duo needs two")
    val_large = large.split("val", "to fit the duo weights")
    val_small = align(val_large, small.split("val", "to fit the duo weights"), large.source, small.source, "val")
    fit = calibrate_temperature.fit_duo_weights(val_large.logits, val_small.logits, val_large.labels, method=method)
    if not (math.isfinite(fit.nll) and math.isfinite(fit.weight_large) and math.isfinite(fit.weight_small)):
        raise UserError(f"{large.source} + {small.source}: the duo fit gave weights ({fit.weight_large}, "
                        f"{fit.weight_small}), val NLL {fit.nll}; check the logits of split 'val'")
    combined = fit.weight_large * val_large.logits.astype(np.float64) + fit.weight_small * val_small.logits
    if fit.unbounded or _separated(combined, val_large.labels):
        raise UserError(_SEPARATED.format(source=f"{large.source} + {small.source}", bound="a weight grows",
                                          who="the duo's combined logits predict", what="pair of duo weights"))
    if fit.weight_large == 0 and fit.weight_small == 0:
        warn(f"{large.model} + {small.model}: the validation NLL is lowest with both weights 0: uniform probabilities "
             f"beat both models on val (barely trained models, or a label/column mismatch); the duo's rows give "
             f"uniform probabilities with the large model's predictions")
    if not fit.converged:
        warn(f"{large.model} + {small.model}: the duo fit did not converge; check the logits")
    return tables.duo_temperature_row(large.model, small.model, fit.weight_large, fit.weight_small, fit.nll,
                                      len(val_large))


def pair_temperatures(large: PredictionSet, small: PredictionSet, singles, weights: dict, fitted_single: list,
                      fitted_duo: list, single_of: tuple = (), duo: bool = True) -> DuoTemperatures:
    """A pair's DuoTemperatures from the recorded ones (`singles`: model -> T, `weights`: (large, small) ->
    (w_l, w_s)); the single temperatures of the prediction sets in `single_of` and (with `duo`) the duo weights
    that are missing are fitted on val, recorded in `singles`/`weights` and appended to `fitted_*` as rows."""
    for pset in single_of:
        if pset.model not in singles:
            fitted_single.append(single_temperature_row(pset))
            singles[pset.model] = fitted_single[-1]["temperature"]
    pair = (large.model, small.model)
    if duo and pair not in weights:
        fitted_duo.append(duo_weights_row(large, small))
        weights[pair] = (fitted_duo[-1]["weight_large"], fitted_duo[-1]["weight_small"])
    return DuoTemperatures(singles.get(large.model, 1.0), singles.get(small.model, 1.0),
                           *weights.get(pair, (0.5, 0.5)))


def record_fits(calibrated_dir, fitted_single: list, fitted_duo: list) -> None:
    """Upsert the temperatures and duo weights a stage fitted with --fit_missing."""
    if fitted_single:
        tables.upsert_single_temperatures(calibrated_dir, fitted_single)
    if fitted_duo:
        tables.upsert_duo_temperatures(calibrated_dir, fitted_duo)

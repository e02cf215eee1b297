"""Temperatures and duo weights of prediction sets: fitting them, and serving recorded ones.

Every fit of the project goes through `checked_temperature` / `checked_duo_weights` (stages 2 and 3, stages
4, 5 and 7 with --fit_missing, stage 8's pooled ensembles and its base model, 3dy's static duo, the torch
wrappers and the numpy API), so a val split with no optimum is refused the same way everywhere.
`Calibration` serves the temperatures a calibrated folder records to the stages that apply them (4, 5, 7 and
the report's curves), after checking that each was fitted on the very predictions it is applied to: the
same dataset and the same prediction digest. The optimisation itself lives in
`utils.maths.calibrate_temperature`.
"""
from __future__ import annotations

import math
from pathlib import Path
from shlex import quote

import numpy as np
import pandas as pd

from utils.errors import UserError, warn
from utils.files import safe_io, tables
from utils.files.prediction_io import PredictionSet, aligned
from utils.maths import calibrate_temperature
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import DuoTemperatures

_SEPARATED = ("{source}: the validation NLL keeps falling as {bound}: {who} every 'val' sample correctly "
              "(a val split that is tiny, or labelled by the model's own predictions?), so no finite {what} minimises it; "
              "fit on a val split that is not predicted perfectly")


def _separated(logits, labels) -> bool:
    """Every row ranks its label strictly first: then the NLL of logits / T falls all the way to T -> 0
    (each term log(1 + sum_k exp(-margin_k / T)) decreases), even where float64 stops the fit early."""
    logits = np.array(logits, dtype=np.float64)
    rows = np.arange(len(labels))
    label_logit = logits[rows, labels].copy()
    logits[rows, labels] = -np.inf
    return bool(len(labels)) and bool(np.all(label_logit > logits.max(axis=1)))


def _constant_rows(logits) -> bool:
    return bool(np.all(np.max(logits, axis=1) == np.min(logits, axis=1)))


def checked_temperature(logits, labels, source: str, model: str,
                        method: str = "exact") -> calibrate_temperature.TemperatureFit:
    """The val temperature of one predictor (`source` names where its logits come from, `model` what to call it in a
    warning): an error when the val split has no optimum (predicted perfectly), a warning when uniform
    probabilities beat the model (T = inf), its rows are constant, or the fit did not converge."""
    labels = np.asarray(labels, dtype=np.int64)
    fit = calibrate_temperature.fit_temperature(logits, labels, method=method)
    if not (math.isfinite(fit.nll_after) and fit.temperature > 0):
        raise UserError(f"{source}: the temperature fit gave T={fit.temperature}, val NLL {fit.nll_after}; "
                        f"check the logits of split 'val'")
    if fit.unbounded or _separated(logits, labels):
        raise UserError(_SEPARATED.format(source=source, bound="T -> 0", who="the model predicts", what="temperature"))
    if math.isinf(fit.temperature):
        warn(f"{model}: the validation NLL is lowest at T = inf: uniform probabilities beat this model's "
             f"(its logits rank the true class worse than chance on val; check which column is which class). Its "
             f"temperature-scaled rows give uniform probabilities and keep its own predictions")
    elif _constant_rows(logits):
        warn(f"{model}: every logit row of split 'val' is constant, so no temperature changes anything; "
             f"recorded T = {fit.temperature:g}")
    if not fit.converged:
        warn(f"{model}: the temperature fit did not converge; check the logits in {source}")
    return fit


def checked_duo_weights(logits_large, logits_small, labels, source: str, pair: str,
                        method: str = "exact") -> calibrate_temperature.DuoFit:
    """The val duo weights of two row-aligned members (see `checked_temperature`)."""
    labels = np.asarray(labels, dtype=np.int64)
    fit = calibrate_temperature.fit_duo_weights(logits_large, logits_small, labels, method=method)
    if not (math.isfinite(fit.nll) and math.isfinite(fit.weight_large) and math.isfinite(fit.weight_small)):
        raise UserError(f"{source}: the duo fit gave weights ({fit.weight_large}, {fit.weight_small}), val NLL "
                        f"{fit.nll}; check the logits of split 'val'")
    combined = fit.weight_large * np.asarray(logits_large, dtype=np.float64) + fit.weight_small * np.asarray(logits_small)
    if fit.unbounded or _separated(combined, labels):
        raise UserError(_SEPARATED.format(source=source, bound="a weight grows",
                                          who="the duo's combined logits predict", what="pair of duo weights"))
    if fit.weight_large == 0 and fit.weight_small == 0:
        warn(f"{pair}: the validation NLL is lowest with both weights 0: uniform probabilities beat both models on val "
             f"(barely trained models, or a label/column mismatch); the duo's rows give uniform probabilities with the "
             f"large model's predictions")
    if not fit.converged:
        warn(f"{pair}: the duo fit did not converge; check the logits")
    return fit


def single_temperature_row(pset: PredictionSet, method: str = "exact") -> dict:
    """Fit T on the 'val' split; the temperature_single_model.csv row (with what it was fitted on)."""
    val = pset.split("val", "to fit the temperature")
    fit = checked_temperature(val.logits, val.labels, pset.source, pset.model, method)
    scaled = um.WeightedLogits([val.logits], [1.0 / fit.temperature])
    return {"full_name": pset.model, "temperature": fit.temperature, "nll_before": fit.nll_before,
            "nll_after": fit.nll_after, "ece_before": um.calibration_metrics(val.logits, val.labels)["ECE"],
            "ece_after": um.calibration_metrics(scaled, val.labels)["ECE"], "n_val": len(val),
            "dataset": pset.dataset, "digest": pset.split_digest("val")}


def duo_weights_row(large: PredictionSet, small: PredictionSet, method: str = "exact") -> dict:
    """Fit (w_large, w_small) on the 'val' split, small aligned to large by sample id."""
    if large.model.casefold() == small.model.casefold():
        raise UserError(f"{large.source} and {small.source} are the same model ({large.model}); a duo needs two")
    val_large = large.split("val", "to fit the duo weights")
    val_small = aligned(large, small, "val", "to fit the duo weights")
    fit = checked_duo_weights(val_large.logits, val_small.logits, val_large.labels, f"{large.source} + {small.source}",
                              f"{large.model} + {small.model}", method)
    return tables.duo_temperature_row(large.model, small.model, fit.weight_large, fit.weight_small, fit.nll,
                                      len(val_large), large.dataset or small.dataset,
                                      (large.split_digest("val"), small.split_digest("val")))


class Calibration:
    """The temperatures and duo weights of one calibrated folder, for the stages that apply them.

    `require` fails before any work when one is missing (unless --fit_missing); `temperature` and `weights`
    serve one after checking it was fitted on the predictions given (dataset and digest), fitting and recording
    it with --fit_missing; `queue` adds those fits to the stage's outputs."""

    def __init__(self, folder: str | Path, fit_missing: bool = False, predictions_dir=None, config=None):
        self.folder = Path(folder)
        self.single_path = self.folder / tables.SINGLE_TEMPERATURE_FILE
        self.duo_path = self.folder / tables.DUO_TEMPERATURE_FILE
        self.singles = tables.read_single_temperatures(self.single_path)
        self.duos = tables.read_duo_weights(self.duo_path)
        self.fit_missing = fit_missing
        self.predictions_dir, self.config = predictions_dir, config
        self.fitted_single: list[dict] = []
        self.fitted_duo: list[dict] = []
        self._unchecked: set[Path] = set()

    def _fit_single_command(self) -> str:
        return (f"run `python evaluate/2_temp_scale.py --predictions_dir {self.predictions_dir or './predictions'} "
                f"--output_dir {self.folder}` or pass --fit_missing")

    def _fit_duo_command(self) -> str:
        return (f"run `python evaluate/3_duo_temp_scale.py --config {self.config or 'DUOS_CSV'} --predictions_dir "
                f"{self.predictions_dir or './predictions'} --output_dir {self.folder}` or pass --fit_missing")

    def _files_flag(self, pset: PredictionSet) -> str:
        """Stage 2's flag naming `pset`'s file (the official layout, one file per split: its folder and --models)."""
        if Path(pset.source).is_file():
            return f"--predictions {quote(pset.source)}"
        return f"--predictions_dir {quote(str(self.predictions_dir or './predictions'))} --models {quote(pset.model)}"

    def require(self, singles=(), pairs=(), what: str = "") -> None:
        """Fail now when a temperature of `singles` or the weights of a pair of `pairs` are not recorded (unless
        --fit_missing)."""
        if self.fit_missing:
            return
        lacking = [m for m in singles if m not in self.singles]
        if lacking:
            raise UserError(f"{what + ': ' if what else ''}no temperature for {', '.join(map(str, lacking))} in "
                            f"{self.single_path}; {self._fit_single_command()}")
        for large, small in pairs:
            if (large, small) not in self.duos:
                raise UserError(f"no duo weights for {large} + {small} in {self.duo_path}; {self._fit_duo_command()}")

    def _check(self, recorded: tables.Recorded, psets: tuple[PredictionSet, ...], what: str, refit: str) -> None:
        """`recorded` must have been fitted on `psets`: their dataset, and each one's digest."""
        if all(d is None for d in recorded.digests) and recorded.dataset is None:
            if recorded.path not in self._unchecked:
                self._unchecked.add(recorded.path)
                warn(f"{recorded.path}: row {recorded.row} ({what}) records neither the dataset nor the predictions it "
                     f"was fitted on (the official layout, or an older version of this project), so it is used "
                     f"unchecked; refit it to record them")
            return
        datasets = {p.dataset for p in psets if p.dataset}
        problem = None
        if recorded.dataset and datasets and recorded.dataset not in datasets:
            problem = f"it was fitted on dataset '{recorded.dataset}', {psets[0].source} is '{psets[0].dataset}'"
        for digest, pset in zip(recorded.digests, psets):
            if problem is None and digest is not None and "val" not in pset.splits:
                problem = f"it was fitted on a val split, and {pset.source} has none"
            elif problem is None and digest is not None and digest != pset.split_digest("val"):
                problem = (f"it was fitted on a val split with digest {digest}, {pset.source} now holds "
                           f"{pset.split_digest('val')} (re-predicted since, or another dataset's file of the same name)")
        if problem:
            raise UserError(f"{recorded.path}: row {recorded.row}, {what}: {problem}; refit it: `{refit}` (keep one "
                            f"--calibrated_dir per dataset)")

    def temperature(self, pset: PredictionSet) -> float:
        """T of `pset`'s model, checked against `pset` (fitted on its val split and recorded with --fit_missing)."""
        recorded = self.singles.get(pset.model)
        if recorded is None:
            if not self.fit_missing:
                raise UserError(f"no temperature for {pset.model} in {self.single_path}; "
                                f"{self._fit_single_command()}")
            row = single_temperature_row(pset)
            self.fitted_single.append(row)
            recorded = tables.Recorded(row["temperature"], row["dataset"], (row["digest"],), self.single_path, 0)
            self.singles[pset.model] = recorded
        else:
            self._check(recorded, (pset,), f"the temperature of {pset.model}",
                        f"python evaluate/2_temp_scale.py {self._files_flag(pset)} --output_dir {quote(str(self.folder))}")
        return float(recorded.value)

    def weights(self, large: PredictionSet, small: PredictionSet) -> tuple[float, float]:
        """(w_large, w_small) of the pair, checked against both prediction sets (fitted with --fit_missing)."""
        recorded = self.duos.get((large.model, small.model))
        if recorded is None:
            if not self.fit_missing:
                raise UserError(f"no duo weights for {large.model} + {small.model} in {self.duo_path}; "
                                f"{self._fit_duo_command()}")
            row = duo_weights_row(large, small)
            self.fitted_duo.append(row)
            recorded = tables.Recorded((row["weight_large"], row["weight_small"]), row["dataset"],
                                       (row["digest_large"], row["digest_small"]), self.duo_path, 0)
            self.duos[(large.model, small.model)] = recorded
        else:
            if all(Path(p.source).is_file() for p in (large, small)):
                files = f"--large_model_pred {quote(large.source)} --small_model_pred {quote(small.source)}"
            else:                                   # the official layout: one file per split
                files = (f"--config {quote(str(self.config or 'DUOS_CSV'))} --predictions_dir "
                         f"{quote(str(self.predictions_dir or './predictions'))}")
            self._check(recorded, (large, small), f"the duo weights of {large.model} + {small.model}",
                        f"python evaluate/3_duo_temp_scale.py {files} --output_dir {quote(str(self.folder))}")
        return recorded.value

    def pair(self, large: PredictionSet, small: PredictionSet, singles: tuple[PredictionSet, ...] = (),
             duo: bool = True) -> DuoTemperatures:
        """The pair's DuoTemperatures: the single temperatures of the prediction sets in `singles` and (with `duo`)
        the duo weights; what is not asked for keeps the neutral default (T = 1, w = 0.5)."""
        found = {pset.model.casefold(): self.temperature(pset) for pset in singles}
        weights = self.weights(large, small) if duo else (0.5, 0.5)
        return DuoTemperatures(found.get(large.model.casefold(), 1.0), found.get(small.model.casefold(), 1.0), *weights)

    def queue(self, outputs: safe_io.Outputs) -> None:
        """Add the temperatures and duo weights fitted with --fit_missing to the stage's outputs."""
        if self.fitted_single:
            tables.queue_single_temperatures(outputs, self.folder, self.fitted_single)
        if self.fitted_duo:
            tables.queue_duo_temperatures(outputs, self.folder, self.fitted_duo)

    def expect(self, outputs: safe_io.Outputs) -> None:
        """With --fit_missing, check now that the temperature tables can take the fits."""
        if self.fit_missing:
            outputs.expect_table(self.single_path, ["full_name"], ["temperature"],
                                 validate=lambda frame, path: tables.read_single_temperatures(path))
            outputs.expect_table(self.duo_path, ["model_large", "model_small"],
                                 ["temperature_large", "temperature_small"],
                                 validate=lambda frame, path: tables.read_duo_weights(path))


def calibration_facts(calibration: Calibration) -> pd.DataFrame:
    """What a calibrated folder's tables say about their inputs, as `utils.files.results.facts` states them for
    result rows: each model's val-split digest and temperature, each pair's duo weights."""
    records = []
    for name, recorded in calibration.singles.items():
        if recorded.digests[0]:
            records.append(("val predictions", name.casefold(), (recorded.digests[0],), str(recorded.path),
                            recorded.row, 0))
        records.append(("temperature", name.casefold(), (float(recorded.value),), str(recorded.path), recorded.row, 0))
    for (large, small), recorded in calibration.duos.items():
        for name, digest in zip((large, small), recorded.digests):
            if digest:
                records.append(("val predictions", name.casefold(), (digest,), str(recorded.path), recorded.row, 0))
        records.append(("duo weights", (large.casefold(), small.casefold()), tuple(map(float, recorded.value)),
                        str(recorded.path), recorded.row, 0))
    return pd.DataFrame(records, columns=["about", "subject", "value", "source", "row", "position"])

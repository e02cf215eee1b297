"""The duo of your own models from numpy arrays, without files: what stages 2-5 do, with the same functions.

    from utils.api import fit_duo
    duo = fit_duo(val_large, val_small, val_labels)            # [N, K] arrays; kind="probs" for predict_proba outputs
    out = duo.predict(test_large, test_small)                   # probs, predictions, uncertainty (mode="asymmetric")
    results = duo.evaluate(test_large, test_small, test_labels)  # stage 4's TS rows and stage 5's rows, as a DataFrame
    gains = duo.compare(test_large, test_small, test_labels, resamples=1000)   # paired bootstrap vs the TS f_large

Arrays are checked as prediction files are (finite, [N, K], labels in [0, K), unique ids when given, the declared
kind: logits, log_probs or probs; probabilities given as logits are refused), and fits refuse a val split that is
predicted perfectly. Without `ids`, rows of the two models are paired by position; with them, by id (as files
are: `ids=(ids_large, ids_small)`). The numbers equal the stages' rows for the same inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.errors import UserError
from utils.files.prediction_io import KINDS, PredictionSet, Split, aligned, validated_split
from utils.files.results import TABLES
from utils.maths.duo_modes import COMBINE, MODES, DuoTemperatures, duo_outputs
from utils.maths.uncertainty_metrics import UNCERTAINTY_TYPES
from utils.stages import intervals, scoring
from utils.stages.calibration import duo_weights_row, single_temperature_row


def _member_ids(ids, member: int):
    """The ids of member 0 (large) or 1 (small): one array for both, or a tuple (ids_large, ids_small)."""
    if isinstance(ids, tuple):
        if len(ids) != 2:
            raise UserError(f"ids: give one array for both models or a pair (ids_large, ids_small), not {len(ids)} arrays")
        return ids[member]
    return ids


def _listed(values, what: str) -> list:
    """A list of modes or uncertainty types; one given as a plain string is a list of one."""
    return [values] if isinstance(values, str) else list(values)


def _prediction_set(name: str, split: str, array, labels, ids, kind: str) -> PredictionSet:
    """One model's arrays of one split as a checked PredictionSet (ids: 0..N-1 when not given)."""
    array = np.asarray(array)
    ids = np.arange(len(array), dtype=np.int64) if ids is None else np.asarray(ids)
    data = validated_split(Split(array, np.asarray(labels), ids), f"the {name} model's {split} array", split, kind)
    return PredictionSet(name, {split: data}, {"kind": "log_probs" if kind == "probs" else kind},
                         source=f"the {name} model's {split} array")


def _labels(labels, member: int):
    return labels[member] if isinstance(labels, tuple) else labels


def _small_labels(labels, ids):
    """The sidekick's labels: the large model's, in the sidekick's own row order when `ids` pairs rows by id."""
    if not isinstance(ids, tuple):
        return labels
    positions = pd.Index(np.asarray(ids[0])).get_indexer(np.asarray(ids[1]))
    if (positions < 0).any():                     # ids that differ as sets: `aligned` names them
        return labels
    return np.asarray(labels)[positions]


@dataclass
class Duo:
    """A fitted duo: the two members' single temperatures and the duo weights (as stages 2 and 3 fit them)."""
    temperatures: DuoTemperatures
    kind: str = "logits"

    def _pair(self, large, small, labels, ids, split: str) -> tuple[Split, Split]:
        if labels is None:
            raise UserError("labels: evaluating needs the true labels of the samples (an array of class indices)")
        large_set = _prediction_set("large", split, large, labels, _member_ids(ids, 0), self.kind)
        small_set = _prediction_set("small", split, small, _small_labels(labels, ids), _member_ids(ids, 1), self.kind)
        return large_set.splits[split], aligned(large_set, small_set, split)

    def predict(self, large, small, ids=None, mode: str = "asymmetric", combine: str = "logits") -> dict:
        """{"probs": [N, K], "predictions": [N], "uncertainty": {type: [N]}} of the duo in `mode`, in the large
        model's row order (no labels needed)."""
        if mode not in MODES:
            raise UserError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        placeholder = np.zeros(len(np.asarray(large)), dtype=np.int64)      # labels play no part in a prediction
        if isinstance(ids, tuple):
            placeholder = (placeholder, np.zeros(len(np.asarray(small)), dtype=np.int64))
        data_large = _prediction_set("large", "test", large, _labels(placeholder, 0), _member_ids(ids, 0),
                                     self.kind).splits["test"]
        small_set = _prediction_set("small", "test", small, _labels(placeholder, 1), _member_ids(ids, 1), self.kind)
        large_set = PredictionSet("large", {"test": data_large}, {"kind": self.kind})
        data_small = aligned(large_set, small_set, "test")
        out = duo_outputs(data_large.logits, data_small.logits, self.temperatures, [mode], combine=combine)[mode]
        logits = out.logits.materialise()
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"probs": probs / probs.sum(axis=1, keepdims=True), "predictions": out.predictions,
                "uncertainty": out.uncertainty}

    def evaluate(self, large, small, labels, ids=None, modes=MODES, uncertainty_types=UNCERTAINTY_TYPES,
                 combine: str = "logits", split: str = "test") -> pd.DataFrame:
        """Every metric of the temperature-scaled large model and sidekick (stage 4's TempScaleWrapper rows) and of the
        duo in every mode (stage 5's rows), one row per predictor and uncertainty type."""
        data_large, data_small = self._pair(large, small, labels, ids, split)
        modes, uncertainty_types = _listed(modes, "modes"), _listed(uncertainty_types, "uncertainty_types")
        single_types = [u for u in uncertainty_types if u in scoring.SINGLE_UNCERTAINTY_TYPES]
        rows = []
        for name, data, temperature in (("large", data_large, self.temperatures.single_large),
                                        ("small", data_small, self.temperatures.single_small)):
            rows += [{**row, "model": name} for row in scoring.single_rows(data, temperature, single_types)
                     if row["wrapper"] == "TempScaleWrapper"]
        for row in scoring.duo_rows(data_large, data_small, self.temperatures, modes, uncertainty_types, combine)[0]:
            rows.append({**row, "model": "duo"})
        frame = pd.DataFrame(rows)
        return frame.assign(split=split)[["model", "wrapper", "mode", "uncertainty_type", "split",
                                          *TABLES["single_model"].values]]

    def compare(self, large, small, labels, ids=None, modes=MODES, uncertainty_types=UNCERTAINTY_TYPES,
                combine: str = "logits", resamples: int = 1000, seed: int = 0, split: str = "test") -> pd.DataFrame:
        """Stage 5's paired bootstrap: every metric of the duo in each mode minus the temperature-scaled large
        model's, with its 95% interval over `resamples` resamples of the samples."""
        data_large, data_small = self._pair(large, small, labels, ids, split)
        modes, uncertainty_types = _listed(modes, "modes"), _listed(uncertainty_types, "uncertainty_types")
        base = intervals.bootstrap_baseline(data_large, self.temperatures.single_large, uncertainty_types, resamples, seed,
                                          "the large model's array")
        deltas = scoring.duo_rows(data_large, data_small, self.temperatures, modes, uncertainty_types, combine,
                                  base=base, resamples=resamples, seed=seed)[1]
        return pd.DataFrame(deltas).assign(split=split)[["mode", "uncertainty_type", "split", "metric", "delta",
                                                         "ci_low", "ci_high", "significant", "B", "seed"]]


def fit_duo(val_large, val_small, val_labels, val_ids=None, kind: str = "logits", method: str = "exact") -> Duo:
    """Fit both members' temperatures and the duo weights on validation arrays ([N, K] each, `kind` one of logits,
    log_probs, probs), as stages 2 and 3 do."""
    if kind not in KINDS:
        raise UserError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    large = _prediction_set("large", "val", val_large, val_labels, _member_ids(val_ids, 0), kind)
    small = _prediction_set("small", "val", val_small, _small_labels(val_labels, val_ids), _member_ids(val_ids, 1),
                            kind)
    weights = duo_weights_row(large, small, method)
    temperatures = DuoTemperatures(single_temperature_row(large, method)["temperature"],
                                   single_temperature_row(small, method)["temperature"],
                                   weights["weight_large"], weights["weight_small"])
    return Duo(temperatures, kind)


__all__ = ["Duo", "fit_duo", "COMBINE", "MODES"]

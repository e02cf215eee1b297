"""Turning scored predictions into result rows and result files (stages 4, 5 and 8)."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np

from utils.errors import UserError, warn
from utils.files.prediction_io import (PredictionSet, aligned, list_prediction_files, normalise_predictions_dir,
                                       read_predictions)
from utils.files.results import EVAL_SPLITS, check_dataset_name
from utils.maths import uncertainty_metrics as um

SINGLE_UNCERTAINTY_TYPES = ("softmax_response", "entropy")
# Every spread this project reports (stage 8's std rows, the report's ± and its shaded bands) is the sample
# standard deviation (ddof = 1) over subsets, seeds or duos; one value has none.
SPREAD_DDOF = 1


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


def bootstrap_baseline(data, temperature: float, uncertainty_types, resamples: int, seed: int, where: str) -> dict:
    """The temperature-scaled model's point and resampled metrics on one split (a Split), the baseline every
    paired interval of a duo is taken against; the split must be large enough for a bootstrap."""
    from utils.maths import bootstrap
    bootstrap.check_samples(len(data), where)
    return resampled_baseline(scaled_terms(data.logits, data.labels, temperature, uncertainty_types), resamples, seed)


def duo_rows(data_large, data_small, temps, modes, uncertainty_types, combine: str = "logits",
             normalizers: dict | None = None, base: dict | None = None, resamples: int = 0,
             seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Stage 5's rows of one duo on one split (row-aligned Splits), each mode and uncertainty type (metrics plus mode,
    uncertainty_type and the member scalings used), and with a `bootstrap_baseline` `base` the paired intervals
    against it (plus the baseline's temperature)."""
    from utils.maths.duo_modes import duo_outputs, member_scales
    outputs = duo_outputs(data_large.logits, data_small.logits, temps, modes, uncertainty_types, normalizers, combine)
    rows, deltas = [], []
    for mode, out in outputs.items():
        scale_large, scale_small = member_scales(mode, temps)
        used = {"mode": mode, "scale_large": scale_large, "scale_small": scale_small}
        scored = metrics_by_uncertainty(out.logits, data_large.labels, out.predictions, out.uncertainty, out.stats)
        rows += [{**metrics, **used, "uncertainty_type": uncertainty} for uncertainty, metrics in scored.items()]
        if base is not None:
            deltas += delta_rows(base, mode_terms(out, data_large.labels), resamples, seed,
                                 {**used, "temperature": temps.single_large})
    return rows, deltas


def pair_costs(duo, large: PredictionSet, small: PredictionSet, costs, backbones) -> dict:
    """A duo row's gflops_large, gflops_small and gflops_balance: each member's cost as `tables.cost_of` finds it
    (the duos CSV, the backbone CSV, what stage 1 measured), the balance as the duos CSV gives it, else their ratio."""
    from utils.files import tables
    large_cost = tables.cost_of(large.model, costs, backbones, large.meta)
    small_cost = tables.cost_of(small.model, costs, backbones, small.meta)
    balance = duo.gflops_balance if np.isfinite(duo.gflops_balance) else small_cost / large_cost
    return {"gflops_large": large_cost, "gflops_small": small_cost, "gflops_balance": balance}


def resolve_dataset(flag: str | None, recorded: Iterable[str | None], predictions_dir: str | Path) -> str:
    """The dataset name for result file names: --dataset, else the one the prediction files record,
    else (CSV files carry no metadata) the predictions folder's name. Files that record several datasets are
    refused, --dataset or not: one results file holds one dataset."""
    names = {name for name in recorded if name}
    if len(names) > 1:
        raise UserError(f"the prediction files come from several datasets {sorted(names)}; one results file holds one "
                        f"dataset: keep one predictions folder per dataset (or pass --models)")
    if flag:
        return check_dataset_name(flag, "--dataset")
    if names:
        return check_dataset_name(names.pop(), "the dataset recorded in the prediction files")
    fallback = normalise_predictions_dir(predictions_dir).resolve().name
    warn(f"the prediction files do not record their dataset; naming the results after the folder "
         f"'{fallback}' (pass --dataset NAME to choose)")
    return check_dataset_name(fallback, "the predictions folder's name")


class PredictionCache:
    """Keeps the most recently used prediction sets in memory (stages read each model many times)."""

    def __init__(self, max_items: int = 8):
        self.max_items = max_items
        self._items: OrderedDict[str, PredictionSet] = OrderedDict()

    def get(self, path: str | Path) -> PredictionSet:
        key = str(path)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        pset = read_predictions(path)
        self._items[key] = pset
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return pset


def paired_splits(large: PredictionSet, small: PredictionSet):
    """(split, large's data, small's data aligned to it by id) for each evaluation split both files hold; a split
    the sidekick lacks is skipped with a warning."""
    large.split("test", "to evaluate the duo")
    for split in EVAL_SPLITS:
        if split not in large.splits:
            continue
        if split not in small.splits:
            warn(f"{large.model} + {small.model}: {small.source} has no '{split}' split; skipped it")
            continue
        yield split, large.splits[split], aligned(large, small, split)


def find_duo_files(duos, predictions_dir: str, strict: bool) -> tuple[list, list[str]]:
    """(duo row, large file, small file) for every duo with both prediction files, names matched
    case-insensitively; the duos skipped are summarised in one warning (with `strict`, an error on
    the first)."""
    available = list_prediction_files(predictions_dir)
    jobs, skipped, missing_models = [], [], {}
    for duo in duos.itertuples(index=False):
        names = (duo.model_large, duo.model_small)
        missing = [name for name in names if name not in available]
        if missing:
            if strict:
                raise UserError(f"--strict: {duo.model_large} + {duo.model_small}: no prediction file for "
                                f"{missing} in {predictions_dir}")
            skipped.append(f"{duo.model_large} + {duo.model_small}")
            for name in missing:
                missing_models.setdefault(name.casefold(), name)
            continue
        jobs.append((duo, available[duo.model_large], available[duo.model_small]))
    if skipped:
        shown = sorted(missing_models.values())
        warn(f"{len(skipped)} of {len(skipped) + len(jobs)} duo(s) skipped: no prediction file in {predictions_dir} "
             f"for {len(shown)} model(s): {', '.join(shown[:12])}{', ...' if len(shown) > 12 else ''}")
    return jobs, skipped


def scaled_terms(logits, labels: np.ndarray, temperature: float, uncertainty_types) -> dict:
    """The temperature-scaled model's per-sample terms (utils/maths/bootstrap) for each uncertainty type: its
    softmax response or entropy; kl_disagreement, which needs two members, gets the softmax response's. At
    T = inf p is uniform and the predictions stay the raw logits' (as `single_model_metrics`)."""
    from utils.maths import bootstrap
    scaled = um.WeightedLogits([logits], [0.0 if np.isinf(temperature) else 1.0 / temperature])
    stats = um.softmax_stats(scaled, with_entropy="entropy" in uncertainty_types)
    predictions = np.argmax(logits, axis=1) if np.isinf(temperature) else stats.argmax
    measures = {"entropy": lambda: um.entropy(stats), "softmax_response": lambda: um.softmax_response(scaled, stats)}
    found = {kind: bootstrap.sample_terms(scaled, labels, predictions, measures[kind](), stats)
             for kind in {k if k in measures else "softmax_response" for k in uncertainty_types}}
    return {kind: found[kind if kind in measures else "softmax_response"] for kind in uncertainty_types}


def resampled_baseline(terms: dict, resamples: int, seed: int) -> dict:
    """{uncertainty type: (point metrics, resampled metrics)} of a predictor's `scaled_terms`, each distinct terms
    object resampled once (kinds that share terms share the work)."""
    from utils.maths import bootstrap
    found = {id(t): (bootstrap.point_metrics(t), bootstrap.resampled_metrics(t, resamples, seed))
             for t in {id(t): t for t in terms.values()}.values()}
    return {kind: found[id(t)] for kind, t in terms.items()}


def mode_terms(out, labels: np.ndarray) -> dict:
    """{uncertainty type: SampleTerms} of one duo mode (a duo_modes.ModeOutput)."""
    from utils.maths import bootstrap
    return {kind: bootstrap.sample_terms(out.logits, labels, out.predictions, uncertainty, out.stats)
            for kind, uncertainty in out.uncertainty.items()}


def delta_rows(base: dict, other: dict, resamples: int, seed: int, descriptive: dict) -> list[dict]:
    """Rows of a *_delta results file: every metric of a predictor minus the baseline's, with the paired interval,
    per uncertainty type. `base`: {kind: (point, resampled)} (`resampled_baseline`); `other`: {kind: SampleTerms}
    or {kind: (point, resampled)} drawn with the same (resamples, seed)."""
    from utils.maths import bootstrap
    rows = []
    for kind, found in other.items():
        if isinstance(found, bootstrap.SampleTerms):
            found = (bootstrap.point_metrics(found), bootstrap.resampled_metrics(found, resamples, seed))
        table = bootstrap.interval_table(base[kind], found, resamples, seed)
        rows += [{**row, **descriptive, "uncertainty_type": kind} for row in table.to_dict("records")]
    return rows


def baseline_delta_rows(files, calibration, uncertainty_types, resamples: int, seed: int) -> list[dict]:
    """Rows of evaluation_single_model_delta: every baseline file among `files` (name -> path; a soup, IVON or
    Laplace predictive of a backbone that is among them too), raw and temperature-scaled, minus its
    temperature-scaled backbone, on the samples both predicted (aligned by id). `calibration`: the stage's
    utils/stages/calibration.Calibration."""
    from utils.files.model_names import baseline_backbone
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
                     for split, data in base_set.splits.items() if split in EVAL_SPLITS}
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

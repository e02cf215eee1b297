"""Turning scored predictions into result rows and result files (stages 4, 5 and 8)."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from utils.cli.parsing import UserError, warn
from utils.files import safe_io
from utils.files.model_names import check_plain_name
from utils.files.prediction_io import PredictionSet, list_prediction_files, normalise_predictions_dir, read_predictions
from utils.maths import uncertainty_metrics as um

EVAL_SPLITS = ("test", "ood_test")
SINGLE_UNCERTAINTY_TYPES = ("softmax_response", "entropy")
SINGLE_RESULT_COLUMNS = ["model", "wrapper", "uncertainty_type", "gflops", "params", "split"]
DUO_RESULT_COLUMNS = ["model_large", "model_small", "mode", "uncertainty_type", "gflops_large", "gflops_small",
               "gflops_balance", "split"]
ALWAYS_DEFINED = ("Acc", "Brier", "NLL", "ECE")      # CP_AUROC alone may be NaN (all or no prediction correct)
# Every spread this project reports (stage 8's std rows, the report's ± and its shaded bands) is the sample
# standard deviation (ddof = 1) over subsets, seeds or duos; one value has none.
SPREAD_DDOF = 1
ENSEMBLE_RESULT_COLUMNS = ["model", "m", "subset", "members", "uncertainty_type", "split"]
# stage 5 --bootstrap: each duo x mode x uncertainty type x metric against the temperature-scaled large model
DELTA_VALUE_COLUMNS = ["delta", "ci_low", "ci_high", "significant", "B", "seed"]
DELTA_RESULT_COLUMNS = DUO_RESULT_COLUMNS + ["metric"]
# stage 7: one row per duo x order x uncertainty type x threshold (a sweep point or a val-fitted budget)
# stage 4 --bootstrap: each baseline (soup, IVON, Laplace) raw and TS against its temperature-scaled backbone
SINGLE_DELTA_RESULT_COLUMNS = ["model", "base", "wrapper", "uncertainty_type", "split", "metric"]
# stage 8 --bootstrap: DE(m), the mean over its subsets, against the temperature-scaled base model
ENSEMBLE_DELTA_RESULT_COLUMNS = ["model", "m", "base", "subsets", "uncertainty_type", "split", "metric"]
CASCADE_RESULT_COLUMNS = ["model_large", "model_small", "order", "uncertainty_type", "selection", "target", "tau",
                          "deferred", "gflops_large", "gflops_small", "gflops_expected", "split"]


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


def results_path(output_dir: str | Path, kind: str, dataset: str, split: str) -> Path:
    return Path(output_dir) / f"evaluation_{kind}_{dataset}{'_ood' if split == 'ood_test' else ''}.csv"


def write_results(output_dir: str | Path, kind: str, dataset: str, rows: list[dict],
                  descriptive_columns: list[str], key_columns: list[str],
                  value_columns=um.METRIC_COLUMNS, always_defined=ALWAYS_DEFINED,
                  replace_groups: list[str] | None = None) -> list[Path]:
    """Upsert rows into one results file per split (test and ood_test), value (metric) columns first
    (`replace_groups`: see safe_io.upsert_csv)."""
    frame = pd.DataFrame(rows)
    columns = list(value_columns) + descriptive_columns
    if len(frame):
        defined = frame[list(always_defined)].to_numpy(dtype=np.float64)
        if not np.isfinite(defined).all():          # the last guard: a NaN never reaches a results table
            row = frame.iloc[int(np.flatnonzero(~np.isfinite(defined).all(axis=1))[0])]
            raise UserError(f"non-finite {', '.join(always_defined)} for {row[key_columns].tolist()}; nothing was "
                            f"written to {output_dir}: check the prediction files and temperatures")
    written = []
    for split in EVAL_SPLITS:
        part = frame[frame["split"] == split] if len(frame) else frame
        if part.empty:
            continue
        path = results_path(output_dir, kind, dataset, split)
        safe_io.upsert_csv(path, part[columns], key_columns, columns, replace_groups=replace_groups)
        written.append(path)
    return written


# evaluation_<kind>_<dataset>: a dataset named probs_x or delta_x would share its files with another kind's
# (evaluation_duo_probs_x.csv is kind duo_probs of x and kind duo of probs_x)
RESERVED_DATASET_PREFIXES = ("probs_", "delta_")


def check_dataset_name(name: str, what: str) -> str:
    """A dataset name that can be part of result file names: plain, and not starting with a reserved prefix."""
    check_plain_name(name, what)
    if name.casefold().startswith(RESERVED_DATASET_PREFIXES):
        raise UserError(f"{what}: '{name}' starts with {' or '.join(RESERVED_DATASET_PREFIXES)}, which result file names "
                        f"use for --combine probs and --bootstrap files; pass --dataset with another name")
    return name


def resolve_dataset(flag: str | None, recorded: Iterable[str | None], predictions_dir: str | Path) -> str:
    """The dataset name for result file names: --dataset, else the one the prediction files record,
    else (CSV files carry no metadata) the predictions folder's name."""
    if flag:
        return check_dataset_name(flag, "--dataset")
    names = {name for name in recorded if name}
    if len(names) == 1:
        return check_dataset_name(names.pop(), "the dataset recorded in the prediction files")
    if not names:
        fallback = normalise_predictions_dir(predictions_dir).resolve().name
        warn(f"the prediction files do not record their dataset; naming the results after the folder "
             f"'{fallback}' (pass --dataset NAME to choose)")
        return check_dataset_name(fallback, "the predictions folder's name")
    raise UserError(f"--dataset: prediction files come from several datasets {sorted(names)}; pass --dataset NAME "
                    f"or separate the folders")


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
    from utils.files.prediction_io import align
    large.split("test", "to evaluate the duo")
    for split in EVAL_SPLITS:
        if split not in large.splits:
            continue
        if split not in small.splits:
            warn(f"{large.model} + {small.model}: {small.source} has no '{split}' split; skipped it")
            continue
        data_large = large.splits[split]
        yield split, data_large, align(data_large, small.splits[split], large.source, small.source, split)


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


def baseline_delta_rows(files, temperatures, uncertainty_types, resamples: int, seed: int) -> list[dict]:
    """Rows of evaluation_single_model_delta: every baseline file among `files` (name -> path; a soup, IVON or
    Laplace predictive of a backbone that is among them too), raw and temperature-scaled, minus its
    temperature-scaled backbone, on the samples both predicted (aligned by id)."""
    from utils.files.model_names import baseline_backbone
    from utils.files.prediction_io import align
    derived: dict[str, list[str]] = {}
    for name in files:
        backbone = baseline_backbone(name)
        if backbone is not None and backbone in files:
            derived.setdefault(files.spelling(backbone), []).append(name)
    rows = []
    for backbone, names in sorted(derived.items()):
        base_set = read_predictions(files[backbone])
        baselines = {split: resampled_baseline(scaled_terms(data.logits, data.labels, temperatures[backbone],
                                                            uncertainty_types), resamples, seed)
                     for split, data in base_set.splits.items() if split in EVAL_SPLITS}
        for name in sorted(names):
            other = read_predictions(files[name])
            for split, base in baselines.items():
                if split not in other.splits:
                    continue
                data = align(base_set.splits[split], other.splits[split], base_set.source, other.source, split)
                for wrapper, temperature in (("None", 1.0), ("TempScaleWrapper", temperatures[name])):
                    terms = scaled_terms(data.logits, data.labels, temperature, uncertainty_types)
                    rows += delta_rows(base, terms, resamples, seed,
                                       {"model": name, "base": backbone, "wrapper": wrapper, "split": split})
            print(f"{name}: paired bootstrap against the temperature-scaled {backbone} (B={resamples})")
    return rows

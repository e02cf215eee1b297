"""What the evaluation stages read: prediction sets (cached, paired by id), the duos a folder has files for, the
dataset name of the result files, and a duo's costs."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np

from utils.errors import UserError, warn
from utils.files import tables
from utils.files.prediction_io import (
    PredictionSet,
    aligned,
    list_prediction_files,
    normalise_predictions_dir,
    read_predictions,
)
from utils.files.results import check_dataset_name, eval_splits


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
    for split in eval_splits(large.splits):
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


def pair_costs(duo, large: PredictionSet, small: PredictionSet, costs, backbones) -> dict:
    """A duo row's gflops_large, gflops_small and gflops_balance: each member's cost as `tables.cost_of` finds it
    (the duos CSV, the backbone CSV, what stage 1 measured), the balance as the duos CSV gives it, else their ratio."""
    large_cost = tables.cost_of(large.model, costs, backbones, large.meta)
    small_cost = tables.cost_of(small.model, costs, backbones, small.meta)
    balance = duo.gflops_balance if np.isfinite(duo.gflops_balance) else small_cost / large_cost
    return {"gflops_large": large_cost, "gflops_small": small_cost, "gflops_balance": balance}

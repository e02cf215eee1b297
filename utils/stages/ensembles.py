"""Deep ensembles, pool-then-calibrate (stage 8): random subsets of K members' prediction sets, pooled (mean
logits, or mean probabilities), one temperature fitted on val per subset, every metric per subset, their mean and
spread, and the paired bootstrap of DE(m) against the temperature-scaled base model; and the official code's
pre-averaged ensemble files."""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.errors import UserError
from utils.files import tables
from utils.files.model_names import NameMap
from utils.files.prediction_io import DIGEST_LENGTH, PredictionSet, aligned, read_official_ensemble
from utils.files.results import EVAL_SPLITS
from utils.maths.uncertainty_metrics import METRIC_COLUMNS, SPREAD_DDOF, ProbabilityMixture, WeightedLogits
from utils.stages.calibration import checked_temperature
from utils.stages.intervals import delta_rows, resampled_baseline, scaled_terms
from utils.stages.scoring import single_model_metrics


def pooled_logits(members: list, combine: str) -> np.ndarray:
    """The members' mean logits, or (combine="probs") the log of their mean probabilities."""
    if combine == "probs":
        return ProbabilityMixture(members, [1.0] * len(members)).materialise()
    return WeightedLogits(members, [1.0 / len(members)] * len(members)).materialise()


def draw_subsets(num_members: int, size: int, count: int, seed: int) -> list[tuple[int, ...]]:
    """`count` distinct sorted index subsets of `size` (all of them when fewer exist), reproducibly."""
    total = math.comb(num_members, size)
    if total <= count:
        return list(itertools.combinations(range(num_members), size))
    rng = np.random.default_rng([seed, num_members, size])
    chosen: dict[tuple[int, ...], None] = {}
    while len(chosen) < count:
        chosen.setdefault(tuple(sorted(rng.choice(num_members, size, replace=False).tolist())), None)
    return list(chosen)


def default_name(members: list[PredictionSet]) -> str:
    """The members' common name prefix (compared in any case, spelt as the first member), else deep_ensemble."""
    shared = len(os.path.commonprefix([m.model.casefold() for m in members]))
    return members[0].model[:shared].rstrip("_-.") or "deep_ensemble"


def member_splits(members: list[PredictionSet]) -> dict[str, list]:
    """{split: [each member's Split, aligned by id to the first member's]} for val and the evaluation splits the
    first member has (val and test are required)."""
    reference = members[0]
    splits = {}
    for split in ("val",) + EVAL_SPLITS:
        if split not in reference.splits:
            if split in ("val", "test"):
                reference.split(split, "to fit and evaluate the ensemble")
            continue
        splits[split] = [reference.splits[split]] + [aligned(reference, m, split, "like the first member")
                                                     for m in members[1:]]
    return splits


@dataclass
class Ensemble:
    """What stage 8 evaluates: the members, aligned by id, under one name."""
    name: str
    members: list[PredictionSet]
    splits: dict[str, list]
    combine: str = "logits"
    method: str = "exact"

    @property
    def provenance(self) -> dict:
        """The digest of the members together, and each member's (`member_digests`, for the report's checks)."""
        digest = hashlib.sha256("|".join(m.digest for m in self.members).encode()).hexdigest()[:DIGEST_LENGTH]
        return {"digest": digest, "member_digests": "|".join(f"{m.model}:{m.digest}" for m in self.members)}

    def rows(self, sizes, count: int, seed: int, uncertainty_types, resamples: int = 0,
             bootstrap_seed: int = 0, where: str = "--members") -> tuple[list[dict], dict]:
        """Per-subset rows of every size, and with `resamples` each subset's (point, resampled) metrics keyed by
        (m, split, uncertainty type)."""
        rows, resampled = [], {}
        labels = {split: found[0].labels for split, found in self.splits.items()}
        for size in sizes:
            subsets = draw_subsets(len(self.members), size, count, seed)
            for number, subset in enumerate(subsets):
                label = "+".join(self.members[i].model for i in subset)
                val_mean = pooled_logits([self.splits["val"][i].logits for i in subset], self.combine)
                temperature = checked_temperature(val_mean, labels["val"], f"{where}: the ensemble {label}",
                                                  f"{self.name} ({label})", self.method).temperature
                for split in (s for s in EVAL_SPLITS if s in self.splits):
                    mean = pooled_logits([self.splits[split][i].logits for i in subset], self.combine)
                    pooled = WeightedLogits([mean], [1.0 / temperature])
                    kept = mean.argmax(1) if math.isinf(temperature) else None   # T = inf: uniform p, the mean's argmax
                    for uncertainty, metrics in single_model_metrics(pooled, labels[split], uncertainty_types,
                                                                     kept).items():
                        rows.append({**metrics, "model": self.name, "m": size, "subset": str(number),
                                     "members": label, "uncertainty_type": uncertainty, "split": split,
                                     **self.provenance})
                    if resamples:
                        terms = scaled_terms(mean, labels[split], temperature, uncertainty_types)
                        for uncertainty, found in resampled_baseline(terms, resamples, bootstrap_seed).items():
                            resampled.setdefault((size, split, uncertainty), []).append(found)
            print(f"m={size}: {len(subsets)} subset(s) evaluated")
        return rows, resampled

    def summaries(self, rows: list[dict]) -> list[dict]:
        """`subset=mean` rows of each size, split and uncertainty type, and `subset=std` rows where a size has two
        or more subsets (the spread of one is undefined: no row rather than a NaN one)."""
        out = []
        for (size, uncertainty, split), group in pd.DataFrame(rows).groupby(["m", "uncertainty_type", "split"],
                                                                             sort=False):
            statistics = [("mean", group[METRIC_COLUMNS].mean())]
            if len(group) > 1:
                statistics.append(("std", group[METRIC_COLUMNS].std(ddof=SPREAD_DDOF)))
            for statistic, values in statistics:
                out.append({**values.to_dict(), "model": self.name, "m": size, "subset": statistic, "members": "",
                            "uncertainty_type": uncertainty, "split": split, **self.provenance})
        return out

    def deltas(self, resampled: dict, base: PredictionSet, uncertainty_types, resamples: int, seed: int) -> list[dict]:
        """DE(m) - the temperature-scaled `base`: the mean over subsets of each resample's metrics against the base's
        on the same resamples (every subset and the base share them: same samples, B and seed)."""
        base_splits = {split: aligned(self.members[0], base, split, "like the members") for split in self.splits}
        val = base_splits["val"]
        base_temperature = checked_temperature(val.logits, val.labels, base.source, base.model, self.method).temperature
        baselines = {split: resampled_baseline(scaled_terms(base_splits[split].logits, self.splits[split][0].labels,
                                                            base_temperature, uncertainty_types), resamples, seed)
                     for split in EVAL_SPLITS if split in self.splits}
        rows = []
        for (size, split, uncertainty), found in resampled.items():
            point = {m: float(np.mean([f[0][m] for f in found])) for m in METRIC_COLUMNS}
            draws = {m: np.mean([f[1][m] for f in found], axis=0) for m in METRIC_COLUMNS}
            rows += delta_rows(baselines[split], {uncertainty: (point, draws)}, resamples, seed,
                               {"model": self.name, "m": size, "base": base.model, "subsets": len(found),
                                "split": split, "digest": self.provenance["digest"], "digest_base": base.digest,
                                "temperature_base": base_temperature})
        print(f"paired bootstrap of DE(m) against the temperature-scaled {base.model} (B={resamples})")
        return rows


def official_ensemble_rows(folder: Path, backbone_csv, uncertainty_types) -> list[dict]:
    """Rows for the official code's pre-averaged ensembles `<model>_<m>.csv` in `folder` (the top-m fine-tuning
    trials' mean logits), evaluated raw as the official script did; <model> must be a backbone row."""
    if not folder.is_dir():
        raise UserError(f"--prediction_dir: {folder} not found")
    known = NameMap((name, True) for name in tables.backbone_names(tables.read_backbones(backbone_csv)))
    # the folder is y-prediction/<dataset>/<split>/deep_ensemble (the official script called every split "test")
    split = folder.resolve().parent.name if folder.resolve().parent.name in EVAL_SPLITS else "test"
    rows, seen = [], NameMap()
    for path in sorted(folder.glob("*.csv")):
        base, _, m = path.stem.rpartition("_")
        if not re.fullmatch(r"[0-9]+", m) or int(m) < 1 or base not in known:
            print(f"{path.name}: not <backbone>_<m>.csv, skipped (m >= 1)")
            continue
        key = (base, str(int(m)))
        if key in seen:                  # one result row per (model, m): a second file would silently win
            raise UserError(f"--prediction_dir: {seen[key].name} and {path.name} are both the m={int(m)} ensemble of "
                            f"{known.spelling(base)}; keep one")
        seen[key] = path
        data = read_official_ensemble(path)
        for uncertainty, metrics in single_model_metrics(data.logits, data.labels, uncertainty_types).items():
            rows.append({**metrics, "model": known.spelling(base), "m": int(m), "subset": "top", "members": path.name,
                         "uncertainty_type": uncertainty, "split": split})
        print(f"{path.name}: evaluated ({split}, m={m}, raw logits)")
    if not rows:
        raise UserError(f"--prediction_dir: no <backbone>_<m>.csv ensembles in {folder}; give --members FILE ... "
                        f"to build deep ensembles from prediction files")
    return rows

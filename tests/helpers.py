"""Synthetic prediction files for tests: correlated members of a duo with known labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.files.prediction_io import PredictionSet, Split, write_predictions

DEFAULT_SIZES = {"val": 300, "test": 400, "ood_test": 350}


def make_duo_logits(num_classes: int = 7, sizes: dict | None = None, seed: int = 0, models=("large", "small"),
                    quality=(2.5, 1.2), scale=(3.0, 1.5)) -> dict[str, PredictionSet]:
    """Prediction sets sharing labels and ids: each model sees a shared signal plus its own noise,
    so the members are correlated but not identical (as a real large model and its sidekick)."""
    rng = np.random.default_rng(seed)
    sizes = sizes or DEFAULT_SIZES
    labels = {s: rng.integers(0, num_classes, n) for s, n in sizes.items()}
    shared = {s: rng.normal(size=(n, num_classes)) for s, n in sizes.items()}
    out = {}
    for model, q, c in zip(models, quality, scale):
        splits = {}
        for s, n in sizes.items():
            signal = shared[s] + rng.normal(size=(n, num_classes))
            signal[np.arange(n), labels[s]] += q * (0.7 if s == "ood_test" else 1.0)
            ids = np.array([f"img_{s}_{i:05d}.jpg" for i in range(n)])
            splits[s] = Split((c * signal).astype(np.float32), labels[s].astype(np.int64), ids)
        out[model] = PredictionSet(model=model, splits=splits, meta={"dataset": "synthetic", "kind": "logits"})
    return out


def write_set(pset: PredictionSet, folder: Path, suffix: str = ".npz") -> Path:
    return write_predictions(pset, Path(folder) / f"{pset.model}{suffix}")


def write_official(pset: PredictionSet, root: Path) -> Path:
    """The official `y-prediction/<dataset>/<split>/raw/<model>.csv` layout (ids = row order)."""
    import pandas as pd
    for split, data in pset.splits.items():
        folder = Path(root) / split
        (folder / "raw").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(data.logits).to_csv(folder / "raw" / f"{pset.model}.csv", index=False)
        pd.DataFrame({"target": data.labels}).to_csv(folder / "point_prediction.csv", index=False)
    return Path(root)


def permuted(pset: PredictionSet, seed: int = 1) -> PredictionSet:
    """The same predictions with rows shuffled within each split."""
    rng = np.random.default_rng(seed)
    splits = {}
    for s, d in pset.splits.items():
        order = rng.permutation(len(d))
        splits[s] = Split(d.logits[order], d.labels[order], d.ids[order])
    return PredictionSet(pset.model, splits, dict(pset.meta), pset.source)


def write_features(pset: PredictionSet, path: Path, width: int = 8) -> None:
    """A features file (stage 1 --features layout) of random pooled features for every split of `pset`."""
    rng = np.random.default_rng(0)
    arrays = {}
    for name, split in pset.splits.items():
        arrays[f"features_{name}"] = rng.normal(size=(len(split), width)).astype(np.float32)
        arrays[f"ids_{name}"] = split.ids
    np.savez(path, **arrays)

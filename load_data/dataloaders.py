"""`get_dataloaders`: a dataset's splits as DataLoaders of (image, label, id) batches."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from load_data.datasets import SPLITS_ORDER, DatasetSplits, SampleDataset, load_dataset


def get_dataloaders(name: str, root: str | Path | None, batch_size: int, num_workers: int = 0,
                    transforms: dict[str, Callable] | Callable | None = None, ood_root: str | Path | None = None,
                    split_dir: str | Path | None = None, subset: int | None = None, shuffle_train: bool = True,
                    pin_memory: bool = False) -> tuple[dict[str, torch.utils.data.DataLoader | None], DatasetSplits]:
    """Loaders for train, val, test and ood_test (None where the dataset has none).

    `transforms` is {"train": T_train, "eval": T_eval} (each split gets its own transform; the
    official code's Caltech bug gave training the test transform) or one callable for every split.
    `subset` keeps the first N training images (quick runs).
    """
    data = load_dataset(name, root, ood_root=ood_root, split_dir=split_dir)
    return make_loaders(data, batch_size, num_workers, transforms, subset, shuffle_train, pin_memory), data


def make_loaders(data: DatasetSplits, batch_size: int, num_workers: int = 0,
                 transforms: dict[str, Callable] | Callable | None = None, subset: int | None = None,
                 shuffle_train: bool = True, pin_memory: bool = False,
                 splits=SPLITS_ORDER) -> dict[str, torch.utils.data.DataLoader | None]:
    """DataLoaders over an already loaded dataset (stage 1 builds one set per model's transforms)."""
    if not isinstance(transforms, dict):
        transforms = {"train": transforms, "eval": transforms}
    loaders = {}
    for split in splits:
        split_data = data.splits.get(split)
        if split_data is None:
            loaders[split] = None
            continue
        dataset = SampleDataset(split_data, transforms.get("train" if split == "train" else "eval"))
        if split == "train" and subset:
            dataset = torch.utils.data.Subset(dataset, range(min(subset, len(dataset))))
        loaders[split] = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle_train and split == "train", num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=num_workers > 0, drop_last=False)
    return loaders

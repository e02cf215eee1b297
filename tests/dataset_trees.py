"""Tiny datasets in the real on-disk layouts (WILDS iWildCam v2.0, Caltech256, ImageNet val + V2), built by the tests
in temporary folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

IWILDCAM_SPLITS = {"train": 12, "val": 4, "test": 5, "id_val": 3, "id_test": 4}
IWILDCAM_CLASSES = 4


def _image(path: Path, seed: int, size=(40, 30), mode="RGB") -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)


def make_iwildcam(root: Path) -> Path:
    """<root>/iwildcam_v2.0/{RELEASE_v2.0.txt, metadata.csv, train/*.jpg}; labels, locations and
    sequences cover 0..max as the WILDS loader asserts."""
    data_dir = Path(root) / "iwildcam_v2.0"
    (data_dir / "train").mkdir(parents=True)
    (data_dir / "RELEASE_v2.0.txt").write_text("")
    rows, i = [], 0
    for split, count in IWILDCAM_SPLITS.items():
        for _ in range(count):
            filename = f"img{i:04d}.jpg"
            _image(data_dir / "train" / filename, seed=i, mode="L" if i % 5 == 0 else "RGB")
            rows.append({"split": split, "location_remapped": i % 3, "location": 100 + i % 3,
                         "sequence_remapped": i, "seq_id": f"s{i}", "y": i % IWILDCAM_CLASSES,
                         "category_id": 10 + i % IWILDCAM_CLASSES,
                         "datetime": f"2013-01-{1 + i % 28:02d} 10:00:{i % 60:02d}.000",
                         "filename": filename, "image_id": f"id{i}"})
            i += 1
    pd.DataFrame(rows).to_csv(data_dir / "metadata.csv")         # pandas index column, like the real file
    return Path(root)


CALTECH_FOLDERS = ["001.ak47", "002.american-flag", "003.backpack", "257.clutter"]
CALTECH_PER_CLASS = 10


def make_caltech256(root: Path, per_class: int = CALTECH_PER_CLASS) -> Path:
    """<root>/caltech256/256_ObjectCategories/<NNN.name>/<c+1:03d>_<k:04d>.jpg (c = sorted position)."""
    base = Path(root) / "caltech256" / "256_ObjectCategories"
    for c, folder in enumerate(sorted(CALTECH_FOLDERS)):
        for k in range(1, per_class + 1):
            _image(base / folder / f"{c + 1:03d}_{k:04d}.jpg", seed=100 * c + k, mode="L" if k == 3 else "RGB")
    return Path(root)


IMAGENET_CLASSES = ["n01440764", "n01443537", "n01484850"]
IMAGENET_PER_CLASS = 20
V2_PER_CLASS = 4


def make_imagenet(root: Path) -> tuple[Path, Path]:
    """<root>/imagenet/val/<wnid>/*.JPEG and <root>/imagenetv2/<0..K-1>/*.jpeg."""
    val = Path(root) / "imagenet" / "val"
    for c, wnid in enumerate(IMAGENET_CLASSES):
        for k in range(IMAGENET_PER_CLASS):
            _image(val / wnid / f"ILSVRC2012_val_{c * 100 + k:08d}.JPEG", seed=1000 + 100 * c + k)
    v2 = Path(root) / "imagenetv2"
    for c in range(len(IMAGENET_CLASSES)):
        for k in range(V2_PER_CLASS):
            _image(v2 / str(c) / f"{k:03d}.jpeg", seed=5000 + 10 * c + k)
    return val.parent, v2

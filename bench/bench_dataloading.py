"""How many CPU cores a GPU needs: JPEG decode + the training transform (RGB -> RandAugment -> flip ->
resize/crop -> normalise) on synthetic camera-trap-sized JPEGs, images/s for each number of workers.

    python bench/bench_dataloading.py --workers 0 1 2 --images 64
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from load_data.datasets import SampleDataset, SplitData
from load_models.model_loader import get_transforms


def make_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    for i in range(count):
        image = Image.fromarray(np.roll(base, i, axis=1)).resize(size, Image.BILINEAR)   # smooth, JPEG-like content
        path = folder / f"{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, nargs=2, default=[1920, 1080], help="JPEG width height (iWildCam-like)")
    parser.add_argument("--model", default="ConvNeXt_Base", help="whose preprocessing (torchvision name)")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    transform = get_transforms(args.model, "torchvision")["train"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images, tuple(args.size))
        split = SplitData(read=lambda i: (Image.open(paths[i]), 0), ids=list(range(len(paths))),
                          labels=np.zeros(len(paths), dtype=np.int64))
        dataset = SampleDataset(split, transform)
        for workers in args.workers:
            loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=workers)
            start = time.perf_counter()
            count = sum(len(batch[1]) for batch in loader)
            rate = count / (time.perf_counter() - start)
            print(f"{workers} worker(s): {rate:7.1f} images/s ({args.size[0]}x{args.size[1]} JPEG -> "
                  f"{args.model} training transform)")


if __name__ == "__main__":
    main()

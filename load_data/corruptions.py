"""Image corruptions at five severities, after ImageNet-C (Hendrycks & Dietterich, 2019), applied on the fly.

The maintained package of the ImageNet-C corruptions (`imagecorruptions` 1.1.2) does not run with this project's
pins: it imports `scipy.ndimage.interpolation` (gone from scipy) and calls scikit-image with `multichannel=`
(gone from scikit-image). So the corruptions below are written here with numpy, scipy and Pillow, using
ImageNet-C's published severity parameters. Spatial parameters (blur radii) were defined for 224-px images and
are scaled by the image's size / 224. docs/robustness.md says what differs from ImageNet-C.

Each corruption maps an RGB uint8 image (H, W, 3) to another, given a severity 1..5 and a numpy Generator. The
generator is seeded per image from the sweep's seed, the corruption, the severity and the image's bytes
(`corrupt`), so a corrupted image never depends on the order, batch or worker that reads it, and nothing is
stored.
"""
from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image
from scipy import ndimage

from utils.files.prediction_io import CORRUPTION_NAMES

SEVERITIES = (1, 2, 3, 4, 5)


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gaussian_noise(image, severity, rng):
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return _uint8(_float(image) + rng.normal(0.0, sigma, image.shape))


def shot_noise(image, severity, rng):
    photons = (60, 25, 12, 5, 3)[severity - 1]
    return _uint8(rng.poisson(_float(image) * photons) / photons)


def impulse_noise(image, severity, rng):
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    values = _float(image)
    hit = rng.random(image.shape[:2]) < amount                 # salt or pepper on whole pixels
    salt = rng.random(image.shape[:2]) < 0.5
    values[hit & salt], values[hit & ~salt] = 1.0, 0.0
    return _uint8(values)


def defocus_blur(image, severity, rng):
    radius, alias = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    scale = min(image.shape[:2]) / 224.0
    radius, alias = max(radius * scale, 0.5), alias * scale
    reach = int(np.ceil(radius))
    grid = np.arange(-reach, reach + 1)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius ** 2).astype(np.float64)
    disk = ndimage.gaussian_filter(disk / disk.sum(), alias) if alias > 0 else disk / disk.sum()
    values = _float(image)
    return _uint8(np.stack([ndimage.convolve(values[..., c], disk, mode="reflect") for c in range(3)], axis=-1))


def contrast(image, severity, rng):
    keep = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    values = _float(image)
    mean = values.mean(axis=(0, 1), keepdims=True)
    return _uint8((values - mean) * keep + mean)


def brightness(image, severity, rng):
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
    lift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    hsv = rgb_to_hsv(_float(image))
    hsv[..., 2] = np.clip(hsv[..., 2] + lift, 0.0, 1.0)
    return _uint8(hsv_to_rgb(hsv))


def pixelate(image, severity, rng):
    keep = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    height, width = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, int(width * keep)), max(1, int(height * keep))), Image.BOX)
    return np.asarray(small.resize((width, height), Image.BOX))


def jpeg_compression(image, severity, rng):
    quality = (25, 18, 15, 10, 7)[severity - 1]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


# ImageNet-C's groups: noise, blur, weather, digital (a subset of its 15; the rest need its stored frost images
# or long per-image simulations)
CORRUPTIONS = {name: globals()[name] for name in CORRUPTION_NAMES}     # the names every split and YAML check uses


def corrupt(image: Image.Image, name: str, severity: int, seed: int = 0) -> Image.Image:
    """`image` under corruption `name` at `severity`, deterministic in (seed, name, severity, the image's pixels);
    returned in the image's own mode (a greyscale image stays greyscale)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity}: one of 1-5")
    rgb = np.asarray(image.convert("RGB"))
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity, zlib.crc32(rgb.tobytes())])
    out = Image.fromarray(CORRUPTIONS[name](rgb, severity, rng))
    return out if image.mode == "RGB" else out.convert(image.mode)


def split_name(name: str, severity: int) -> str:
    """The prediction-file split of one corruption x severity: `c_<corruption>_<severity>` (e.g. c_contrast_3)."""
    return f"c_{name}_{severity}"


def parse_split_name(split: str) -> tuple[str, int] | None:
    """(corruption, severity) of a corruption split's name, None for any other split."""
    if not split.startswith("c_"):
        return None
    name, _, severity = split[2:].rpartition("_")
    return (name, int(severity)) if name in CORRUPTIONS and severity.isdigit() and int(severity) in SEVERITIES else None


class _CorruptedRead:
    """Sample i of a split under one corruption (a class, not a closure: DataLoader workers pickle it)."""

    def __init__(self, read, name: str, severity: int, seed: int):
        self.read, self.name, self.severity, self.seed = read, name, severity, seed

    def __call__(self, i: int):
        image, label = self.read(i)
        return corrupt(image, self.name, self.severity, self.seed), label


def add_corrupted_splits(data, names: list[str], severities: list[int], seed: int = 0) -> list[str]:
    """Add to `data` (a load_data.datasets.DatasetSplits) one split per corruption x severity: its test split, each
    image corrupted when it is read (nothing stored). Returns the new splits' names. The corruption is applied to
    the image as the dataset stores it, before the model's own resize (ImageNet-C corrupts 224-px crops)."""
    from load_data.datasets import SplitData
    test = data.splits.get("test")
    if test is None:
        raise ValueError("no test split to corrupt")
    added = []
    for name in names:
        for severity in severities:
            split = split_name(name, severity)
            data.splits[split] = SplitData(read=_CorruptedRead(test.read, name, severity, seed), ids=test.ids,
                                           labels=test.labels)
            added.append(split)
    return added

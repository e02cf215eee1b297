"""Stage 5 on synthetic iWildCam-sized prediction files: 2 large x 2 small = 4 duos, all 5 modes x
3 uncertainty types, test (8,154) and ood_test (42,791) x 182 classes; whole-process wall time.
Also times the duo-weight fit at iWildCam val size (7,314).

    python bench/bench_duo_eval.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from utils.files.prediction_io import PredictionSet, Split, write_predictions
from utils.maths.calibrate_temperature import fit_duo_weights

SIZES = {"val": 7_314, "test": 8_154, "ood_test": 42_791}
NUM_CLASSES = 182
LARGE, SMALL = ("large_a", "large_b"), ("small_a", "small_b")
REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 7.0       # stage 5 against the official script on the same files, on the same machine


def write_models(folder: Path) -> None:
    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, NUM_CLASSES, n) for s, n in SIZES.items()}
    for model in LARGE + SMALL:
        quality = 3.0 if model in LARGE else 1.5
        splits = {}
        for s, n in SIZES.items():
            logits = rng.normal(size=(n, NUM_CLASSES))
            logits[np.arange(n), labels[s]] += quality
            splits[s] = Split(logits.astype(np.float32), labels[s], np.arange(n))
        write_predictions(PredictionSet(model, splits, {"dataset": "iwildcam"}), folder / f"{model}.npz")


def run(script: str, *args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / script), *map(str, args)], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--official_seconds", type=float, help="the official script's wall time on the same files, "
                        "measured on this machine (its code is not part of this repository); prints the ratio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_models(root / "predictions")
        pd.DataFrame([{"model_large": a, "model_small": b, "gflops_large": 20.0, "gflops_small": 2.0}
                      for a in LARGE for b in SMALL]).to_csv(root / "duos.csv", index=False)
        run("evaluate/2_temp_scale.py", "--predictions_dir", root / "predictions", "--output_dir", root / "cal")
        run("evaluate/3_duo_temp_scale.py", "--config", root / "duos.csv", "--predictions_dir", root / "predictions",
            "--output_dir", root / "cal")
        wall = min(run("evaluate/5_evaluate_duo_predictions.py", "--config", root / "duos.csv", "--predictions_dir",
                       root / "predictions", "--calibrated_dir", root / "cal", "--output_dir", root / "results")
                   for _ in range(args.repeats))
        rows = len(pd.read_csv(root / "results" / "evaluation_duo_iwildcam.csv")) + \
            len(pd.read_csv(root / "results" / "evaluation_duo_iwildcam_ood.csv"))
        val = {m: np.load(root / "predictions" / f"{m}.npz") for m in (LARGE[0], SMALL[0])}
        start = time.perf_counter()
        fit_duo_weights(val[LARGE[0]]["logits_val"], val[SMALL[0]]["logits_val"], val[LARGE[0]]["labels_val"])
        fit_s = time.perf_counter() - start
    ratio = (f"; the official script: {args.official_seconds} s -> {args.official_seconds / wall:.1f}x "
             f"(target >= {TARGET_RATIO:.0f}x)" if args.official_seconds else " (--official_seconds S prints the ratio)")
    print(f"stage 5, 4 duos x 5 modes x 3 uncertainty types x 2 splits ({rows} rows): {wall:.2f} s wall{ratio}")
    print(f"duo weight fit at iWildCam val size (7,314 x 182): {fit_s:.3f} s (target <= 0.5 s)")


if __name__ == "__main__":
    main()

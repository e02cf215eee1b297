"""Stage 5 at ImageNet size: 4 large x 8 small models = 32 duos, test 47,500 and ood_test (ImageNet V2)
10,000 images x 1,000 classes, all 5 modes x 3 uncertainty types; wall time per duo and peak memory of
the stage's process (temperatures fitted beforehand by stages 2 and 3, which are not timed).

    python bench/bench_imagenet_sweep.py [--large 4 --small 8] [--bootstrap 1000]

With --bootstrap B, stage 5 runs a second time with the paired intervals (shift detection's included) and the bench
prints both.

Writes ~3 GB of synthetic prediction files to a temporary folder (--tmp_dir to choose where).
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

SIZES = {"val": 2_500, "test": 47_500, "ood_test": 10_000}
NUM_CLASSES = 1_000
REPO = Path(__file__).resolve().parents[1]
TARGET_S_PER_DUO, TARGET_GB = 1.5, 3.5


def write_models(folder: Path, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = {s: rng.integers(0, NUM_CLASSES, n) for s, n in SIZES.items()}
    for i, model in enumerate(names):
        quality = 4.0 if model.startswith("large") else 2.0 + 0.1 * i
        splits = {}
        for split, n in SIZES.items():
            logits = rng.standard_normal((n, NUM_CLASSES), dtype=np.float32)
            logits[np.arange(n), labels[split]] += quality
            splits[split] = Split(logits, labels[split], np.arange(n))
        write_predictions(PredictionSet(model, splits, {"dataset": "imagenet"}), folder / f"{model}.npz")


_MEASURED = ("import resource, runpy, sys\n"
             "sys.argv = sys.argv[1:]\n"
             "try:\n"
             "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as exc:\n"
             "    assert not exc.code, exc.code\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def run(script: str, *args) -> tuple[float, float]:
    """(wall seconds, peak resident GB) of `python script args` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURED, str(REPO / script), *map(str, args)], check=True,
                          capture_output=True, text=True)
    return time.perf_counter() - start, int(done.stderr.split()[-1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--small", type=int, default=8)
    parser.add_argument("--tmp_dir", help="where the synthetic prediction files go (default: the system's)")
    parser.add_argument("--bootstrap", type=int, default=0, help="also time stage 5 with --bootstrap B")
    args = parser.parse_args()
    large = [f"large_{i}" for i in range(args.large)]
    small = [f"small_{i}" for i in range(args.small)]
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        root = Path(tmp)
        write_models(root / "predictions", large + small)
        pd.DataFrame([{"model_large": a, "model_small": b, "gflops_large": 20.0, "gflops_small": 2.0}
                      for a in large for b in small]).to_csv(root / "duos.csv", index=False)
        run("evaluate/2_temp_scale.py", "--predictions_dir", root / "predictions", "--output_dir", root / "cal")
        run("evaluate/3_duo_temp_scale.py", "--config", root / "duos.csv", "--predictions_dir", root / "predictions",
            "--output_dir", root / "cal")
        stage5 = ("evaluate/5_evaluate_duo_predictions.py", "--config", root / "duos.csv", "--predictions_dir",
                  root / "predictions", "--calibrated_dir", root / "cal")
        wall, peak_gb = run(*stage5, "--output_dir", root / "results")
        rows = sum(len(pd.read_csv(root / "results" / f"evaluation_duo_imagenet{s}.csv")) for s in ("", "_ood"))
        if args.bootstrap:
            boot_wall, boot_gb = run(*stage5, "--output_dir", root / "results_bootstrap", "--bootstrap", args.bootstrap)
            intervals = sum(len(pd.read_csv(path)) for path in (root / "results_bootstrap").glob("*delta*.csv"))
    duos = len(large) * len(small)
    print(f"stage 5, {duos} duos x 5 modes x 3 uncertainty types x 2 splits at ImageNet size ({rows} rows): "
          f"{wall:.1f} s wall, {wall / duos:.2f} s per duo (target <= {TARGET_S_PER_DUO} s), "
          f"peak {peak_gb:.2f} GB (target <= {TARGET_GB} GB)")
    if args.bootstrap:
        print(f"with --bootstrap {args.bootstrap} ({intervals} interval rows, shift detection's included): "
              f"{boot_wall:.1f} s wall, {boot_wall / duos:.2f} s per duo, peak {boot_gb:.2f} GB; "
              f"134 such duos ~{134 * boot_wall / duos / 60:.1f} min")


if __name__ == "__main__":
    main()

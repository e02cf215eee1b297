"""A duo of your own models, end to end, on real data that ships with scikit-learn (its 8x8 digits).

f_large is an MLP on the 64 pixels, the sidekick a logistic regression on 4x4-pooled images (16 features); their
`predict_proba` outputs are exported as prediction files of kind "probs" (val, test and a shifted ood_test: the
test images with Gaussian pixel noise), with a duos CSV that gives both models' costs. Then the project's stages
run on them exactly as the README's recipe says (2, 3, 4, 5 with the paired bootstrap, 7 with budgets, 9), and
the numpy API (utils/api.py) computes the same duo from the arrays, without files.

    python examples/digits_own_models.py --output_dir runs/digits
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPOSITORY = Path(__file__).resolve().parents[1]
SPLIT_SEED, NOISE_SEED, NOISE = 0, 1, 5.0         # pixel values are 0..16; noise sigma 5 keeps ~80% of f_large's accuracy


def pooled(images: np.ndarray) -> np.ndarray:
    """8x8 images -> 4x4 means of 2x2 blocks (the sidekick's cheaper input)."""
    return images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)


def make_models_and_splits():
    """(models {name: (classifier, features)}, splits {split: (images, labels, ids)}) of the digits data."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    train, val, test = order[:897], order[897:1347], order[1347:]
    noisy = np.clip(images[test] + np.random.default_rng(NOISE_SEED).normal(0, NOISE, images[test].shape), 0, 16)
    splits = {"val": (images[val], labels[val], val), "test": (images[test], labels[test], test),
              "ood_test": (noisy, labels[test], test)}
    large = MLPClassifier((128,), max_iter=500, random_state=0).fit(images[train] / 16, labels[train])
    small = LogisticRegression(max_iter=2000).fit(pooled(images[train]) / 16, labels[train])
    return {"mlp": (large, lambda x: x / 16), "logreg_pooled": (small, lambda x: pooled(x) / 16)}, splits


# multiply-adds per image: the MLP's two layers; the pooling and the logistic regression's one layer
GFLOPS = {"mlp": (64 * 128 + 128 * 10) / 1e9, "logreg_pooled": (64 + 16 * 10) / 1e9}


def probabilities(models, splits) -> dict:
    """{split: {model: predict_proba as float32}} (float32, as prediction files store them)."""
    return {split: {name: model.predict_proba(features(images)).astype(np.float32)
                    for name, (model, features) in models.items()} for split, (images, _, _) in splits.items()}


def export(probs: dict, splits, folder: Path) -> None:
    """Each model's predict_proba on the three splits, as a prediction file of kind "probs"."""
    from utils.files.prediction_io import PredictionSet, Split, write_predictions
    for name in GFLOPS:
        data = {split: Split(probs[split][name], labels, ids) for split, (_, labels, ids) in splits.items()}
        write_predictions(PredictionSet(name, data, {"dataset": "digits", "kind": "probs"}), folder / f"{name}.npz")
    pd.DataFrame([{"model_large": "mlp", "model_small": "logreg_pooled", "gflops_large": GFLOPS["mlp"],
                   "gflops_small": GFLOPS["logreg_pooled"]}]).to_csv(folder.parent / "duos.csv", index=False)


def run_stages(root: Path) -> None:
    """The README's recipe for your own models, each stage as a user runs it."""
    preds, cal, out, duos = "predictions", "calibrated", "results", "duos.csv"
    balance = GFLOPS["logreg_pooled"] / GFLOPS["mlp"]
    commands = [
        ["evaluate/2_temp_scale.py", "--predictions_dir", preds, "--output_dir", cal],
        ["evaluate/3_duo_temp_scale.py", "--config", duos, "--predictions_dir", preds, "--output_dir", cal],
        ["evaluate/4_evaluate_predictions.py", "--config", duos, "--predictions_dir", preds, "--calibrated_dir", cal,
         "--output_dir", out],
        ["evaluate/5_evaluate_duo_predictions.py", "--config", duos, "--predictions_dir", preds, "--calibrated_dir", cal,
         "--output_dir", out, "--bootstrap", "1000"],
        # budgets between the large model alone (1) and the whole duo (1 + balance)
        ["evaluate/7_evaluate_cascades.py", "--config", duos, "--predictions_dir", preds, "--calibrated_dir", cal,
         "--output_dir", out, "--budgets", f"{1 + balance / 2:.6f}"],
        ["evaluate/9_make_report.py", "--results_dir", out, "--calibrated_dir", cal, "--predictions_dir", preds],
    ]
    for command in commands:
        result = subprocess.run([sys.executable, str(REPOSITORY / command[0]), *command[1:]], cwd=root, text=True,
                                capture_output=True)
        if result.returncode:
            sys.exit(f"{command[0]} failed:\n{result.stderr}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/digits", help="where the files go (default runs/digits)")
    args = parser.parse_args(argv)
    root = Path(args.output_dir)
    (root / "predictions").mkdir(parents=True, exist_ok=True)
    models, splits = make_models_and_splits()
    probs = probabilities(models, splits)
    export(probs, splits, root / "predictions")
    run_stages(root)

    # the same duo from the arrays, without files: utils/api.py
    from utils.api import fit_duo
    labels = {split: data[1] for split, data in splits.items()}
    duo = fit_duo(probs["val"]["mlp"], probs["val"]["logreg_pooled"], labels["val"], kind="probs")
    print(f"fitted weights: w_large {duo.temperatures.weight_large:.4f}, w_small {duo.temperatures.weight_small:.4f}")
    for split in ("test", "ood_test"):
        gains = duo.compare(probs[split]["mlp"], probs[split]["logreg_pooled"], labels[split], resamples=1000,
                            split=split)
        nll = gains[(gains["mode"] == "asymmetric") & (gains["uncertainty_type"] == "softmax_response")
                    & (gains["metric"] == "NLL")].iloc[0]
        print(f"{split}: duo - TS mlp, NLL {nll.delta:+.4f} [{nll.ci_low:+.4f}, {nll.ci_high:+.4f}]"
              f"{' (significant)' if nll.significant else ' (not significant)'}")
    print(f"report: {root / 'results' / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

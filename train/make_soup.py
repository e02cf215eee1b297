"""Uniform and greedy soups of the fine-tuning trials hp_tune kept (paper A.4, Fig. 7).

    python train/make_soup.py --model convnext_base --dataset caltech256 --output_dir ./checkpoints

Reads <output_dir>/<dataset>/soup/<name>_trials.csv, writes ff/<name>_uniform.pth, ff/<name>_greedy.pth and
soup/<name>_soups.csv (which trials each soup used). The greedy soup adds trials, best first, while
the val metric strictly improves: the dataset's selection metric by default (macro-F1 on
iWildCam), `--greedy_metric acc` for the official code's behaviour.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from load_data.dataloaders import make_loaders
from load_data.datasets import load_dataset
from load_models import model_loader
from load_models.inference import predict, resolve_device
from train import engine, soups
from utils.cli import flags
from utils.cli.parsing import ArgumentParser, UserError, add_backbone_csv, run_main
from utils.files import safe_io
from utils.files.model_names import checkpoint_dir, checkpoint_path, output_path


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            parents=[flags.trained_model(), flags.dataset(), flags.raw_checkpoint(),
                                     flags.device(), flags.loader(batch_size=64)])
    add_backbone_csv(parser, "the spelling of model names")
    parser.add_argument("--greedy_metric", choices=("acc", "f1"), help="default: the dataset's selection metric")
    return parser


def read_trials(path: Path) -> pd.DataFrame:
    """The trial list hp_tune wrote, best first, each checkpoint once (a list that an older version
    extended on every --resume named the same trial several times)."""
    trials = safe_io.read_table(path, "soup trials CSV", "it is written by train/hp_tune.py")
    trials = trials.rename(columns={"checkpoint_path": "checkpoint"})      # the official column name
    missing_columns = [c for c in ("checkpoint", "val_metric", "trial") if c not in trials.columns]
    if missing_columns:
        raise UserError(f"{path}: lacks column(s) {missing_columns}; it is written by train/hp_tune.py")
    if trials.empty:
        raise UserError(f"{path}: no trials listed; run train/hp_tune.py first")
    if trials["checkpoint"].isna().any():
        raise UserError(f"{path}: data row {int(trials['checkpoint'].isna().to_numpy().argmax()) + 1} has no checkpoint")
    trials["val_metric"] = pd.to_numeric(trials["val_metric"], errors="coerce")
    bad = ~np.isfinite(trials["val_metric"].to_numpy(dtype=float))
    if bad.any():
        raise UserError(f"{path}: data row {int(bad.argmax()) + 1} has no finite val_metric")
    trials = trials.drop_duplicates(subset="checkpoint")
    if "run_id" in trials.columns:
        listed = trials["run_id"].fillna("").astype(str)
        trials = trials[(listed == "") | ~listed.duplicated()]
    trials = trials.sort_values("val_metric", ascending=False, kind="stable").reset_index(drop=True)
    # paths are relative to the CSV's folder (older lists: to the folder hp_tune ran in)
    trials["checkpoint"] = [str(path.parent / c) if not Path(c).is_absolute() and (path.parent / c).exists() else c
                            for c in trials["checkpoint"].astype(str)]
    missing = [p for p in trials["checkpoint"] if not Path(p).exists()]
    if missing:
        raise UserError(f"{path}: {len(missing)} trial checkpoint(s) missing, e.g. {missing[0]}")
    return trials


def main_impl(argv=None) -> int:
    args = flags.with_dataset_config(build_parser().parse_args(argv))
    name, given = flags.trained_model_name(args), args.save_name or args.model
    soup_dir = checkpoint_dir(args.output_dir, args.dataset, "soup")
    trials_csv = output_path(soup_dir, f"{name}_trials.csv")
    official = output_path(soup_dir / name, f"{name}_trials.csv")      # where the official hp_tune puts it
    if not trials_csv.exists() and not official.exists():
        raise UserError(f"{trials_csv} not found; run train/hp_tune.py for {given} on {args.dataset} first")
    trials_csv = trials_csv if trials_csv.exists() else official
    trials = read_trials(trials_csv)
    metric = args.greedy_metric or args.selection_metric

    model, record, transforms = model_loader.rebuild_from_checkpoint(trials["checkpoint"].iloc[0], source=args.source,
                                                                     tv_weights=args.tv_weights, raw_name=args.model)
    data = load_dataset(args.dataset, args.data_dir, split_dir=args.split_dir)
    device = resolve_device(args.device)
    val_loader = make_loaders(data, args.batch_size, args.num_workers, transforms, splits=["val"])["val"]
    model.to(device)

    reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def states():
        for path in trials["checkpoint"]:
            state = model_loader.read_checkpoint(path)["state_dict"]
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            if shapes != reference:          # averaging other shapes would broadcast silently, or fail deep inside
                wrong = sorted(set(shapes) ^ set(reference)) or [k for k in reference if shapes[k] != reference[k]]
                raise UserError(f"{path}: not an ingredient of this soup (another architecture or class count: "
                                f"{wrong[:3]} differ from {trials['checkpoint'].iloc[0]}); remove it from {trials_csv}")
            yield state

    def evaluate(state) -> float:
        model.load_state_dict(state)
        return engine.selection_score(predict(model, val_loader, device), metric)

    uniform, count = soups.uniform_soup(states())
    uniform_score = evaluate(uniform)
    greedy, used, history = soups.greedy_soup(states(), evaluate)
    meta = {k: record.get(k) for k in ("model_name", "source", "tv_weights", "num_classes", "dataset", "image_size")}
    outputs = safe_io.Outputs()                    # both soups and their record, or none of them
    for soup, state, score in (("uniform", uniform, uniform_score), ("greedy", greedy, max(history))):
        model_loader.save_checkpoint(checkpoint_path(args.output_dir, args.dataset, "ff", f"{name}_{soup}.pth"), state,
                                     outputs, **meta, stage=f"{soup}_soup", val_metric=score, selection_metric=metric)
    rows = [{"soup": "uniform", "trial": t, "val_metric_soup": uniform_score} for t in trials["trial"]]
    rows += [{"soup": "greedy", "trial": trials["trial"].iloc[i], "val_metric_soup": max(history[: i + 1])} for i in used]
    outputs.write_csv(output_path(soup_dir, f"{name}_soups.csv"), pd.DataFrame(rows), "soup record")
    outputs.commit()
    best_single = float(trials["val_metric"].iloc[0])
    print(f"{name}: best trial val {metric} {best_single:.4f} (as recorded); uniform soup of {count}: "
          f"{uniform_score:.4f}; greedy soup of {len(used)} (trials {trials['trial'].iloc[used].tolist()}): "
          f"{max(history):.4f}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

"""The flags several scripts share, each written once as an argparse parent parser, and the one merge of a
dataset YAML into parsed arguments: an explicit flag wins over the YAML, the YAML over the default below.

    parser = ArgumentParser(parents=[flags.dataset(), flags.device(), flags.loader(batch_size=64)])
    args = flags.with_dataset_config(parser.parse_args(argv))
"""
from __future__ import annotations

import argparse

from utils.cli.config import DATASETS, dataset_config
from utils.cli.parsing import bootstrap_resamples, non_negative_int, plain_name, positive_int
from utils.files import tables
from utils.files.model_names import SOURCES

PRECISIONS = ("auto", "bf16", "fp32")

# (YAML section, key, default) of every argument a dataset YAML supplies; the recipe's defaults live here only
FROM_CONFIG = {
    "data_dir": ("data", "root", None),
    "ood_dir": ("data", "ood_root", None),
    "split_dir": ("data", "split_dir", None),
    "image_size": ("data", "image_size", None),
    "batch_size": ("training", "batch_size", 32),
    "num_workers": ("training", "num_workers", 4),
    "epochs_lp": ("training", "num_epochs_lp", 8),
    "epochs_ff": ("training", "num_epochs_ff", 12),
    "epochs": ("training", "num_epochs_ff", 12),
    "warmup_epochs": ("training", "warmup_epochs", 1),
    "grace_period": ("training", "grace_period", 4),
    "selection_metric": ("training", "selection_metric", None),
    "augment": ("training", "augment", ["randaugment", "flip"]),
    "lp_samples": ("search", "lp_samples", 4),
    "num_samples": ("search", "num_samples", 12),
}


def default_selection_metric(dataset: str) -> str:
    """Macro-F1 on iWildCam (its classes are very unbalanced), accuracy elsewhere."""
    return "f1" if dataset == "iwildcam" else "acc"


def with_dataset_config(args: argparse.Namespace, keep_unset: tuple[str, ...] = ()) -> argparse.Namespace:
    """Read the dataset YAML (--config, else <--config_dir>/<dataset>.yaml, else the repository's) and fill
    every argument of FROM_CONFIG left unset (None) or without a flag in this script, except `keep_unset`
    (for a script with its own order, e.g. stage 1's image size: flag > checkpoint > YAML)."""
    config = dataset_config(args.dataset, getattr(args, "config", None), getattr(args, "config_dir", None))
    for name, (section, key, default) in FROM_CONFIG.items():
        if getattr(args, name, None) is None and name not in keep_unset:
            setattr(args, name, config[section].get(key, default))
    if args.selection_metric is None:
        args.selection_metric = default_selection_metric(args.dataset)
    args.dataset_config = config
    return args


def trained_model_name(args: argparse.Namespace) -> str:
    """The name hp_tune saved a model under (--save_name, else --model), spelt as backbones.csv spells it."""
    flag = "--save_name" if args.save_name else "--model"
    return tables.model_identity(args.save_name or args.model, flag, tables.read_backbones(args.backbone_csv))


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def dataset(required: bool = True, help: str = "dataset") -> argparse.ArgumentParser:
    """--dataset and where its images and YAML are."""
    parser = _parent()
    parser.add_argument("--dataset", "--dataset_name", required=required, choices=DATASETS, help=help)
    parser.add_argument("--data_dir", "--dataset_dir", help="dataset root (default: the YAML's data.root)")
    parser.add_argument("--config", help="dataset YAML (default configs/<dataset>.yaml of the repository)")
    parser.add_argument("--config_dir", help="the official flag: a folder holding <dataset>.yaml (--config wins)")
    return parser


def device(precision: str | None = None) -> argparse.ArgumentParser:
    """--device; --precision and --channels_last when `precision` names the default."""
    parser = _parent()
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available, else CPU")
    if precision is not None:
        parser.add_argument("--precision", choices=PRECISIONS, default=precision,
                            help=f"auto: bf16 autocast on CUDA, fp32 on CPU; fp32 everywhere is the paper's setting "
                                 f"(default: {precision})")
        parser.add_argument("--channels_last", action="store_true", help="channels_last memory format (faster convs on GPU)")
    return parser


def loader(batch_size: int | None, batch_help: str = "images per batch") -> argparse.ArgumentParser:
    """--batch_size (a None default: the YAML's training.batch_size) and --num_workers (the YAML's, else 4)."""
    parser = _parent()
    parser.add_argument("--batch_size", type=positive_int, default=batch_size,
                        help=batch_help + (" (default: the YAML's training.batch_size, else 32)" if batch_size is None
                                           else f" (default {batch_size})"))
    parser.add_argument("--num_workers", type=non_negative_int,
                        help="DataLoader worker processes (default: the YAML's training.num_workers, else 4)")
    return parser


def raw_checkpoint() -> argparse.ArgumentParser:
    """--source and --tv_weights: what a raw state_dict (which records neither) was built from."""
    parser = _parent()
    parser.add_argument("--source", choices=SOURCES,
                        help="torchvision or timm, for a raw state_dict (the official flag; default: backbones.csv, "
                             "else guessed from the name; project checkpoints record it)")
    parser.add_argument("--tv_weights", help="torchvision weights whose preprocessing a raw state_dict uses "
                        "(default: backbones.csv; project checkpoints record it)")
    return parser


def trained_model(help_model: str = "the model hp_tune trained") -> argparse.ArgumentParser:
    """--model, --save_name and --output_dir: a model trained by hp_tune under its checkpoint root."""
    parser = _parent()
    parser.add_argument("--model", "--model_name", required=True, type=plain_name, help=help_model)
    parser.add_argument("--output_dir", default="./checkpoints", help="checkpoint root (hp_tune's --output_dir)")
    parser.add_argument("--save_name", type=plain_name, help="hp_tune's --save_name (default: --model)")
    return parser


def result_dataset() -> argparse.ArgumentParser:
    """--dataset of the evaluation stages: only the name of the result files."""
    parser = _parent()
    parser.add_argument("--dataset", "--dataset_name", help="dataset name for the result files "
                        "(default: recorded in the prediction files)")
    return parser


def evaluation_folders(results: bool = True, calibrated_help: str = "folder of the stage-2/3 temperature CSVs "
                       "(default ./calibrated)") -> argparse.ArgumentParser:
    """--predictions_dir, --calibrated_dir and (results=True) --output_dir: the folders the evaluation stages read
    and write."""
    parser = _parent()
    parser.add_argument("--predictions_dir", "--prediction_dir_path", default="./predictions", metavar="DIR",
                        help="folder of prediction files, or official y-prediction/<dataset> (default ./predictions)")
    parser.add_argument("--calibrated_dir", default="./calibrated", help=calibrated_help)
    if results:
        parser.add_argument("--output_dir", "--save_dir", default="./results", help="results folder (default ./results)")
    return parser


def bootstrap(writes: str) -> argparse.ArgumentParser:
    """--bootstrap B and --bootstrap_seed of the evaluation stages; `writes` says what the intervals compare."""
    parser = _parent()
    parser.add_argument("--bootstrap", type=bootstrap_resamples, default=0, metavar="B",
                        help=f"also write {writes}, with its 95%% paired bootstrap interval over B resamples of the "
                             f"test samples (default 0: off; else 100 to 100000, 1000 is usual)")
    parser.add_argument("--bootstrap_seed", type=non_negative_int, default=0, help="seed of the resamples (default 0)")
    return parser

"""The IVON baseline (paper App. F.1, Table 3): continue training a fine-tuned model with the IVON
optimizer (ivon-opt) and predict with its posterior.

    python train/ivon_train.py --model ResNet50 --dataset caltech256 --output_dir ./checkpoints \
        --predictions_dir ./predictions --test_samples 8

Starts from <output_dir>/<dataset>/ff/<name>.pth (else lp/), keeps the epoch with the best val
metric, saves <output_dir>/<dataset>/ivon/<name>.pth (weights + optimizer state = the posterior) and
writes two prediction files: <name>_ivon (the Monte-Carlo predictive over --test_samples weight
samples, stored as log-probabilities, kind "log_probs") and <name>_ivon_det (the mean weights' logits).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from load_data.dataloaders import make_loaders
from load_data.datasets import DATASETS, load_dataset
from load_models import model_loader
from train import engine
from utils import tables
from utils.cli import (ArgumentParser, UserError, add_backbone_csv, non_negative_float, non_negative_int,
                       positive_float, positive_int, run_main)
from utils.config import dataset_config
from utils.model_names import output_path
from utils.prediction_io import SPLITS, PredictionSet, Split, write_predictions


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", "--model_name", required=True, help="the model hp_tune trained")
    parser.add_argument("--dataset", "--dataset_name", required=True, choices=DATASETS, help="dataset")
    parser.add_argument("--output_dir", default="./checkpoints", help="checkpoint root (hp_tune's --output_dir)")
    parser.add_argument("--predictions_dir", default="./predictions", help="where the prediction files go")
    parser.add_argument("--save_name", help="hp_tune's --save_name (default: --model)")
    parser.add_argument("--data_dir", "--dataset_dir", help="dataset root (default: the YAML's data.root)")
    parser.add_argument("--config", help="dataset YAML (default configs/<dataset>.yaml of the repository)")
    parser.add_argument("--config_dir", help="the official flag: a folder holding <dataset>.yaml (--config wins)")
    parser.add_argument("--source", choices=model_loader.SOURCES,
                        help="source of the starting checkpoint when it is a raw state_dict (the official flag; "
                             "project checkpoints record it)")
    parser.add_argument("--tv_weights", help="torchvision weights whose preprocessing a raw state_dict uses "
                        "(the official flag; project checkpoints record it)")
    add_backbone_csv(parser, "the spelling of model names")
    parser.add_argument("--learning_rate", type=positive_float, default=1e-3, help="IVON learning rate (official default 1e-3)")
    parser.add_argument("--epochs", type=positive_int, help="default: the YAML's num_epochs_ff (the official script used 36)")
    parser.add_argument("--warmup_epochs", type=non_negative_int, help="default: the YAML's warmup_epochs")
    parser.add_argument("--train_samples", type=positive_int, default=1, help="weight samples per training step")
    parser.add_argument("--test_samples", type=positive_int, default=8, help="weight samples of the MC predictive")
    parser.add_argument("--ess", type=positive_float, help="effective sample size (default: the training set size)")
    parser.add_argument("--hess_init", type=positive_float, default=1.0, help="IVON's initial Hessian estimate")
    parser.add_argument("--weight_decay", type=non_negative_float, default=1e-4, help="IVON's prior precision (library default)")
    parser.add_argument("--batch_size", type=positive_int, help="default: the YAML's batch_size")
    parser.add_argument("--num_workers", type=non_negative_int, default=4, help="DataLoader worker processes")
    parser.add_argument("--subset", type=positive_int, help="train on the first N training images (quick runs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available, else CPU")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="weight-sampling and shuffling seed")
    return parser


def sampled_step(model, optimizer, x, y, samples: int) -> float:
    """One IVON step: gradients at `samples` weight draws from the posterior, then the update."""
    criterion = torch.nn.CrossEntropyLoss()
    total = 0.0
    for _ in range(samples):
        with optimizer.sampled_params(train=True):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite IVON training loss {float(loss.detach())}")
            loss.backward()
        total += float(loss.detach())
    optimizer.step()
    return total / samples


@torch.inference_mode()
def mc_log_probs(model, optimizer, loader, device, samples: int) -> engine.Predictions:
    """log of the mean softmax over `samples` posterior draws (never a double softmax)."""
    model.eval()
    log_probs, labels, ids = [], [], []
    for x, y, sample_ids in loader:
        x = x.to(device)
        draws = []
        for _ in range(samples):
            with optimizer.sampled_params():
                draws.append(torch.log_softmax(model(x).double(), dim=1))
        log_probs.append((torch.logsumexp(torch.stack(draws), 0) - math.log(samples)).float().cpu())
        labels.append(y)
        ids.extend(engine.batch_ids(sample_ids))
    return engine.stack_predictions(log_probs, labels, ids)


def main_impl(argv=None) -> int:
    import ivon
    args = build_parser().parse_args(argv)
    config = dataset_config(args.dataset, args.config, args.config_dir)
    given = args.save_name or args.model
    name = tables.model_identity(given, "--save_name" if args.save_name else "--model",
                                 tables.read_backbones(args.backbone_csv))
    root = Path(args.output_dir) / args.dataset
    start = next((p for p in (output_path(root / "ff", f"{name}.pth"), output_path(root / "lp", f"{name}.pth"))
                  if p.exists()), None)
    if start is None:
        raise UserError(f"no {root}/ff/{name}.pth or {root}/lp/{name}.pth; run train/hp_tune.py for {given} first")
    torch.manual_seed(args.seed)
    model, record = model_loader.load_model_from_checkpoint(start, source=args.source, raw_name=args.model)
    record["tv_weights"] = record.get("tv_weights") or args.tv_weights
    data = load_dataset(args.dataset, args.data_dir or config["data"].get("root"), split_dir=config["data"].get("split_dir"))
    transforms = model_loader.get_transforms(record["model_name"], record["source"], record.get("tv_weights"),
                                             record.get("image_size"))
    batch_size = args.batch_size or config["training"].get("batch_size", 32)
    loaders = make_loaders(data, batch_size, args.num_workers, transforms, subset=args.subset)
    device = engine.resolve_device(args.device)
    model.to(device)
    for parameter in model.parameters():
        parameter.requires_grad = True
    ess = args.ess or len(loaders["train"].dataset)
    optimizer = ivon.IVON(model.parameters(), lr=args.learning_rate, ess=ess, hess_init=args.hess_init,
                          weight_decay=args.weight_decay, mc_samples=args.train_samples)
    epochs = args.epochs or config["training"].get("num_epochs_ff", 12)
    scheduler = engine.make_scheduler(optimizer, epochs, args.warmup_epochs if args.warmup_epochs is not None
                                      else config["training"].get("warmup_epochs", 1))
    metric_name = config["training"].get("selection_metric", "f1" if args.dataset == "iwildcam" else "acc")
    best = (-math.inf, None)
    for epoch in range(epochs):
        model.train()
        losses = [sampled_step(model, optimizer, x.to(device), torch.as_tensor(y).to(device), args.train_samples)
                  for x, y, _ in loaders["train"]]
        scheduler.step()
        metric = engine.selection_score(engine.predict(model, loaders["val"], device), metric_name)
        print(f"epoch {epoch + 1}/{epochs}: train loss {np.mean(losses):.4f}, val {metric_name} (mean weights) {metric:.4f}")
        if metric > best[0]:
            best = (metric, {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                             "optimizer": optimizer.state_dict()})
    model.load_state_dict(best[1]["model"])
    optimizer.load_state_dict(best[1]["optimizer"])
    ivon_path = output_path(root / "ivon", f"{name}.pth")
    model_loader.save_checkpoint(ivon_path, model, **{k: record.get(k) for k in (
        "model_name", "source", "tv_weights", "num_classes", "dataset", "image_size")}, ivon_state=best[1]["optimizer"],
        stage="ivon", val_metric=best[0], hyperparameters={"lr": args.learning_rate, "ess": ess, "epochs": epochs,
                                                           "train_samples": args.train_samples})
    mc, det = {}, {}
    for split in SPLITS:
        if loaders.get(split) is None:
            continue
        torch.manual_seed(args.seed)          # the same posterior draws on every run
        out = mc_log_probs(model, optimizer, loaders[split], device, args.test_samples)
        mc[split] = Split(out.logits, out.labels, out.ids)
        plain = engine.predict(model, loaders[split], device)
        det[split] = Split(plain.logits, plain.labels, plain.ids)
    source = str(ivon_path)
    for suffix, splits, kind in (("_ivon", mc, "log_probs"), ("_ivon_det", det, "logits")):
        path = write_predictions(PredictionSet(f"{name}{suffix}", splits, {"dataset": args.dataset, "kind": kind,
                                               "source_checkpoint": source, "test_samples": args.test_samples}),
                                 output_path(args.predictions_dir, f"{name}{suffix}.npz"))
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

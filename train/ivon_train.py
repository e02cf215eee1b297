"""The IVON baseline (paper App. F.1, Table 3): continue training a fine-tuned model with the IVON
optimizer (ivon-opt) and predict with its posterior.

    python train/ivon_train.py --model ResNet50 --dataset caltech256 --output_dir ./checkpoints \
        --predictions_dir ./predictions --test_samples 8

Starts from <output_dir>/<dataset>/ff/<name>.pth (else lp/), keeps the epoch with the best val
metric, saves <output_dir>/<dataset>/ivon/<name>.pth (weights + optimizer state = the posterior) and
writes two prediction files: <name>_ivon (the Monte-Carlo predictive over --test_samples weight
samples, stored as log-probabilities, kind "log_probs") and <name>_ivon_det (the mean weights' logits).

    python train/ivon_train.py --model ResNet50 --dataset caltech256 --predict_only \
        --test_samples 2 4 8 16 32 --repeats 5          # paper Table 3, from the saved posterior

With several --test_samples or --repeats, each (samples S, repeat r) gets its own file <name>_ivon_mc<S>_r<r>
(repeat r draws with seed --seed + r); --predict_only skips training and reads ivon/<name>.pth.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from load_data.dataloaders import make_loaders
from load_data.datasets import load_dataset
from load_models import model_loader
from load_models.inference import predict, resolve_device
from train import engine
from utils.cli import flags
from utils.cli.parsing import (
    ArgumentParser,
    UserError,
    add_backbone_csv,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from utils.files import safe_io
from utils.files.model_names import checkpoint_path, output_path
from utils.files.prediction_io import SPLITS, PredictionSet, write_predictions


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            parents=[flags.trained_model(), flags.dataset(), flags.raw_checkpoint(),
                                     flags.device(), flags.loader(batch_size=None)])
    parser.add_argument("--predictions_dir", default="./predictions", help="where the prediction files go")
    add_backbone_csv(parser, "the spelling of model names")
    parser.add_argument("--learning_rate", type=positive_float, default=1e-3, help="IVON learning rate (official default 1e-3)")
    parser.add_argument("--epochs", type=positive_int, help="default: the YAML's num_epochs_ff (the official script used 36)")
    parser.add_argument("--warmup_epochs", type=non_negative_int, help="default: the YAML's warmup_epochs")
    parser.add_argument("--train_samples", type=positive_int, default=1, help="weight samples per training step")
    parser.add_argument("--test_samples", type=positive_int, nargs="+", default=[8],
                        help="weight samples of the MC predictive (several: one prediction file each)")
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="independent MC predictives per --test_samples value (seeds --seed, --seed + 1, ...)")
    parser.add_argument("--predict_only", action="store_true",
                        help="no training: predict from the posterior saved in <output_dir>/<dataset>/ivon/<name>.pth")
    parser.add_argument("--ess", type=positive_float, help="effective sample size (default: the training set size)")
    parser.add_argument("--hess_init", type=positive_float, default=1.0, help="IVON's initial Hessian estimate")
    parser.add_argument("--weight_decay", type=non_negative_float, default=1e-4, help="IVON's prior precision (library default)")
    parser.add_argument("--subset", type=positive_int, help="train on the first N training images (quick runs)")
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


def mc_log_probs(model, optimizer, samples: int):
    """The inference hook of IVON's predictive: log of the mean softmax over `samples` posterior
    draws (never a double softmax)."""
    def outputs(x: torch.Tensor) -> torch.Tensor:
        draws = []
        for _ in range(samples):
            with optimizer.sampled_params():
                draws.append(torch.log_softmax(model(x).double(), dim=1))
        return torch.logsumexp(torch.stack(draws), 0) - math.log(samples)
    return outputs


def train_posterior(args, name: str, ivon):
    """Continue training the fine-tuned model with IVON; save and return (model, optimizer, checkpoint, loaders)."""
    start = next((p for p in (checkpoint_path(args.output_dir, args.dataset, stage, f"{name}.pth") for stage in ("ff", "lp"))
                  if p.exists()), None)
    if start is None:
        root = Path(args.output_dir) / args.dataset
        raise UserError(f"no {root}/ff/{name}.pth or {root}/lp/{name}.pth; run train/hp_tune.py for "
                        f"{args.save_name or args.model} first")
    torch.manual_seed(args.seed)
    model, record, transforms = model_loader.rebuild_from_checkpoint(start, source=args.source, tv_weights=args.tv_weights,
                                                                     raw_name=args.model)
    data = load_dataset(args.dataset, args.data_dir, split_dir=args.split_dir)
    loaders = make_loaders(data, args.batch_size, args.num_workers, transforms, subset=args.subset)
    device = resolve_device(args.device)
    model.to(device)
    for parameter in model.parameters():
        parameter.requires_grad = True
    ess = args.ess or len(loaders["train"].dataset)
    optimizer = ivon.IVON(model.parameters(), lr=args.learning_rate, ess=ess, hess_init=args.hess_init,
                          weight_decay=args.weight_decay, mc_samples=args.train_samples)
    scheduler = engine.make_scheduler(optimizer, args.epochs, args.warmup_epochs)
    best = (-math.inf, None)
    for epoch in range(args.epochs):
        model.train()
        losses = [sampled_step(model, optimizer, x.to(device), torch.as_tensor(y).to(device), args.train_samples)
                  for x, y, _ in loaders["train"]]
        scheduler.step()
        metric = engine.selection_score(predict(model, loaders["val"], device), args.selection_metric)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {np.mean(losses):.4f}, val {args.selection_metric} "
              f"(mean weights) {metric:.4f}")
        if metric > best[0]:
            best = (metric, {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                             "optimizer": optimizer.state_dict()})
    model.load_state_dict(best[1]["model"])
    optimizer.load_state_dict(best[1]["optimizer"])
    ivon_path = checkpoint_path(args.output_dir, args.dataset, "ivon", f"{name}.pth")
    model_loader.save_checkpoint(ivon_path, model, **{k: record.get(k) for k in (
        "model_name", "source", "tv_weights", "num_classes", "dataset", "image_size")}, ivon_state=best[1]["optimizer"],
        stage="ivon", val_metric=best[0], hyperparameters={"lr": args.learning_rate, "ess": ess, "epochs": args.epochs,
                                                           "train_samples": args.train_samples})
    return model, optimizer, ivon_path, loaders, device


def load_posterior(args, name: str, ivon):
    """The posterior a previous run saved: (model, optimizer, checkpoint, loaders)."""
    ivon_path = checkpoint_path(args.output_dir, args.dataset, "ivon", f"{name}.pth")
    if not ivon_path.exists():
        raise UserError(f"--predict_only: {ivon_path} not found; train the posterior first (without --predict_only)")
    model, record, transforms = model_loader.rebuild_from_checkpoint(ivon_path, source=args.source,
                                                                     tv_weights=args.tv_weights, raw_name=args.model)
    if not isinstance(record.get("ivon_state"), dict):
        raise UserError(f"{ivon_path}: holds no IVON posterior (ivon_state); retrain it without --predict_only")
    data = load_dataset(args.dataset, args.data_dir, split_dir=args.split_dir)
    loaders = make_loaders(data, args.batch_size, args.num_workers, transforms, splits=SPLITS)
    device = resolve_device(args.device)
    model.to(device)
    hyper = record.get("hyperparameters") or {}
    optimizer = ivon.IVON(model.parameters(), lr=hyper.get("lr", args.learning_rate), ess=hyper.get("ess", 1.0))
    optimizer.load_state_dict(record["ivon_state"])
    return model, optimizer, ivon_path, loaders, device


def main_impl(argv=None) -> int:
    import ivon
    args = flags.with_dataset_config(build_parser().parse_args(argv))
    if len(set(args.test_samples)) < len(args.test_samples):
        raise UserError(f"--test_samples: {args.test_samples} names a sample count twice; give each once "
                        f"(--repeats repeats them)")
    name = flags.trained_model_name(args)
    posterior = load_posterior if args.predict_only else train_posterior
    model, optimizer, ivon_path, loaders, device = posterior(args, name, ivon)
    splits = [split for split in SPLITS if loaders.get(split) is not None]
    draws = [(samples, repeat) for samples in args.test_samples for repeat in range(args.repeats)]
    outputs = {"_ivon_det": ({split: predict(model, loaders[split], device) for split in splits}, "logits", {})}
    for samples, repeat in draws:
        predictive = {}
        for split in splits:
            torch.manual_seed(args.seed + repeat)          # the same posterior draws on every run
            predictive[split] = predict(model, loaders[split], device, mc_log_probs(model, optimizer, samples))
        suffix = "_ivon" if len(draws) == 1 else f"_ivon_mc{samples}_r{repeat}"
        outputs[suffix] = (predictive, "log_probs", {"test_samples": samples, "repeat": repeat})
    files = safe_io.Outputs()                   # every predictive of this run, or none of them
    for suffix, (prediction_splits, kind, extra) in outputs.items():
        meta = {"dataset": args.dataset, "kind": kind, "source_checkpoint": str(ivon_path), **extra}
        write_predictions(PredictionSet(f"{name}{suffix}", prediction_splits, meta),
                          output_path(args.predictions_dir, f"{name}{suffix}.npz"), files)
    for path in files.commit():
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

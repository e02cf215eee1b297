"""The Laplace baseline (paper App. F.2, Table 4): a last-layer Laplace approximation (laplace-torch)
of a fine-tuned model, fitted on the training split with evaluation transforms, prior precision
tuned on val, GLM predictive with the probit link.

    python evaluate/6_laplace.py --model_path ./checkpoints/caltech256/ff/Swin_V2_S.pth \
        --dataset caltech256 --predictions_dir ./predictions

Writes <predictions_dir>/<name>_LA.npz with log-probabilities (kind "log_probs").

Speed: a last-layer Laplace approximation only sees the pooled features and the head, so the
backbone runs once per image to extract features, and laplace-torch works on a head-only model fed
with them (the same posterior and predictive; the 100-point prior grid search no longer reruns the
backbone). `--subset_of_weights all` uses the full model.

Memory: laplace-torch's last-layer GLM predictive materialises each sample's Jacobian, C x (D+1)·C
floats (laplace-torch issue #138): 203 MB per sample for Caltech's 257 classes and Swin-V2-S's 768
features. For the default kron last-layer posterior the predictive covariance is instead computed in
closed form from the Kron eigendecomposition (load_models/laplace_tools.py, C x C per sample, checked
against the library's Jacobian path in the tests). Other posteriors keep the library path, run in row
chunks of floor(--max_memory_gb / (3 x per-sample Jacobian bytes)) samples, so peak memory stays near
the budget whatever the batch size.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

from load_data.dataloaders import make_loaders
from load_data.datasets import load_dataset
from load_models import model_loader
from load_models.inference import predict, resolve_device
from load_models.laplace_tools import (
    PairLoader,
    feature_loaders,
    laplace_log_probs,
    predictive_chunk,
    use_fast_kron_predictive,
)
from utils.cli import flags
from utils.cli.parsing import (
    ArgumentParser,
    UserError,
    add_backbone_csv,
    plain_name,
    positive_float,
    positive_int,
    run_main,
)
from utils.files import tables
from utils.files.model_names import existing_path, output_path
from utils.files.prediction_io import SPLITS, PredictionSet, write_predictions


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            parents=[flags.dataset(), flags.raw_checkpoint(),
                                     flags.device(),
                                     flags.loader(batch_size=32, batch_help="batch size of the Hessian fit")])
    parser.add_argument("--model_path", "--trained_model_path", required=True, help="fine-tuned checkpoint")
    parser.add_argument("--predictions_dir", default="./predictions", help="where <name>_LA.npz goes")
    parser.add_argument("--model", "--model_name", type=plain_name, help="architecture of a raw state_dict")
    parser.add_argument("--save_name", type=plain_name, help="output name without _LA (default: the checkpoint's file name)")
    add_backbone_csv(parser, "the spelling of model names")
    parser.add_argument("--subset_of_weights", default="last_layer", choices=("last_layer", "all"),
                        help="which weights get a posterior (the paper: last_layer)")
    parser.add_argument("--hessian_structure", default="kron", choices=("kron", "diag", "full"),
                        help="posterior precision structure (the paper: kron)")
    parser.add_argument("--prior_method", default="gridsearch", choices=("gridsearch", "marglik"),
                        help="gridsearch on val NLL (the official choice) or the marginal likelihood")
    parser.add_argument("--link_approx", default="probit", choices=("probit", "bridge", "bridge_norm", "mc"),
                        help="GLM predictive link approximation (the official: probit)")
    parser.add_argument("--max_memory_gb", type=positive_float, default=2.0, help="budget for the predictive's Jacobians")
    parser.add_argument("--subset", type=positive_int, help="fit on the first N training images (quick runs)")
    return parser


def main_impl(argv=None) -> int:
    from laplace import Laplace
    args = flags.with_dataset_config(build_parser().parse_args(argv))
    data = load_dataset(args.dataset, args.data_dir, split_dir=args.split_dir)
    model_path = existing_path(args.model_path)
    model, record, transforms = model_loader.rebuild_from_checkpoint(model_path, args.model, args.source, args.tv_weights,
                                                                     num_classes=data.num_classes)
    name = tables.model_identity(args.save_name or model_path.stem.removesuffix("_best"), "--save_name",
                                 tables.read_backbones(args.backbone_csv))
    _, head = model_loader.find_head(model)
    device = resolve_device(args.device)
    chunk = predictive_chunk(data.num_classes, head.in_features, args.max_memory_gb)
    fit_loaders = make_loaders(data, args.batch_size, args.num_workers, transforms["eval"], subset=args.subset,
                               shuffle_train=False)         # the training split with evaluation transforms
    # full batches: the closed-form Kron predictive needs no Jacobians; the library's predictive is fed
    # `chunk` samples per call (PairLoader and laplace_log_probs split the batches)
    eval_loaders = make_loaders(data, args.batch_size, args.num_workers, transforms["eval"], splits=SPLITS)
    if fit_loaders["train"] is None or eval_loaders["val"] is None:
        raise UserError(f"{args.dataset} has no train/val split to fit the Laplace approximation on")
    model.to(device).eval()
    if args.subset_of_weights == "last_layer":
        model, loaders = feature_loaders(model, {**eval_loaders, "train": fit_loaders["train"]}, device,
                                         args.batch_size)
        fit_loaders, eval_loaders = {"train": loaders.pop("train")}, loaders
    la = Laplace(model, "classification", subset_of_weights=args.subset_of_weights,
                 hessian_structure=args.hessian_structure)
    la.fit(PairLoader(fit_loaders["train"], device))
    fast = use_fast_kron_predictive(la)
    per_call = args.batch_size if fast else chunk
    if args.prior_method == "gridsearch":
        la.optimize_prior_precision(method="gridsearch", pred_type="glm", link_approx=args.link_approx,
                                    val_loader=PairLoader(eval_loaders["val"], device, per_call))
    else:
        la.optimize_prior_precision(method="marglik", pred_type="glm", link_approx=args.link_approx)
    prior = float(torch.as_tensor(la.prior_precision).mean())
    print(f"{name}: Laplace ({args.subset_of_weights}, {args.hessian_structure}) fitted on "
          f"{len(fit_loaders['train'].dataset)} images; prior precision {prior:.4g} ({args.prior_method}); "
          f"{'closed-form Kron predictive' if fast else f'predictive in chunks of {chunk} sample(s)'}")
    splits = {}
    for split in SPLITS:
        if eval_loaders.get(split) is None:
            continue
        out = predict(model, eval_loaders[split], device, laplace_log_probs(la, per_call, args.link_approx))
        splits[split] = out
        print(f"{name}_LA: {split} acc {np.mean(out.logits.argmax(1) == out.labels):.4f}, "
              f"NLL {-np.mean(out.logits[np.arange(len(out.labels)), out.labels]):.4f}")
    path = write_predictions(PredictionSet(f"{name}_LA", splits, {
        "dataset": args.dataset, "kind": "log_probs", "source_checkpoint": str(model_path),
        "prior_precision": prior if math.isfinite(prior) else None, "hessian_structure": args.hessian_structure}),
        output_path(args.predictions_dir, f"{name}_LA.npz"))
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

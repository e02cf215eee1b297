"""Stage 1: predict val, test and ood_test with trained models and write one prediction file each.

    python evaluate/1_single_model_prediction.py --model_path ./checkpoints/convnext_base_best.pth \
        --dataset iwildcam --output_dir ./predictions
    python evaluate/1_single_model_prediction.py --all_models --model_dir ./checkpoints/iwildcam/ff \
        --dataset iwildcam
    python evaluate/1_single_model_prediction.py --all_models --dataset imagenet     # pretrained, ImageNet heads

A complete output from the same checkpoint is reused unless --overwrite; a partial or stale one
(another checkpoint, missing splits or features) is redone.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from load_data.corruptions import CORRUPTIONS, SEVERITIES, add_corrupted_splits
from load_data.dataloaders import make_loaders
from load_data.datasets import load_dataset
from load_models import model_loader
from load_models.inference import predict, predict_with_features, prepare_model, resolve_device
from load_models.prediction_jobs import file_digest, is_complete, list_jobs
from utils.cli import flags
from utils.cli.config import DATASETS
from utils.cli.parsing import ArgumentParser, UserError, add_backbone_csv, plain_name, positive_int, run_main, warn
from utils.files import safe_io, tables
from utils.files.model_names import check_plain_name, existing_path
from utils.files.prediction_io import (
    FEATURES_SUFFIX,
    PredictionSet,
    is_split_name,
    split_order,
    write_predictions,
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            parents=[flags.dataset(required=False, help="dataset (default: the checkpoint's, or the only "
                                                   "one under ./checkpoints)"),
                                     flags.raw_checkpoint(), flags.device(precision="fp32"), flags.loader(batch_size=64)])
    parser.add_argument("--model_path", metavar="FILE", help="checkpoint (project checkpoint or raw state_dict)")
    parser.add_argument("--all_models", action="store_true", help="predict every checkpoint in --model_dir "
                        "(ImageNet: every backbones.csv row, pretrained, when --model_dir has no checkpoints)")
    parser.add_argument("--mode", choices=("single model", "soup"), default="single model",
                        help="the official flag: 'single model' predicts every checkpoint of --model_dir (soups "
                             "included), 'soup' only the soups (*_greedy.pth, *_uniform.pth)")
    parser.add_argument("--model_dir", "--model_dir_path", metavar="DIR",
                        help="predict every *.pth in this folder (implies --all_models; default "
                             "./checkpoints/<dataset>/ff, ./checkpoints/imagenet for ImageNet)")
    parser.add_argument("--name_prefix", default="", metavar="PREFIX",
                        help="prepend PREFIX to each output's name, e.g. --model_dir checkpoints/<dataset>/soup/ResNet50 "
                             "--name_prefix ResNet50_ writes ResNet50_trial0, ResNet50_trial1, ... (the fine-tuning "
                             "trials, deep-ensemble members as in the official code)")
    parser.add_argument("--model", "--model_name", type=plain_name, metavar="NAME",
                        help="architecture of a raw state_dict, or (ImageNet) a pretrained model to predict")
    parser.add_argument("--weights", default="default",
                        help="ImageNet without checkpoint: default (staged pretrained) | none | FILE")
    add_backbone_csv(parser, "model names (their spelling), sources, tv_weights")
    parser.add_argument("--ood_dir", "--ood_dataset_dir", help="ImageNetV2 root for imagenet's ood_test")
    parser.add_argument("--output_dir", default="./predictions", help="prediction files folder (default ./predictions)")
    parser.add_argument("--format", choices=("npz", "csv"), default="npz", help="prediction file format")
    parser.add_argument("--features", "--feature_extractor_mode", action="store_true",
                        help="also write <model>.features.npz with the pooled penultimate features")
    parser.add_argument("--image_size", type=positive_int, help="resize inputs to this size (default: the checkpoint's, else "
                        "the weights' own preprocessing)")
    parser.add_argument("--overwrite", action="store_true", help="recompute even if a complete file exists")
    parser.add_argument("--corruptions", nargs="+", metavar="NAME", choices=(*CORRUPTIONS, "all"),
                        help="also predict the test split under these corruptions (after ImageNet-C; `all`: "
                             f"{', '.join(CORRUPTIONS)}), applied on the fly: split c_<name>_<severity>")
    parser.add_argument("--severities", nargs="+", type=int, choices=SEVERITIES, default=list(SEVERITIES),
                        metavar="S", help="corruption severities, 1-5 (default all)")
    parser.add_argument("--corruption_seed", type=int, default=0, help="seed of the random corruptions (default 0)")
    return parser


def predict_model(job: dict, data, args, image_size_default, device) -> tuple[PredictionSet, dict | None]:
    if job["checkpoint"] is not None:
        model, record = model_loader.load_model_from_checkpoint(job["checkpoint"], job["arch"], job["source"],
                                                                num_classes=data.num_classes)
        image_size = args.image_size or record.get("image_size") or image_size_default
        source, tv_weights = record.get("source", job["source"]), record.get("tv_weights") or job["tv_weights"]
    else:
        model = model_loader.get_model_with_head(job["arch"], source=job["source"], tv_weights=job["tv_weights"],
                                                 keep_imagenet_head=True, weights=args.weights)
        image_size, source, tv_weights = args.image_size or image_size_default, job["source"], job["tv_weights"]
    transforms = model_loader.get_transforms(job["arch"], source, tv_weights, image_size)
    loaders = make_loaders(data, args.batch_size, args.num_workers, transforms,
                           splits=split_order([s for s in data.splits if is_split_name(s) and data.splits[s] is not None]),
                           pin_memory=device.type == "cuda")
    # the model's cost per image at the size it sees (the first batch's), recorded for every later stage (stages 4,
    # 5, 7 and the report take it when neither a duos CSV nor the backbone CSV gives one)
    first = next(loader for loader in loaders.values() if loader is not None)
    input_size = int(first.dataset[0][0].shape[-1])
    gflops = model_loader.count_gflops(model, input_size)
    model = prepare_model(model, device, channels_last=args.channels_last)
    splits, features = {}, {}
    for split, loader in loaders.items():
        options = {"description": f"{job['name']} {split}", "precision": args.precision,
                   "channels_last": args.channels_last}
        if args.features:
            out, features[f"features_{split}"] = predict_with_features(model, loader, device, **options)
            features[f"ids_{split}"] = out.ids
        else:
            out = predict(model, loader, device, **options)
        splits[split] = out
        print(f"{job['name']}: {split} {len(out.labels)} samples, acc {np.mean(out.logits.argmax(1) == out.labels):.4f}")
    meta = {"dataset": args.dataset, "kind": "logits", "gflops": gflops, "image_size": input_size}
    return PredictionSet(job["name"], splits, meta), (features or None)


def resolve_dataset_flag(args) -> str:
    """--dataset, else the dataset a --model_path checkpoint records, else (--all_models) the only
    dataset with trained checkpoints under ./checkpoints/<dataset>/ff."""
    if args.dataset:
        return args.dataset
    model_path = existing_path(args.model_path) if args.model_path else None
    if model_path is not None and model_path.exists():
        recorded = model_loader.read_checkpoint(model_path).get("dataset")
        if recorded in DATASETS:
            return recorded
    if args.all_models or args.model_dir:
        found = sorted(p.parent.parent.name for p in Path("checkpoints").glob("*/ff/*.pth")     # checkpoint_dir's layout
                       if p.parent.parent.name in DATASETS)
        if len(set(found)) == 1:
            return found[0]
    raise UserError(f"--dataset: give the dataset ({', '.join(DATASETS)}); it could not be inferred")


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.name_prefix:
        check_plain_name(args.name_prefix, "--name_prefix")
    args.dataset = resolve_dataset_flag(args)
    args = flags.with_dataset_config(args, keep_unset=("image_size",))
    data_dir, ood_dir = args.data_dir, args.ood_dir
    if args.dataset == "imagenet" and ood_dir and not Path(ood_dir).exists():
        warn(f"imagenet: ImageNetV2 folder {ood_dir} not found; predicting without ood_test (pass --ood_dir)")
        ood_dir = None
    backbones = tables.read_backbones(args.backbone_csv)
    jobs = list_jobs(args, backbones)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, data_dir, ood_root=ood_dir, split_dir=args.split_dir)
    if not args.corruptions and argv_has(argv, "--severities", "--corruption_seed"):
        raise UserError("--severities / --corruption_seed: they choose the corruption sweep; give --corruptions too")
    if args.corruptions:
        names = list(CORRUPTIONS) if "all" in args.corruptions else list(dict.fromkeys(args.corruptions))
        add_corrupted_splits(data, names, sorted(set(args.severities)), args.corruption_seed)
    splits = split_order([s for s in data.splits if is_split_name(s) and data.splits[s] is not None])
    output_dir = Path(args.output_dir)
    for job in jobs:                            # every target can be written: check them all before predicting one
        safe_io.Outputs().expect(output_dir / f"{job['name']}.{args.format}", "prediction file")
    done = 0
    for job in jobs:
        path = output_dir / f"{job['name']}.{args.format}"
        features_path = output_dir / f"{job['name']}{FEATURES_SUFFIX}"
        source_id = (f"{job['checkpoint']}#sha256:{file_digest(job['checkpoint'])}" if job["checkpoint"]
                     else f"pretrained:{job['source']}:{job['tv_weights'] or 'default'}:{args.weights}")
        if not args.overwrite and is_complete(path, features_path, source_id, splits, args.features):
            print(f"{job['name']}: {path} is complete, skipped (--overwrite recomputes)")
            continue
        pset, features = predict_model(job, data, args, args.dataset_config["data"].get("image_size"), device)
        pset.meta["source_checkpoint"] = source_id
        outputs = safe_io.Outputs([job["checkpoint"]] if job["checkpoint"] else [])   # a model's files commit together
        if features:
            outputs.write_npz(features_path, features, "features file")
        write_predictions(pset, path, outputs)
        outputs.commit()
        print(f"{job['name']}: wrote {path}")
        done += 1
    print(f"{done} model(s) predicted, {len(jobs) - done} reused")
    return 0


def argv_has(argv, *flags: str) -> bool:
    given = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return any(a == f or a.startswith(f + "=") for a in given for f in flags)


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

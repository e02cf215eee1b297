"""Train one backbone with the paper's recipe: a Ray Tune search over linear probing (LP), then over
fine-tuning (FT) initialised from the best LP checkpoint (paper App. A.2; docs/reproduction.md, "Notes").

    python train/hp_tune.py --model convnext_base --dataset iwildcam --num_samples 12 --output_dir ./checkpoints

Outputs under <output_dir>/<dataset>/: lp/<name>.pth, ff/<name>.pth, optimal_hyperparams_{lp,ff}.csv,
soup/<name>/trial<i>.pth with soup/<name>_trials.csv, and <output_dir>/<name>_best.pth (docs/reproduction.md).
A better existing record is never overwritten. Join a Ray cluster with --ray_address auto.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from load_models import model_loader
from train import tuning
from utils.cli import flags
from utils.cli.parsing import (
    ArgumentParser,
    UserError,
    add_backbone_csv,
    cpu_count,
    non_negative_float,
    non_negative_int,
    parse_bool,
    plain_name,
    positive_int,
    run_main,
    warn,
)
from utils.files import safe_io, tables
from utils.files.model_names import checkpoint_dir, checkpoint_path, output_path

HYPER_COLUMNS = ["model", "architecture", "source", "lr", "weight_decay", "val_metric", "selection_metric", "epochs",
                 "checkpoint", "trials_ok", "trials_failed"]
TRIAL_COLUMNS = ["trial", "checkpoint", "lr", "weight_decay", "val_metric", "epochs_run", "run_id"]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            parents=[flags.dataset(), flags.raw_checkpoint(),
                                     flags.device(precision="auto"),
                                     flags.loader(batch_size=None)])
    parser.add_argument("--model", "--model_name", required=True, type=plain_name,
                        help="backbone (backbones.csv spelling or timm name)")
    parser.add_argument("--num_samples", type=positive_int, help="FT trials (default: the YAML's search.num_samples, else 12)")
    parser.add_argument("--lp_samples", type=positive_int, help="LP trials (default: the YAML's search.lp_samples, else 4)")
    parser.add_argument("--output_dir", default="./checkpoints", help="checkpoint root (default ./checkpoints)")
    parser.add_argument("--save_name", type=plain_name,
                        help="name of the outputs (default: --model); e.g. ResNet50_s1 for a 2nd seed")
    parser.add_argument("--weights", default="default", help="pretrained weights: default (staged) | none | FILE")
    add_backbone_csv(parser, "sources, tv_weights and the spelling of model names")
    parser.add_argument("--cpus_per_trial", type=positive_int, help="default 4 with a GPU, else 1")
    parser.add_argument("--gpus_per_trial", type=non_negative_float, help="default 1 with a GPU, else 0")
    parser.add_argument("--ray_address", help="join an existing Ray cluster (e.g. auto); default: start locally")
    parser.add_argument("--storage_path", help="Ray Tune results (default <output_dir>/<dataset>/ray_results)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in every trial")
    parser.add_argument("--accumulate", type=positive_int, default=1,
                        help="gradient accumulation: micro-batches of batch_size/N, one step per N (same effective batch)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="search sampling and training seed")
    parser.add_argument("--epochs_lp", type=positive_int, help="override the YAML's training.num_epochs_lp")
    parser.add_argument("--epochs_ff", type=positive_int, help="override the YAML's training.num_epochs_ff")
    parser.add_argument("--subset", type=positive_int, help="train on the first N training images (quick runs)")
    parser.add_argument("--image_size", type=positive_int,
                        help="resize inputs to this size (default: the YAML's data.image_size, else the weights' "
                        "own preprocessing)")
    parser.add_argument("--report_every", type=positive_int, default=1,
                        help="validate every N epochs and at the last (3 reproduces the official cadence)")
    parser.add_argument("--skip_lp_if_exist", nargs="?", const=True, default=True, type=parse_bool, metavar="True|False",
                        help="reuse lp/<name>.pth when present (default True; the official form `--skip_lp_if_exist "
                             "False` reruns LP, which the official parser read as True)")
    parser.add_argument("--no-skip_lp_if_exist", dest="skip_lp_if_exist", action="store_false",
                        help="rerun the LP search even when lp/<name>.pth exists")
    parser.add_argument("--resume", action="store_true", help="resume interrupted searches from Ray's state")
    return parser


def settings(args) -> tuple[dict, dict, dict]:
    args = flags.with_dataset_config(args)
    search = args.dataset_config["search"]
    backbones = tables.read_backbones(args.backbone_csv)
    arch = model_loader.architecture_of(args.model)
    source = args.source or tables.backbone_text(backbones, arch, "source") or model_loader.guess_source(arch)
    tv_weights = args.tv_weights or tables.backbone_text(backbones, arch, "tv_weights")
    save_name = tables.model_identity(args.save_name or args.model, "--save_name" if args.save_name else "--model",
                                      backbones)
    setup = {"model": args.model, "save_name": save_name,
             "dataset": args.dataset,
             "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None, "source": source,
             "tv_weights": tv_weights,
             "weights": args.weights if args.weights in ("default", "none") else str(Path(args.weights).resolve()),
             "split_dir": args.split_dir, "image_size": args.image_size,
             "batch_size": args.batch_size, "num_workers": args.num_workers,
             "subset": args.subset, "precision": args.precision, "device": args.device, "seed": args.seed,
             "channels_last": args.channels_last, "compile": args.compile, "accumulate": args.accumulate,
             "report_every": args.report_every, "warmup_epochs": args.warmup_epochs,
             "selection_metric": args.selection_metric, "augment": list(args.augment)}
    counts = {"lp": args.lp_samples, "ff": args.num_samples, "epochs_lp": args.epochs_lp, "epochs_ff": args.epochs_ff,
              "grace_period": args.grace_period}
    spaces = {"lp_lr": search.get("lp_lr", [1e-4, 1e-2]), "ff_lr": search.get("ff_lr", [1e-6, 3e-4]),
              "ff_weight_decay": search.get("ff_weight_decay", [1e-8, 1e-5])}
    return setup, counts, spaces


def save_trial_checkpoint(path: Path, trial: tuning.TrialResult, setup: dict, stage: str, num_classes: int) -> None:
    model_loader.save_checkpoint(path, trial.best_state, model_name=model_loader.architecture_of(setup["model"]),
                                 source=setup["source"], tv_weights=setup["tv_weights"], num_classes=num_classes,
                                 dataset=setup["dataset"], image_size=setup["image_size"], stage=stage,
                                 hyperparameters=trial.config, val_metric=trial.best_metric,
                                 selection_metric=setup["selection_metric"], augment=setup["augment"])


def record_if_better(checkpoints: str, stage: str, trial: tuning.TrialResult, setup: dict, num_classes: int,
                     ok: int, failed: int) -> bool:
    """Write <stage>/<name>.pth and its optimal_hyperparams row unless an equal or better record exists
    (so restoring a finished search changes nothing)."""
    name = setup["save_name"]
    target = checkpoint_path(checkpoints, setup["dataset"], stage, f"{name}.pth")
    with safe_io.locked_table(checkpoint_dir(checkpoints, setup["dataset"]) / f"optimal_hyperparams_{stage}.csv", ["model"],
                              HYPER_COLUMNS) as table:
        existing = table.get(model=name)
        if existing is not None and target.exists() and float(existing["val_metric"]) >= trial.best_metric:
            if float(existing["val_metric"]) > trial.best_metric:
                warn(f"{name}: the existing {stage.upper()} record (val {float(existing['val_metric']):.4f}) is better "
                     f"than this search's best ({trial.best_metric:.4f}); kept it")
            else:
                print(f"{name}: {target} already holds this {stage.upper()} result (val {trial.best_metric:.4f})")
            return False
        save_trial_checkpoint(target, trial, setup, stage, num_classes)
        table.upsert(pd.DataFrame([{"model": name, "architecture": setup["model"], "source": setup["source"],
                                    "lr": trial.config["lr"], "weight_decay": trial.config.get("weight_decay", 0.0),
                                    "val_metric": trial.best_metric, "selection_metric": setup["selection_metric"],
                                    "epochs": trial.epochs_run, "checkpoint": str(target), "trials_ok": ok,
                                    "trials_failed": failed}]))
    return True


def record_soup_trials(checkpoints: str, name: str, done: list, setup: dict, num_classes: int) -> tuple[Path, int]:
    """List each successful FT trial once in soup/<name>_trials.csv with its weights in
    soup/<name>/trial<i>.pth. A trial already listed (the same Ray trial, e.g. a search restored by
    --resume) keeps its index and file; new trials get the next indices. Returns (folder, new trials)."""
    soup_dir = checkpoint_path(checkpoints, setup["dataset"], "soup", name)
    trials_csv = checkpoint_path(checkpoints, setup["dataset"], "soup", f"{name}_trials.csv")
    with safe_io.locked_table(trials_csv, ["trial"], TRIAL_COLUMNS) as table:
        frame = table.frame
        known = dict(zip(frame["run_id"].astype(str), frame["trial"])) if "run_id" in frame and len(frame) else {}
        next_index = int(pd.to_numeric(frame["trial"]).max()) + 1 if len(frame) else 0
        rows = []
        for trial in done:
            if trial.run_id and trial.run_id in known:
                path = soup_dir / f"trial{int(known[trial.run_id])}.pth"
                if not path.exists():                # listed but its file was lost: write it again
                    save_trial_checkpoint(path, trial, setup, "ff", num_classes)
                continue
            path = soup_dir / f"trial{next_index}.pth"
            save_trial_checkpoint(path, trial, setup, "ff", num_classes)
            # relative to the CSV's folder, so the list stays valid from any working folder
            rows.append({"trial": next_index, "checkpoint": os.path.relpath(path, trials_csv.parent), "lr": trial.config["lr"],
                         "weight_decay": trial.config["weight_decay"], "val_metric": trial.best_metric,
                         "epochs_run": trial.epochs_run, "run_id": trial.run_id})
            next_index += 1
        if rows:
            table.upsert(pd.DataFrame(rows, columns=TRIAL_COLUMNS))
    return soup_dir, len(rows)


def run_stage(stage: str, setup: dict, param_space: dict, samples: int, args, counts, storage, resources):
    setup = dict(setup, stage=stage, epochs=counts[f"epochs_{stage}"])
    print(f"== {stage.upper()}: {samples} trial(s) x {setup['epochs']} epoch(s) of {setup['model']} on {setup['dataset']}")
    grid = tuning.run_search(stage, setup, param_space, samples, storage, resources, counts["grace_period"],
                             args.seed, args.resume)
    done, failed = tuning.finished_trials(grid)
    for line in failed:
        warn(f"{stage.upper()} trial failed: {line}")
    if not done:
        raise UserError(f"all {samples} {stage.upper()} trial(s) failed; see the warnings above and {storage}")
    return setup, done, failed


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup, counts, spaces = settings(args)
    root = checkpoint_dir(args.output_dir, args.dataset)
    storage = Path(args.storage_path or root / "ray_results").resolve()
    from load_data.datasets import load_dataset
    for stage in ("lp", "ff"):                        # the tables this search adds to when it ends
        safe_io.check_table(root / f"optimal_hyperparams_{stage}.csv", ["model"])
    safe_io.check_table(checkpoint_path(args.output_dir, args.dataset, "soup", f"{setup['save_name']}_trials.csv"), ["trial"])
    num_classes = load_dataset(args.dataset, setup["data_dir"], split_dir=setup["split_dir"]).num_classes
    # fail here, not in every trial: unknown model names, unstaged or unreadable weights
    model_loader.get_model_with_head(setup["model"], num_classes, setup["source"], setup["tv_weights"],
                                     weights=setup["weights"])

    import ray
    from ray import tune
    if not ray.is_initialized():
        tuning.connect(args.ray_address, cpu_count())
    resources = tuning.default_resources(args.cpus_per_trial, args.gpus_per_trial)
    tuning.check_resources_fit(resources)
    setup["threads"] = resources["cpu"]
    name = setup["save_name"]
    lp_path = checkpoint_path(args.output_dir, args.dataset, "lp", f"{name}.pth")
    if args.skip_lp_if_exist and lp_path.exists():
        print(f"== LP: reusing {lp_path} (--skip_lp_if_exist False reruns it)")
    else:
        lp_setup, done, failed = run_stage("lp", setup, {"lr": tune.loguniform(*spaces["lp_lr"]), "weight_decay": 0.0},
                                           counts["lp"], args, counts, storage, resources)
        best = max(done, key=lambda t: t.best_metric)
        record_if_better(args.output_dir, "lp", best, lp_setup, num_classes, len(done), len(failed))
        print(f"== LP best: val {best.best_metric:.4f} with lr {best.config['lr']:.3g} -> {lp_path}")

    ft_space = {"lr": tune.loguniform(*spaces["ff_lr"]), "weight_decay": tune.loguniform(*spaces["ff_weight_decay"])}
    ft_setup, done, failed = run_stage("ff", dict(setup, lp_checkpoint=str(lp_path.resolve())), ft_space, counts["ff"],
                                       args, counts, storage, resources)
    soup_dir, added = record_soup_trials(args.output_dir, name, done, ft_setup, num_classes)
    best = max(done, key=lambda t: t.best_metric)
    ff_path = checkpoint_path(args.output_dir, args.dataset, "ff", f"{name}.pth")
    best_copy = output_path(Path(args.output_dir), f"{name}_best.pth")
    if record_if_better(args.output_dir, "ff", best, ft_setup, num_classes, len(done), len(failed)) or not best_copy.exists():
        safe_io.write_bytes(best_copy, ff_path.read_bytes())
    print(f"== FT best: val {best.best_metric:.4f} ({ft_setup['selection_metric']}) with lr {best.config['lr']:.3g}, "
          f"wd {best.config['weight_decay']:.3g}; {added} new trial(s) kept for soups in {soup_dir} "
          f"({len(done) - added} already listed), {len(failed)} failed")
    return 0


def main(argv=None) -> int:
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

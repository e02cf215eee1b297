"""Stage 8: the paper's deep-ensemble baseline, pool-then-calibrate (paper Appendix A.5).

From K prediction files of one architecture, draw --subsets random subsets of each size in --sizes
(all subsets when there are fewer), average the members' logits (with --combine probs: their
probabilities), fit one temperature on val, and evaluate test and ood_test. Writes per-subset rows plus
`subset=mean` and `subset=std` rows (std only where a size has two or more subsets) to
`evaluation_deep_ensemble_<dataset>.csv` and `..._ood.csv` (`evaluation_deep_ensemble_probs_...`).

    python evaluate/8_evaluate_deep_ensemble.py --members preds/ResNet50_s*.npz --sizes 2 5 8 \
        --subsets 32 --output_dir ./results

The paper's ImageNet ensembles draw from ten ResNet-50 checkpoints; configs/imagenet_rn50_ensemble.csv
names them (stage them with download_imagenet_models.py, predict them with stage 1):

    python evaluate/8_evaluate_deep_ensemble.py --members_csv configs/imagenet_rn50_ensemble.csv \
        --dataset imagenet --sizes 2 5 8 --subsets 32 --output_dir ./results

The official command line (no --members) evaluates the official code's pre-averaged ensembles
instead, as the official script did: every `<model>_<m>.csv` of --prediction_dir (logits without a
header; labels from ../point_prediction.csv), raw (no temperature), one row each with subset "top".

    python evaluate/8_evaluate_deep_ensemble.py --dataset_name caltech256 --backbone_csv_path \
        configs/backbones.csv --prediction_dir y-prediction/caltech256/test/deep_ensemble
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from utils.cli import flags
from utils.cli.parsing import (
    ArgumentParser,
    UserError,
    add_backbone_csv,
    non_negative_int,
    plain_name,
    positive_int,
    run_main,
    warn,
)
from utils.files import safe_io, tables
from utils.files.model_names import check_plain_name, unique_by_case
from utils.files.prediction_io import (
    aligned,
    check_output_folder,
    find_prediction_file,
    prediction_paths,
    read_predictions,
)
from utils.files.results import EVAL_SPLITS, check_dataset_name, queue_results
from utils.maths import calibrate_temperature
from utils.maths.bootstrap import check_samples
from utils.maths.duo_modes import COMBINE
from utils.maths.uncertainty_metrics import SINGLE_UNCERTAINTY_TYPES
from utils.stages.ensembles import Ensemble, default_name, member_splits, official_ensemble_rows
from utils.stages.inputs import resolve_dataset


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], parents=[
        flags.result_dataset(),
        flags.bootstrap("evaluation_deep_ensemble_delta_<dataset>[_ood].csv: every metric of DE(m), the mean over its "
                        "subsets (each one resampled), minus the temperature-scaled base model's (--base, else the member "
                        "named as --name, else the first)")])
    parser.add_argument("--members", nargs="+", metavar="FILE_OR_MODEL",
                        help="member prediction files, or model names inside --predictions_dir (without it: the "
                             "official pre-averaged <model>_<m>.csv files of --prediction_dir)")
    parser.add_argument("--members_csv", metavar="CSV", help="the members as the model_name column of a CSV (e.g. "
                        "configs/imagenet_rn50_ensemble.csv), looked up in --predictions_dir")
    parser.add_argument("--predictions_dir", "--prediction_dir", default="./predictions", metavar="DIR",
                        help="where member model names are looked up (default ./predictions)")
    add_backbone_csv(parser, "with the official form: which <model> of <model>_<m>.csv files are evaluated")
    parser.add_argument("--sizes", nargs="+", type=positive_int, default=[2, 5], help="ensemble sizes m (default 2 5)")
    parser.add_argument("--subsets", type=positive_int, default=32, help="random subsets per size (default 32)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the subset draw (default 0)")
    parser.add_argument("--name", type=plain_name, help="label in the 'model' column (default: the members' common name prefix, "
                        "compared in any case and spelt as the first member)")
    parser.add_argument("--base", metavar="FILE_OR_MODEL",
                        help="with --bootstrap: the single model DE(m) is compared with, a member or not (e.g. the best "
                             "of the fine-tuning trials the ensemble is drawn from; default: the member named as --name, "
                             "else the first)")
    parser.add_argument("--output_dir", "--save_dir", default="./results", help="results folder (default ./results)")
    parser.add_argument("--uncertainty_types", nargs="+", default=list(SINGLE_UNCERTAINTY_TYPES),
                        choices=SINGLE_UNCERTAINTY_TYPES, help="default: both")
    parser.add_argument("--combine", choices=COMBINE, default="logits",
                        help="average the members' logits (default, the paper) or their probabilities, then fit one "
                             "temperature on val; probs writes evaluation_deep_ensemble_probs_<dataset>[_ood].csv")
    parser.add_argument("--method", choices=calibrate_temperature.METHODS, default="exact",
                        help="temperature fit: exact optimum (default) or the official grid + LBFGS")
    return parser


def resolve_member(entry: str, predictions_dir: str, flag: str = "--members") -> str:
    """A member given as a file (kept as given; --members and --base only) or as a model name in --predictions_dir
    (any case)."""
    if flag in ("--members", "--base") and (os.path.sep in entry or entry.endswith((".npz", ".csv"))):
        return entry
    found = find_prediction_file(predictions_dir, check_plain_name(entry, flag))
    if found is None:
        raise UserError(f"{flag}: no prediction file for '{entry}' in {predictions_dir} (--predictions_dir)")
    return str(found)


def members_of(args) -> tuple[list[str], str]:
    """The members as given (--members, or --members_csv's model_name column) and the flag that named them."""
    if not args.members_csv:
        return args.members or [], "--members"
    if args.members:
        raise UserError("--members_csv: give the members either as --members or as --members_csv, not both")
    names = tables.backbone_names(tables.read_backbones(args.members_csv, "--members_csv"))
    if not names:
        raise UserError(f"--members_csv: {args.members_csv} names no model in its model_name column")
    return names, f"--members_csv {args.members_csv}"


def official_main(args) -> int:
    """The official command line: the pre-averaged <model>_<m>.csv ensembles of --prediction_dir, evaluated raw."""
    if args.combine != "logits":
        raise UserError("--combine probs: the official ensemble files hold logits averaged already; give the "
                        "members' prediction files with --members or --members_csv")
    dataset = check_dataset_name(args.dataset or Path(args.predictions_dir).resolve().parent.parent.name, "--dataset")
    rows = official_ensemble_rows(Path(args.predictions_dir), args.backbone_csv, args.uncertainty_types)
    outputs = safe_io.Outputs()
    written = queue_results(outputs, args.output_dir, "deep_ensemble", dataset, rows, {r["split"] for r in rows})
    outputs.commit()
    print(f"wrote {len(rows)} row(s) to {', '.join(map(str, written))}")
    return 0


def base_model(ensemble: Ensemble, args):
    """The PredictionSet DE(m) is compared with: --base, else the member named as the ensemble, else the first."""
    if args.base:
        return read_predictions(prediction_paths([resolve_member(args.base, args.predictions_dir, "--base")],
                                                 "--base")[0])
    named = [m for m in ensemble.members if m.model.casefold() == ensemble.name.casefold()]
    if not named:
        warn(f"--bootstrap: no member is named {ensemble.name}; the intervals compare DE(m) with the first member, "
             f"{ensemble.members[0].model} (name the base model with --base, or its member with --name)")
    return (named or ensemble.members)[0]


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.base and not args.bootstrap:
        raise UserError("--base: it names the model the bootstrap compares DE(m) with; add --bootstrap B")
    entries, flag = members_of(args)
    if not entries:
        return official_main(args)
    paths = prediction_paths([resolve_member(entry, args.predictions_dir, flag) for entry in entries], flag)
    check_output_folder(args.output_dir, {Path(p).parent for p in paths}, "--output_dir")
    outputs = safe_io.Outputs(paths)
    members = [read_predictions(path) for path in paths]
    unique_by_case([m.model for m in members], "--members")
    bad_sizes = [m for m in args.sizes if not 1 <= m <= len(members)]
    if bad_sizes:
        raise UserError(f"--sizes: {bad_sizes} not in [1, {len(members)}] (the number of --members)")
    ensemble = Ensemble(args.name or default_name(members), members, member_splits(members), args.combine, args.method)
    base = base_model(ensemble, args) if args.bootstrap else None
    for split in (s for s in EVAL_SPLITS if s in ensemble.splits and args.bootstrap):
        check_samples(len(ensemble.splits[split][0]), f"{members[0].source}: split '{split}'")
    for split in ensemble.splits if base is not None else ():        # the base is checked before any work
        aligned(members[0], base, split, "like the members")
    dataset = resolve_dataset(args.dataset, [m.dataset for m in members] + [base and base.dataset], args.predictions_dir)

    rows, resampled = ensemble.rows(args.sizes, args.subsets, args.seed, args.uncertainty_types, args.bootstrap,
                                    args.bootstrap_seed, flag)
    summaries = ensemble.summaries(rows)
    kind = "deep_ensemble" if args.combine == "logits" else f"deep_ensemble_{args.combine}"
    written = queue_results(outputs, args.output_dir, kind, dataset, rows + summaries)
    deltas = ensemble.deltas(resampled, base, args.uncertainty_types, args.bootstrap, args.bootstrap_seed) \
        if resampled else []
    written_deltas = queue_results(outputs, args.output_dir, f"{kind}_delta", dataset, deltas) if deltas else []
    outputs.commit()
    print(f"wrote {len(rows) + len(summaries)} row(s) to {', '.join(map(str, written))}")
    if deltas:
        print(f"wrote {len(deltas)} paired-bootstrap row(s) (B={args.bootstrap}) to {', '.join(map(str, written_deltas))}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

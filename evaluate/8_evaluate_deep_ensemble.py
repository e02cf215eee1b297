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

import hashlib
import itertools
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from utils.cli import flags
from utils.cli.parsing import (ArgumentParser, UserError, add_backbone_csv, non_negative_int, positive_int, run_main,
                               plain_name, warn)
from utils.files import safe_io, tables
from utils.files.model_names import NameMap, check_plain_name, unique_by_case
from utils.files.prediction_io import (DIGEST_LENGTH, aligned, check_output_folder, find_prediction_file, prediction_paths,
                                       read_official_ensemble, read_predictions)
from utils.files.results import EVAL_SPLITS, check_dataset_name, queue_results
from utils.maths import calibrate_temperature
from utils.maths.bootstrap import check_samples
from utils.maths.duo_modes import COMBINE
from utils.maths.uncertainty_metrics import METRIC_COLUMNS, ProbabilityMixture, WeightedLogits
from utils.stages.calibration import checked_temperature
from utils.stages.scoring import (SINGLE_UNCERTAINTY_TYPES, SPREAD_DDOF, delta_rows, resampled_baseline,
                                  resolve_dataset, scaled_terms, single_model_metrics)


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


def pooled_logits(members: list, combine: str) -> np.ndarray:
    """The members' mean logits, or (combine="probs") the log of their mean probabilities."""
    if combine == "probs":
        return ProbabilityMixture(members, [1.0] * len(members)).materialise()
    return WeightedLogits(members, [1.0 / len(members)] * len(members)).materialise()


def base_model(members: list, splits: dict, name: str, args) -> tuple[str, dict, object]:
    """(name, {split: predictions aligned with the members'}, its PredictionSet) of the model DE(m) is compared
    with; read and checked before anything is written."""
    if args.base:
        path = prediction_paths([resolve_member(args.base, args.predictions_dir, "--base")], "--base")[0]
        base = read_predictions(path)
        return base.model, {split: aligned(members[0], base, split, "like the members") for split in splits}, base
    position = next((i for i, m in enumerate(members) if m.model.casefold() == name.casefold()), None)
    if position is None:
        position = 0
        warn(f"--bootstrap: no member is named {name}; the intervals compare DE(m) with the first member, "
             f"{members[0].model} (name the base model with --base, or its member with --name)")
    return members[position].model, {split: found[position] for split, found in splits.items()}, members[position]


def ensemble_deltas(resampled: dict, base_name: str, base: dict, base_set, splits: dict, name: str, digest: str,
                    args) -> list[dict]:
    """DE(m) - the temperature-scaled base model: the mean over subsets of each resample's metrics against the
    base's on the same resamples (every subset and the base share them: same samples, B and seed)."""
    val = base["val"]
    base_temperature = checked_temperature(val.logits, val.labels, base_set.source, base_name, args.method).temperature
    baselines = {split: resampled_baseline(scaled_terms(base[split].logits, splits[split][0].labels,
                                                        base_temperature, args.uncertainty_types),
                                           args.bootstrap, args.bootstrap_seed)
                 for split in EVAL_SPLITS if split in splits}
    rows = []
    for (size, split, kind), found in resampled.items():
        point = {m: float(np.mean([f[0][m] for f in found])) for m in METRIC_COLUMNS}
        draws = {m: np.mean([f[1][m] for f in found], axis=0) for m in METRIC_COLUMNS}
        rows += delta_rows(baselines[split], {kind: (point, draws)}, args.bootstrap, args.bootstrap_seed,
                           {"model": name, "m": size, "base": base_name, "subsets": len(found), "split": split,
                            "digest": digest, "digest_base": base_set.digest, "temperature_base": base_temperature})
    print(f"paired bootstrap of DE(m) against the temperature-scaled {base_name} (B={args.bootstrap})")
    return rows


def draw_subsets(num_members: int, size: int, count: int, seed: int) -> list[tuple[int, ...]]:
    """`count` distinct sorted index subsets of `size` (all of them when fewer exist), reproducibly."""
    total = math.comb(num_members, size)
    if total <= count:
        return list(itertools.combinations(range(num_members), size))
    rng = np.random.default_rng([seed, num_members, size])
    chosen: dict[tuple[int, ...], None] = {}
    while len(chosen) < count:
        chosen.setdefault(tuple(sorted(rng.choice(num_members, size, replace=False).tolist())), None)
    return list(chosen)


def resolve_member(entry: str, predictions_dir: str, flag: str = "--members") -> str:
    """A member given as a file (kept as given; --members and --base only) or as a model name in --predictions_dir
    (any case)."""
    if flag in ("--members", "--base") and (os.path.sep in entry or entry.endswith((".npz", ".csv"))):
        return entry
    found = find_prediction_file(predictions_dir, check_plain_name(entry, flag))
    if found is None:
        raise UserError(f"{flag}: no prediction file for '{entry}' in {predictions_dir} (--predictions_dir)")
    return str(found)


def official_ensembles(args) -> list[dict]:
    """Rows for the official code's pre-averaged ensembles `<model>_<m>.csv` (the top-m fine-tuning
    trials' mean logits), evaluated raw as the official script did; <model> must be a backbone row."""
    folder = Path(args.predictions_dir)
    if not folder.is_dir():
        raise UserError(f"--prediction_dir: {folder} not found")
    known = NameMap((name, True) for name in tables.backbone_names(tables.read_backbones(args.backbone_csv)))
    # the folder is y-prediction/<dataset>/<split>/deep_ensemble (the official script called every split "test")
    split = folder.resolve().parent.name if folder.resolve().parent.name in EVAL_SPLITS else "test"
    rows, seen = [], NameMap()
    for path in sorted(folder.glob("*.csv")):
        base, _, m = path.stem.rpartition("_")
        if not re.fullmatch(r"[0-9]+", m) or int(m) < 1 or base not in known:
            print(f"{path.name}: not <backbone>_<m>.csv, skipped (m >= 1)")
            continue
        key = (base, str(int(m)))
        if key in seen:                  # one result row per (model, m): a second file would silently win
            raise UserError(f"--prediction_dir: {seen[key].name} and {path.name} are both the m={int(m)} ensemble of "
                            f"{known.spelling(base)}; keep one")
        seen[key] = path
        data = read_official_ensemble(path)
        for uncertainty, metrics in single_model_metrics(data.logits, data.labels, args.uncertainty_types).items():
            rows.append({**metrics, "model": known.spelling(base), "m": int(m), "subset": "top", "members": path.name,
                         "uncertainty_type": uncertainty, "split": split})
        print(f"{path.name}: evaluated ({split}, m={m}, raw logits)")
    if not rows:
        raise UserError(f"--prediction_dir: no <backbone>_<m>.csv ensembles in {folder}; give --members FILE ... "
                        f"to build deep ensembles from prediction files")
    return rows


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.base and not args.bootstrap:
        raise UserError("--base: it names the model the bootstrap compares DE(m) with; add --bootstrap B")
    if args.members_csv:
        if args.members:
            raise UserError("--members_csv: give the members either as --members or as --members_csv, not both")
        args.members = tables.backbone_names(tables.read_backbones(args.members_csv, "--members_csv"))
        flag = f"--members_csv {args.members_csv}"
        if not args.members:
            raise UserError(f"--members_csv: {args.members_csv} names no model in its model_name column")
    else:
        flag = "--members"
    if not args.members:
        if args.combine != "logits":
            raise UserError("--combine probs: the official ensemble files hold logits averaged already; give the "
                            "members' prediction files with --members or --members_csv")
        dataset = check_dataset_name(args.dataset or Path(args.predictions_dir).resolve().parent.parent.name, "--dataset")
        rows = official_ensembles(args)
        outputs = safe_io.Outputs()
        written = queue_results(outputs, args.output_dir, "deep_ensemble", dataset, rows, {r["split"] for r in rows})
        outputs.commit()
        print(f"wrote {len(rows)} row(s) to {', '.join(map(str, written))}")
        return 0
    paths = prediction_paths([resolve_member(entry, args.predictions_dir, flag) for entry in args.members], flag)
    check_output_folder(args.output_dir, {Path(p).parent for p in paths}, "--output_dir")
    outputs = safe_io.Outputs(paths)
    members = [read_predictions(path) for path in paths]
    unique_by_case([m.model for m in members], "--members")
    bad_sizes = [m for m in args.sizes if not 1 <= m <= len(members)]
    if bad_sizes:
        raise UserError(f"--sizes: {bad_sizes} not in [1, {len(members)}] (the number of --members)")
    reference = members[0]
    splits = {}
    for split in ("val",) + EVAL_SPLITS:
        if split not in reference.splits:
            if split in ("val", "test"):
                reference.split(split, "to fit and evaluate the ensemble")
            continue
        splits[split] = [reference.splits[split]] + [aligned(reference, m, split, "like the first member")
                                                     for m in members[1:]]
    shared = len(os.path.commonprefix([m.model.casefold() for m in members]))
    name = args.name or members[0].model[:shared].rstrip("_-.") or "deep_ensemble"
    base_name, base, base_set = base_model(members, splits, name, args) if args.bootstrap else (None, None, None)
    for split in (s for s in EVAL_SPLITS if s in splits and args.bootstrap):
        check_samples(len(splits[split][0]), f"{reference.source}: split '{split}'")
    dataset = resolve_dataset(args.dataset, [m.dataset for m in members] + [base_set and base_set.dataset],
                              args.predictions_dir)
    digest = hashlib.sha256("|".join(m.digest for m in members).encode()).hexdigest()[:DIGEST_LENGTH]
    member_digests = "|".join(f"{m.model}:{m.digest}" for m in members)

    resampled: dict = {}            # (m, split, uncertainty type) -> [(point, resampled metrics) of each subset]
    rows = []
    for size in args.sizes:
        subsets = draw_subsets(len(members), size, args.subsets, args.seed)
        for number, subset in enumerate(subsets):
            val_mean = pooled_logits([splits["val"][i].logits for i in subset], args.combine)
            label = "+".join(members[i].model for i in subset)
            temperature = checked_temperature(val_mean, splits["val"][0].labels, f"{flag}: the ensemble {label}",
                                              f"{name} ({label})", args.method).temperature
            for split in EVAL_SPLITS:
                if split not in splits:
                    continue
                mean = pooled_logits([splits[split][i].logits for i in subset], args.combine)
                pooled = WeightedLogits([mean], [1.0 / temperature])
                kept = mean.argmax(1) if math.isinf(temperature) else None   # T = inf: uniform p, the mean's argmax
                for uncertainty, metrics in single_model_metrics(pooled, splits[split][0].labels,
                                                                 args.uncertainty_types, kept).items():
                    rows.append({**metrics, "model": name, "m": size, "subset": str(number), "members": label,
                                 "uncertainty_type": uncertainty, "split": split, "digest": digest,
                                 "member_digests": member_digests})
                if args.bootstrap:
                    terms = scaled_terms(mean, splits[split][0].labels, temperature, args.uncertainty_types)
                    for kind, found in resampled_baseline(terms, args.bootstrap, args.bootstrap_seed).items():
                        resampled.setdefault((size, split, kind), []).append(found)
        print(f"m={size}: {len(subsets)} subset(s) evaluated")
    frame = pd.DataFrame(rows)
    summaries = []
    for (size, uncertainty, split), group in frame.groupby(["m", "uncertainty_type", "split"], sort=False):
        statistics = [("mean", group[METRIC_COLUMNS].mean())]
        if len(group) > 1:                 # the spread of one subset is undefined: no row rather than a NaN one
            statistics.append(("std", group[METRIC_COLUMNS].std(ddof=SPREAD_DDOF)))
        for statistic, values in statistics:
            summaries.append({**values.to_dict(), "model": name, "m": size, "subset": statistic, "members": "",
                              "uncertainty_type": uncertainty, "split": split, "digest": digest,
                                 "member_digests": member_digests})
    kind = "deep_ensemble" if args.combine == "logits" else f"deep_ensemble_{args.combine}"
    written = queue_results(outputs, args.output_dir, kind, dataset, rows + summaries)
    deltas = ensemble_deltas(resampled, base_name, base, base_set, splits, name, digest, args) if resampled else []
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

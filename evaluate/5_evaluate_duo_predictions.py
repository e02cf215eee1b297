"""Stage 5: evaluate every duo of a duos CSV in every mode and uncertainty type on test and ood_test.

Writes `evaluation_duo_<dataset>.csv` (test) and `evaluation_duo_<dataset>_ood.csv` (ood_test) under
--output_dir (`evaluation_duo_probs_...` with `--combine probs`). Modes and uncertainty types are defined
in `utils/maths/duo_modes.py` (docs/methods.md, "Duo modes").

    python evaluate/5_evaluate_duo_predictions.py --config configs/duos.csv \
        --predictions_dir ./predictions --output_dir ./results [--modes unweighted uqonly asymmetric]
"""
from __future__ import annotations

import sys

from utils.cli import flags
from utils.cli.parsing import ArgumentParser, UserError, add_backbone_csv, run_main
from utils.files import safe_io, tables
from utils.files.prediction_io import check_output_folder
from utils.files.results import queue_results
from utils.maths.duo_modes import COMBINE, MODES, member_scales
from utils.maths.uncertainty_metrics import UNCERTAINTY_TYPES
from utils.stages.calibration import Calibration
from utils.stages.inputs import PredictionCache, find_duo_files, pair_costs, paired_splits, resolve_dataset
from utils.stages.intervals import bootstrap_baseline
from utils.stages.scoring import check_scaled_logits, duo_rows, largest_magnitude
from utils.stages.shift import base_uncertainties, detection_deltas, detection_rows

_NEEDS_SINGLE = {"unweighted_ts"}
_NEEDS_DUO = {"uqonly", "asymmetric", "asymmetric_code"}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], parents=[
        flags.evaluation_folders(), flags.result_dataset(),
        flags.bootstrap("evaluation_duo_delta_<dataset>[_ood].csv: every metric of each duo x mode x uncertainty type "
                        "minus the temperature-scaled large model's")])
    parser.add_argument("--config", "--duo_csv_path", default="configs/duos.csv", metavar="CSV",
                        help="duos CSV with model_large,model_small[,gflops_*] (default configs/duos.csv; a relative path "
                             "not found in the working folder is read from the repository)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="default: all five")
    parser.add_argument("--uncertainty_types", nargs="+", default=list(UNCERTAINTY_TYPES), choices=UNCERTAINTY_TYPES,
                        help="default: all three")
    add_backbone_csv(parser, "fills gflops columns the duos CSV lacks")
    parser.add_argument("--strict", action="store_true", help="fail on the first duo with a missing prediction file")
    parser.add_argument("--combine", choices=COMBINE, default="logits",
                        help="average the members' scaled logits (default, the paper) or their probabilities under "
                             "the same scalings; probs writes evaluation_duo_probs_<dataset>[_ood].csv")
    parser.add_argument("--fit_missing", action="store_true",
                        help="fit missing temperatures/weights on the val split and record them (else: error)")
    return parser


def needs_single(modes, args) -> bool:
    """The large model's own temperature: unweighted_ts, and the baseline of --bootstrap."""
    return bool(_NEEDS_SINGLE & set(modes)) or args.bootstrap > 0


def check_temperatures(jobs, modes, calibration: Calibration, args) -> None:
    """Fail before any work when a needed temperature is missing (unless --fit_missing)."""
    for duo, _, _ in jobs:
        pair = (duo.model_large, duo.model_small)
        calibration.require(pairs=[pair] if _NEEDS_DUO & set(modes) else [])
        if needs_single(modes, args):
            calibration.require(pair if _NEEDS_SINGLE & set(modes) else pair[:1], what=" + ".join(pair))


def in_reading_order(jobs: list) -> list:
    """Duos grouped by large model, the sidekicks of every other group in reverse order: the sidekicks read
    last are still in the prediction cache when the next large model starts (a plain order evicts each one
    just before it is needed again once there are more sidekicks than cache slots)."""
    by_large: dict[str, list] = {}
    for job in sorted(jobs, key=lambda job: (job[0].model_large.casefold(), job[0].model_small.casefold())):
        by_large.setdefault(job[0].model_large.casefold(), []).append(job)
    return [job for i, group in enumerate(by_large.values()) for job in (group if i % 2 == 0 else group[::-1])]


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    backbones = tables.read_backbones(args.backbone_csv)
    duos = tables.read_duos(args.config, backbones)
    costs = tables.duo_costs(duos)
    calibration = Calibration(args.calibrated_dir, args.fit_missing, args.predictions_dir, args.config)
    jobs, skipped = find_duo_files(duos, args.predictions_dir, args.strict)
    for flag in ("--output_dir", "--calibrated_dir"):
        check_output_folder(getattr(args, flag[2:]), [args.predictions_dir], flag)
    check_temperatures(jobs, args.modes, calibration, args)
    outputs = safe_io.Outputs([p for _, large, small in jobs for p in (large, small)])
    calibration.expect(outputs)

    cache = PredictionCache()
    large_normalizers: dict = {}        # (large file, split) -> {scale: its logits' row normalizers}
    baselines: dict = {}                # (large file, split) -> the TS large model's bootstrap metrics
    rows, deltas, dataset_names, detection, detection_delta = [], [], [], [], []
    for duo, large_path, small_path in in_reading_order(jobs):
        large, small = cache.get(large_path), cache.get(small_path)
        dataset_names += [large.dataset, small.dataset]
        single_of = ((large, small) if _NEEDS_SINGLE & set(args.modes) else (large,)) if needs_single(args.modes, args) \
            else ()
        temps = calibration.pair(large, small, single_of, duo=bool(_NEEDS_DUO & set(args.modes)))
        descriptive = {"model_large": large.model, "model_small": small.model,
                       **pair_costs(duo, large, small, costs, backbones),
                       "digest_large": large.digest, "digest_small": small.digest}
        per_split, large_splits = {}, {}
        for split, data_large, data_small in paired_splits(large, small):
            magnitudes = (largest_magnitude(data_large.logits), largest_magnitude(data_small.logits))
            for scales in {member_scales(mode, temps) for mode in args.modes}:
                check_scaled_logits(magnitudes, [scale / 2 for scale in scales],
                                    f"{args.calibrated_dir}: {large.model} + {small.model}")
            if args.bootstrap and (large.source, split) not in baselines:
                baselines[(large.source, split)] = bootstrap_baseline(
                    data_large, temps.single_large, args.uncertainty_types, args.bootstrap, args.bootstrap_seed,
                    f"{large.source}: split '{split}'")
            found, intervals = duo_rows(data_large, data_small, temps, args.modes, args.uncertainty_types, args.combine,
                                        large_normalizers.setdefault((large.source, split), {}),
                                        baselines.get((large.source, split)), args.bootstrap, args.bootstrap_seed,
                                        per_split.setdefault(split, {}))
            large_splits[split] = data_large
            rows += [{**row, **descriptive, "split": split} for row in found]
            deltas += [{**row, **descriptive, "split": split} for row in intervals]
        scales = {mode: dict(zip(("scale_large", "scale_small"), member_scales(mode, temps))) for mode in args.modes}
        for row in detection_rows(per_split, ("mode", "uncertainty_type")):
            detection.append({**row, **descriptive, **scales[row["mode"]]})
        if args.bootstrap and len(per_split) > 1:
            base = base_uncertainties(large_splits, temps.single_large, args.uncertainty_types)
            detection_deltas_rows = detection_deltas(per_split, base, args.bootstrap, args.bootstrap_seed)
            detection_delta += [{**row, **descriptive, **scales[row["mode"]], "temperature": temps.single_large}
                                for row in detection_deltas_rows]
        print(f"{large.model} + {small.model}: evaluated {len(args.modes)} mode(s)")

    if not rows:
        raise UserError(f"nothing evaluated: no duo of {args.config} has prediction files in {args.predictions_dir}")
    dataset = resolve_dataset(args.dataset, dataset_names, args.predictions_dir)
    calibration.queue(outputs)
    kind = "duo" if args.combine == "logits" else f"duo_{args.combine}"
    written = queue_results(outputs, args.output_dir, kind, dataset, rows)
    written_deltas = queue_results(outputs, args.output_dir, f"{kind}_delta", dataset, deltas) if deltas else []
    if args.combine == "logits":
        written += queue_results(outputs, args.output_dir, "duo_shift_detection", dataset, detection)
        written_deltas += queue_results(outputs, args.output_dir, "duo_shift_detection_delta", dataset,
                                        detection_delta) if detection_delta else []
    outputs.commit()
    print(f"wrote {len(rows)} row(s) for {len(jobs)} duo(s) to {', '.join(map(str, written))}")
    if deltas:
        print(f"wrote {len(deltas)} paired-bootstrap row(s) (B={args.bootstrap}) to {', '.join(map(str, written_deltas))}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Stage 5: evaluate every duo of a duos CSV in every mode and uncertainty type on test and ood_test.

Writes `evaluation_duo_<dataset>.csv` (test) and `evaluation_duo_<dataset>_ood.csv` (ood_test) under
--output_dir (`evaluation_duo_probs_...` with `--combine probs`). Modes and uncertainty types are defined
in `utils/maths/duo_modes.py` (contract §5).

    python evaluate/5_evaluate_duo_predictions.py --config configs/duos.csv \
        --predictions_dir ./predictions --output_dir ./results [--modes unweighted uqonly asymmetric]
"""
from __future__ import annotations

import sys
from pathlib import Path

from utils.cli import flags
from utils.cli.parsing import ArgumentParser, UserError, add_backbone_csv, run_main
from utils.files import tables
from utils.files.prediction_io import check_output_folder
from utils.maths.duo_modes import COMBINE, MODES, duo_outputs, member_scales
from utils.maths.uncertainty_metrics import UNCERTAINTY_TYPES
from utils.stages.calibration import pair_temperatures, record_fits
from utils.stages.scoring import (DELTA_RESULT_COLUMNS, DELTA_VALUE_COLUMNS, DUO_RESULT_COLUMNS, PredictionCache,
                                  check_scaled_logits, delta_rows, find_duo_files, largest_magnitude,
                                  metrics_by_uncertainty, mode_terms, paired_splits, resampled_baseline,
                                  resolve_dataset, scaled_terms, write_results)

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


def check_temperatures(jobs, modes, singles: dict, weights: dict, args) -> None:
    """Fail before any work when a needed temperature is missing (unless --fit_missing)."""
    if args.fit_missing:
        return
    for duo, _, _ in jobs:
        pair = f"{duo.model_large} + {duo.model_small}"
        if _NEEDS_DUO & set(modes) and (duo.model_large, duo.model_small) not in weights:
            raise UserError(f"no duo weights for {pair} in {args.calibrated_dir}/{tables.DUO_TEMPERATURE_FILE}; run "
                            f"`python evaluate/3_duo_temp_scale.py --config {args.config} --predictions_dir "
                            f"{args.predictions_dir} --output_dir {args.calibrated_dir}` or pass --fit_missing")
        lacking = [m for m in ((duo.model_large, duo.model_small) if _NEEDS_SINGLE & set(modes) else (duo.model_large,))
                   if m not in singles]
        if needs_single(modes, args) and lacking:
            raise UserError(f"{pair}: no single-model temperature for {lacking} in {args.calibrated_dir}/"
                            f"{tables.SINGLE_TEMPERATURE_FILE}; run `python evaluate/2_temp_scale.py --predictions_dir "
                            f"{args.predictions_dir} --output_dir {args.calibrated_dir}` or pass --fit_missing")


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
    flags.check_bootstrap(args)
    backbones = tables.read_backbones(args.backbone_csv)
    duos = tables.read_duos(args.config, backbones)
    singles = tables.read_single_temperatures(Path(args.calibrated_dir) / tables.SINGLE_TEMPERATURE_FILE)
    weights = tables.read_duo_weights(Path(args.calibrated_dir) / tables.DUO_TEMPERATURE_FILE)
    jobs, skipped = find_duo_files(duos, args.predictions_dir, args.strict)
    for flag in ("--output_dir", "--calibrated_dir"):
        check_output_folder(getattr(args, flag[2:]), [args.predictions_dir], flag)
    check_temperatures(jobs, args.modes, singles, weights, args)

    cache = PredictionCache()
    large_normalizers: dict = {}        # (large file, split) -> {scale: its logits' row normalizers}
    baselines: dict = {}                # (large file, split) -> the TS large model's bootstrap metrics
    rows, deltas, fitted_single, fitted_duo, dataset_names = [], [], [], [], []
    for duo, large_path, small_path in in_reading_order(jobs):
        large, small = cache.get(large_path), cache.get(small_path)
        dataset_names += [large.dataset, small.dataset]
        single_of = ((large, small) if _NEEDS_SINGLE & set(args.modes) else (large,)) if needs_single(args.modes, args) \
            else ()
        temps = pair_temperatures(large, small, singles, weights, fitted_single, fitted_duo, single_of,
                                  duo=bool(_NEEDS_DUO & set(args.modes)))
        descriptive = {"model_large": large.model, "model_small": small.model,
                       "gflops_large": duo.gflops_large, "gflops_small": duo.gflops_small,
                       "gflops_balance": duo.gflops_balance}
        for split, data_large, data_small in paired_splits(large, small):
            magnitudes = (largest_magnitude(data_large.logits), largest_magnitude(data_small.logits))
            for scales in {member_scales(mode, temps) for mode in args.modes}:
                check_scaled_logits(magnitudes, [scale / 2 for scale in scales],
                                    f"{args.calibrated_dir}: {large.model} + {small.model}")
            normalizers = large_normalizers.setdefault((large.source, split), {})
            outputs = duo_outputs(data_large.logits, data_small.logits, temps, args.modes, args.uncertainty_types,
                                  normalizers, args.combine)
            if args.bootstrap and (large.source, split) not in baselines:
                baselines[(large.source, split)] = resampled_baseline(
                    scaled_terms(data_large.logits, data_large.labels, singles[large.model], args.uncertainty_types),
                    args.bootstrap, args.bootstrap_seed)
            base = baselines.get((large.source, split))
            for mode, out in outputs.items():
                scored = metrics_by_uncertainty(out.logits, data_large.labels, out.predictions, out.uncertainty, out.stats)
                for uncertainty, metrics in scored.items():
                    rows.append({**metrics, **descriptive, "mode": mode, "uncertainty_type": uncertainty, "split": split})
                if base is not None:
                    deltas += delta_rows(base, mode_terms(out, data_large.labels), args.bootstrap, args.bootstrap_seed,
                                         {**descriptive, "mode": mode, "split": split})
        print(f"{large.model} + {small.model}: evaluated {len(args.modes)} mode(s)")

    if not rows:
        raise UserError(f"nothing evaluated: no duo of {args.config} has prediction files in {args.predictions_dir}")
    dataset = resolve_dataset(args.dataset, dataset_names, args.predictions_dir)
    record_fits(args.calibrated_dir, fitted_single, fitted_duo)
    kind = "duo" if args.combine == "logits" else f"duo_{args.combine}"
    written = write_results(args.output_dir, kind, dataset, rows, DUO_RESULT_COLUMNS,
                            ["model_large", "model_small", "mode", "uncertainty_type", "split"])
    print(f"wrote {len(rows)} row(s) for {len(jobs)} duo(s) to {', '.join(map(str, written))}")
    if deltas:
        written = write_results(args.output_dir, f"{kind}_delta", dataset, deltas, DELTA_RESULT_COLUMNS,
                                DELTA_RESULT_COLUMNS[:2] + ["mode", "uncertainty_type", "split", "metric"],
                                DELTA_VALUE_COLUMNS, always_defined=())
        print(f"wrote {len(deltas)} paired-bootstrap row(s) (B={args.bootstrap}) to {', '.join(map(str, written))}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

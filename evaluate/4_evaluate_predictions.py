"""Stage 4: evaluate every single model, raw and temperature-scaled, on test and ood_test.

Writes `evaluation_single_model_<dataset>.csv` (test) and `evaluation_single_model_<dataset>_ood.csv`
(ood_test) under --output_dir, one row per model x wrapper (None, TempScaleWrapper) x uncertainty type.

    python evaluate/4_evaluate_predictions.py --predictions_dir ./predictions --output_dir ./results
"""
from __future__ import annotations

import sys

from utils.cli import flags
from utils.cli.parsing import ArgumentParser, add_backbone_csv, plain_name, run_main, warn
from utils.files import safe_io, tables
from utils.files.prediction_io import check_output_folder, read_predictions, select_prediction_files
from utils.files.results import eval_splits, queue_results
from utils.stages.calibration import Calibration
from utils.stages.inputs import resolve_dataset
from utils.stages.intervals import baseline_delta_rows
from utils.stages.scoring import SINGLE_UNCERTAINTY_TYPES, check_scaled_logits, largest_magnitude, single_rows
from utils.stages.shift import detection_rows, single_uncertainties


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], parents=[
        flags.evaluation_folders(calibrated_help="folder of temperature_single_model.csv from stage 2 (default ./calibrated)"),
        flags.result_dataset(),
        flags.bootstrap("evaluation_single_model_delta_<dataset>[_ood].csv: every metric of each baseline (a soup, "
                        "IVON or Laplace file, <backbone>_greedy/_uniform/_ivon*/_LA), raw and temperature-scaled, "
                        "minus its temperature-scaled backbone's")])
    add_backbone_csv(parser, "for the gflops/params columns (model_name,GFLOPS[,Params]; after --config's costs, "
                     "before those stage 1 measured)")
    parser.add_argument("--config", "--duo_csv_path", metavar="CSV",
                        help="a duos CSV whose gflops_large/gflops_small give the models' costs first (as stages 5 and 7 "
                             "take them)")
    parser.add_argument("--models", nargs="+", type=plain_name, metavar="NAME", help="only these models")
    parser.add_argument("--uncertainty_types", nargs="+", default=list(SINGLE_UNCERTAINTY_TYPES),
                        choices=SINGLE_UNCERTAINTY_TYPES, help="default: both")
    parser.add_argument("--fit_missing", action="store_true",
                        help="fit missing temperatures on the val split and record them (else: error)")
    return parser


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    files = select_prediction_files(args.predictions_dir, args.models)
    for flag in ("--output_dir", "--calibrated_dir"):
        check_output_folder(getattr(args, flag[2:]), [args.predictions_dir], flag)
    backbones = tables.read_backbones(args.backbone_csv)
    costs = tables.duo_costs(tables.read_duos(args.config, backbones) if args.config else None)
    calibration = Calibration(args.calibrated_dir, args.fit_missing, args.predictions_dir)
    calibration.require(list(files))
    outputs = safe_io.Outputs(files.values())
    calibration.expect(outputs)

    rows, dataset_names, detection = [], [], []
    for name, path in files.items():            # one model in memory at a time
        pset = read_predictions(path)
        dataset_names.append(pset.dataset)
        temperature = calibration.temperature(pset)
        pset.split("test", "to evaluate the model")
        splits = eval_splits(pset.splits)
        descriptive = {"model": name, "gflops": tables.cost_of(name, costs, backbones, pset.meta),
                       "params": tables.backbone_value(backbones, name, "Params"), "digest": pset.digest}
        for split in splits:
            data = pset.splits[split]
            check_scaled_logits([largest_magnitude(data.logits)], [1.0 / temperature],
                                f"{calibration.single_path}: {name}")
            rows += [{**row, **descriptive, "split": split} for row in single_rows(data, temperature, args.uncertainty_types)]
        found = single_uncertainties({s: pset.splits[s] for s in splits}, temperature, args.uncertainty_types)
        detection += [{**row, "model": name, "digest": pset.digest,
                       "temperature": temperature if row["wrapper"] != "None" else 1.0}
                      for row in detection_rows(found, ("wrapper", "uncertainty_type"))]
        print(f"{name}: evaluated {', '.join(splits)}")
    dataset = resolve_dataset(args.dataset, dataset_names, args.predictions_dir)
    deltas = (baseline_delta_rows(files, calibration, args.uncertainty_types, args.bootstrap, args.bootstrap_seed)
              if args.bootstrap else [])
    calibration.queue(outputs)
    written = queue_results(outputs, args.output_dir, "single_model", dataset, rows)
    written += queue_results(outputs, args.output_dir, "shift_detection", dataset, detection)
    if deltas:
        written_deltas = queue_results(outputs, args.output_dir, "single_model_delta", dataset, deltas)
    outputs.commit()
    if calibration.fitted_single:
        print(f"fitted and recorded {len(calibration.fitted_single)} missing temperature(s) in {calibration.single_path}")
    print(f"wrote {len(rows)} row(s) to {', '.join(map(str, written))}")
    if deltas:
        print(f"wrote {len(deltas)} paired-bootstrap row(s) (B={args.bootstrap}) to {', '.join(map(str, written_deltas))}")
    elif args.bootstrap:
        warn("--bootstrap: no baseline file (<backbone>_greedy, _uniform, _ivon*, _LA) was evaluated together with "
             "its backbone" + (" (--models must name both)" if args.models else "") + "; no intervals written")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

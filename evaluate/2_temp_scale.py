"""Stage 2: fit one temperature per model on its validation split and upsert
`<output_dir>/temperature_single_model.csv`.

    python evaluate/2_temp_scale.py --predictions ./predictions/convnext_base.csv --output_dir ./calibrated
    python evaluate/2_temp_scale.py --predictions_dir ./predictions --output_dir ./calibrated
"""
from __future__ import annotations

import sys
from pathlib import Path

from utils.cli.parsing import ArgumentParser, plain_name, run_main
from utils.files import safe_io, tables
from utils.files.prediction_io import check_output_folder, prediction_paths, read_predictions, select_prediction_files
from utils.maths import calibrate_temperature
from utils.stages.calibration import single_temperature_row


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", nargs="+", metavar="FILE",
                        help="prediction files (.npz, .csv, or official y-prediction/<ds>/<split>/raw/<model>.csv)")
    source.add_argument("--predictions_dir", "--prediction_dir_path", metavar="DIR",
                        help="fit every model in this predictions folder (or official y-prediction/<ds>)")
    parser.add_argument("--output_dir", default="./calibrated", help="folder of temperature_single_model.csv")
    parser.add_argument("--models", nargs="+", type=plain_name, metavar="NAME", help="with --predictions_dir: only these models")
    parser.add_argument("--dataset", "--dataset_name", help="accepted for compatibility with the official "
                        "command lines; the temperature file does not depend on it")
    parser.add_argument("--method", choices=calibrate_temperature.METHODS, default="exact",
                        help="exact: the NLL optimum (default); official: the official grid + LBFGS(lr=0.01)")
    return parser


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.predictions:
        paths = prediction_paths(args.predictions, "--predictions")
    else:
        paths = list(select_prediction_files(args.predictions_dir, args.models).values())
    sources = [args.predictions_dir] if args.predictions_dir else {Path(p).parent for p in paths}
    check_output_folder(args.output_dir, sources, "--output_dir")
    outputs = safe_io.Outputs(paths)
    tables.queue_single_temperatures(outputs, args.output_dir, [])       # the table can take the rows: check it now
    rows = [single_temperature_row(read_predictions(path), args.method) for path in paths]
    out = tables.queue_single_temperatures(outputs, args.output_dir, rows)
    outputs.commit()
    for row in rows:
        print(f"{row['full_name']:40s} T={row['temperature']:.4f}  NLL {row['nll_before']:.4f} -> {row['nll_after']:.4f}"
              f"  ECE {row['ece_before']:.4f} -> {row['ece_after']:.4f}  (n_val={row['n_val']})")
    print(f"wrote {len(rows)} row(s) to {out}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Stage 3: fit the duo weights (w_large, w_small) on validation NLL and upsert
`<output_dir>/temperature_duo.csv` (temperatures written as T = 1 / (2w); w_small = 0 is T = inf).

    python evaluate/3_duo_temp_scale.py --large_model_pred ./predictions/convnext_base.csv \
        --small_model_pred ./predictions/efficientnet_b0.csv --output_dir ./calibrated
    python evaluate/3_duo_temp_scale.py --config configs/duos.csv --predictions_dir ./predictions
"""
from __future__ import annotations

import sys
from pathlib import Path

from utils.cli.parsing import ArgumentParser, UserError, add_backbone_csv, run_main
from utils.files import safe_io, tables
from utils.files.prediction_io import check_output_folder, resolve_prediction_path
from utils.maths import calibrate_temperature
from utils.stages.calibration import duo_weights_row
from utils.stages.inputs import PredictionCache, find_duo_files


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large_model_pred", metavar="FILE", help="prediction file of the large model")
    parser.add_argument("--small_model_pred", metavar="FILE", help="prediction file of the sidekick")
    add_backbone_csv(parser, "fills the gflops a duos CSV lacks (a given gflops_balance must agree with them)")
    parser.add_argument("--config", "--duo_csv_path", metavar="CSV", help="fit every (model_large, model_small) row")
    parser.add_argument("--predictions_dir", "--prediction_dir_path", default="./predictions", metavar="DIR",
                        help="with --config: folder of prediction files (default ./predictions)")
    parser.add_argument("--output_dir", default="./calibrated", help="folder of temperature_duo.csv")
    parser.add_argument("--dataset", "--dataset_name", help="accepted for compatibility with the official "
                        "command lines; the temperature file does not depend on it")
    parser.add_argument("--method", choices=calibrate_temperature.METHODS, default="exact",
                        help="exact: the NLL optimum (default); official: grid over T then LBFGS(lr=0.01)")
    parser.add_argument("--strict", action="store_true", help="with --config: fail on the first missing file")
    return parser


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    pair_given = args.large_model_pred or args.small_model_pred
    if bool(pair_given) == bool(args.config):
        raise UserError("give either --large_model_pred and --small_model_pred, or --config DUOS_CSV")
    cache = PredictionCache()
    if pair_given:
        if not (args.large_model_pred and args.small_model_pred):
            raise UserError("--large_model_pred and --small_model_pred go together")
        jobs = [(resolve_prediction_path(args.large_model_pred), resolve_prediction_path(args.small_model_pred))]
    else:
        duos = tables.read_duos(args.config, tables.read_backbones(args.backbone_csv))
        found, skipped = find_duo_files(duos, args.predictions_dir, args.strict)
        jobs = [(large, small) for _, large, small in found]
        if not jobs:
            raise UserError(f"--config: none of the duos in {args.config} has prediction files in {args.predictions_dir}")
    check_output_folder(args.output_dir, {Path(p).parent for job in jobs for p in job}, "--output_dir")
    outputs = safe_io.Outputs([p for job in jobs for p in job] + ([args.config] if args.config else []))
    tables.queue_duo_temperatures(outputs, args.output_dir, [])          # the table can take the rows: check it now
    rows = [duo_weights_row(cache.get(large), cache.get(small), args.method) for large, small in jobs]
    out = tables.queue_duo_temperatures(outputs, args.output_dir, rows)
    outputs.commit()
    for row in rows:
        print(f"{row['model_large']} + {row['model_small']}: w_large={row['weight_large']:.4f} "
              f"w_small={row['weight_small']:.4f} (T_large={row['temperature_large']:.4f}, "
              f"T_small={row['temperature_small']:.4f})  val NLL {row['val_nll']:.4f}  (n_val={row['n_val']})")
    print(f"wrote {len(rows)} row(s) to {out}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

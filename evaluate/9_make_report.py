"""Stage 9: REPORT.md with the paper's tables (1-4) and figures (1-7, 10) for one dataset, from the
results CSVs (plus temperatures for Fig. 10 and prediction files for the curves).

    python evaluate/9_make_report.py --results_dir ./results --calibrated_dir ./calibrated \
        --predictions_dir ./predictions --large ConvNeXt_Base

Each table and figure comes with a caption stating which duos, FLOPs window, baseline and spread it
shows; what the results cannot support is skipped with a one-line note. Tables use the paper's units.
Figures are written beside the report as <dataset>_fig*.png.
"""
from __future__ import annotations

import sys

from utils.cli import console
from utils.cli.parsing import ArgumentParser, UserError, non_negative_float, plain_name, run_main
from utils.files import safe_io
from utils.report import figures
from utils.report.build import build_report


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results_dir", default="./results", help="folder of the evaluation_*.csv files")
    parser.add_argument("--calibrated_dir", default="./calibrated", help="temperature CSVs (Fig. 10)")
    parser.add_argument("--predictions_dir", help="prediction files (risk-coverage and reliability curves)")
    parser.add_argument("--large", nargs="+", type=plain_name, metavar="NAME",
                        help="large models of the summary, Figs. 3-7 and the "
                        "curves (default: every large model of the duo results)")
    parser.add_argument("--base", type=plain_name,
                        help="base model of Tables 1-2 (default: the model of each deep ensemble in the results)")
    parser.add_argument("--table1_sidekicks", nargs="+", type=plain_name, metavar="NAME",
                        help="Table 1's sidekicks (default: every sidekick of the base; the paper shows MNASNet0_75 "
                             "ShuffleNet_V2_X2_0 EfficientNet_B2)")
    parser.add_argument("--balance", nargs=2, type=non_negative_float, default=[0.1, 0.2], metavar=("LO", "HI"),
                        help="Fig. 1's FLOPs balance range, inclusive")
    parser.add_argument("--laplace_balance", nargs=2, type=non_negative_float, default=[0.1, 0.3], metavar=("LO", "HI"),
                        help="Table 4's FLOPs balance range, exclusive")
    parser.add_argument("--radar_baseline", choices=("ts", "official"), default="ts",
                        help="Fig. 1's baseline: the temperature-scaled large model (the paper), or the official "
                             "notebook's average over its raw and temperature-scaled rows")
    parser.add_argument("--output", help="report path, a .md file (default <results_dir>/REPORT.md, or "
                        "REPORT_<dataset>.md with --dataset)")
    parser.add_argument("--dataset", "--dataset_name", help="the dataset to report on, when the results folder "
                        "holds several")
    return parser


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag, (lo, hi) in (("--balance", args.balance), ("--laplace_balance", args.laplace_balance)):
        if lo >= hi:
            raise UserError(f"{flag}: the range [{lo}, {hi}] is empty; give LO < HI (e.g. {flag} 0.1 0.2)")
    built = build_report(args)                   # everything is read and checked before the first figure is drawn
    outputs = safe_io.Outputs()
    for draw, path in built.report.figures:
        draw(lambda data, path=path: outputs.write_bytes(path, data, "figure"))
    outputs.write_text(built.path, "\n".join(built.report.lines) + "\n", "report")
    outputs.commit()
    console.show(figures.markdown_table(built.summary) if len(built.summary) else "no large model with duos")
    print(f"\nwrote {built.path} and {len(built.report.figures)} figure(s)"
          + (f"; skipped (see the report): {', '.join(built.report.skipped)}" if built.report.skipped else ""))
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Stage 9's report, built: the results folder read and checked (one dataset, files that belong together), missing
costs filled from any results file, and every section of REPORT.md laid out. The stage script only parses, calls
`build_report` and commits what it returns."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.errors import UserError
from utils.files import results as results_schema
from utils.files import safe_io
from utils.files.model_names import NameMap, check_plain_name
from utils.report import figures
from utils.report import paper_tables as pt
from utils.report.curves import add_curves
from utils.report.sections import (
    Report,
    add_baseline_bootstrap,
    add_bootstrap,
    add_cascades,
    add_figures,
    add_pareto,
    add_tables,
    summary_table,
)
from utils.report.shift import add_shift_sections, is_corruption
from utils.stages.calibration import Calibration, calibration_facts

REPORTED_TABLES = ("single_model", "duo", "deep_ensemble", "duo_delta", "cascade", "single_model_delta", "deep_ensemble_delta")
SHIFT_TABLES = ("shift_detection", "duo_shift_detection", "duo_shift_detection_delta")


def filled_duo_costs(frame: pd.DataFrame, costs: dict) -> dict:
    """gflops_large, gflops_small and gflops_balance of duo rows, with the members' costs that other results files
    state where these rows have none (stage 5 run without a cost that stage 4 had)."""
    large = frame["gflops_large"].astype(float).fillna(frame["model_large"].str.casefold().map(costs))
    small = frame["gflops_small"].astype(float).fillna(frame["model_small"].str.casefold().map(costs))
    return {"gflops_large": large, "gflops_small": small,
            "gflops_balance": frame["gflops_balance"].astype(float).fillna(small / large)}


def select_dataset(args, single, large_names) -> str:
    """--dataset, else the one dataset of the results (of the --large models when given)."""
    datasets = set(single.loc[single["model"].isin(large_names), "dataset"]) if large_names else set(single["dataset"])
    if args.dataset:
        if args.dataset not in datasets:
            raise UserError(f"--dataset: no results{' of ' + ', '.join(large_names) if large_names else ''} on "
                            f"{args.dataset} in {args.results_dir} (it has {sorted(datasets)})")
        return args.dataset
    if len(datasets) > 1:
        raise UserError(f"--dataset: {args.results_dir} holds results on {sorted(datasets)}; pass --dataset NAME "
                        f"(one report per dataset)")
    return next(iter(datasets))


@dataclass
class Built:
    """A report laid out: its sections, the figures to draw, where it goes, and the summary table."""
    report: Report
    path: Path
    summary: pd.DataFrame


def build_report(args) -> Built:
    """Read and check the results of `args.results_dir` and lay out every section (see the module's docstring)."""
    results = Path(args.results_dir)
    read = {table: results_schema.read_results(results, table) for table in REPORTED_TABLES + SHIFT_TABLES}
    single = read["single_model"]
    if single.empty:
        raise UserError(f"--results_dir: no single-model results (evaluation_single_model_*.csv with rows) in {results}; "
                        f"run stage 4 first")
    names = NameMap((name, True) for name in single["model"].astype(str))
    for name in args.large or []:
        if name not in names:
            raise UserError(f"--large: {name} has no rows in {results}/evaluation_single_model_*.csv")
    chosen = list(dict.fromkeys(names.spelling(name) for name in args.large or []))   # results' spelling, once each
    dataset = check_plain_name(select_dataset(args, single, chosen), f"{results}: dataset")
    read = {table: frame[frame["dataset"] == dataset] for table, frame in read.items()}
    large_models = chosen or sorted(set(read["duo"]["model_large"]))
    for name in large_models:
        check_plain_name(name, f"{results}: model name")
    out_path = Path(args.output or results / (f"REPORT_{dataset}.md" if args.dataset else "REPORT.md"))
    if out_path.is_dir():
        raise UserError(f"--output: {out_path} is a folder; give the report's file name (e.g. {out_path / 'REPORT.md'})")
    if out_path.suffix.lower() != ".md":        # never a results CSV, a temperature CSV or a figure
        raise UserError(f"--output: {out_path} is not a .md file; give the report's file name (e.g. REPORT.md)")
    for flag, folder in (("--predictions_dir", args.predictions_dir), ("--calibrated_dir", args.calibrated_dir)):
        if folder and args.predictions_dir and not Path(folder).is_dir():
            raise UserError(f"{flag}: folder {folder} not found (the curves need the prediction files and stage 2's "
                            f"temperatures)")
    calibration = Calibration(args.calibrated_dir)
    ratio_inputs = ((calibration.duos, calibration.singles) if calibration.duo_path.exists()
                    and calibration.single_path.exists() else None)
    # files computed from other predictions or temperatures of one model are refused; stale intervals left out
    found = pd.concat([results_schema.facts(read[table], table) for table in REPORTED_TABLES if not table.endswith("_delta")]
                      + [calibration_facts(calibration)], ignore_index=True)
    stages = {source: results_schema.stage_of(table) for table in REPORTED_TABLES for source in set(read[table]["source"])}
    stages.update({str(calibration.single_path): "evaluate/2_temp_scale.py",
                   str(calibration.duo_path): "evaluate/3_duo_temp_scale.py"})
    results_schema.check_agreement(found, stages)
    # the corruption splits have their own sections; every other section reads test and ood_test only
    corrupted = {table: read[table][is_corruption(read[table]["split"])] for table in ("single_model", "duo", "duo_delta")}
    read = {table: frame if table in SHIFT_TABLES else frame[~is_corruption(frame["split"])] for table, frame in read.items()}
    single, duos, ensembles, deltas, cascade, single_deltas, ensemble_deltas = (read[table] for table in REPORTED_TABLES)
    # a model's cost, wherever a results file states it (a duos CSV's costs reach stage 5's rows even where stage 4
    # had none): the single models of Fig. 2 and the Pareto front get it too
    costs = results_schema.known_costs(found)
    single = single.assign(gflops=single["gflops"].fillna(single["model"].str.casefold().map(costs)))
    duos, deltas = (frame.assign(**filled_duo_costs(frame, costs)) for frame in (duos, deltas))
    safe_io.Outputs().expect(out_path, "report")

    # everything is read and checked before the first figure is written
    report = Report(dataset, out_path.parent)
    summary = summary_table(single, duos, ensembles, large_models)
    report.lines += [f"# Asymmetric duos report: {dataset}", "", pt.UNITS_NOTE, ""]
    report.heading("Results (softmax-response uncertainty)")
    report.lines += [figures.markdown_table(summary) if len(summary) else "_no large model with duos_", ""]
    uncosted = duos[~np.isfinite(duos["gflops_balance"].astype(float))]
    if len(uncosted):
        pairs = sorted(set(zip(uncosted["model_large"], uncosted["model_small"])))
        report.lines += [f"_{len(pairs)} duo(s) have no known FLOPs cost ({', '.join(f'{a} + {b}' for a, b in pairs[:5])}"
                         f"{', …' if len(pairs) > 5 else ''}: a model is not in stage 5's backbone CSV); they appear in "
                         f"the results table only, not in the tables and figures by FLOPs balance._", ""]
    add_tables(report, args, single, duos, ensembles, names)
    deltas = add_bootstrap(report, deltas, duos, single, found)
    add_baseline_bootstrap(report, single_deltas, ensemble_deltas, single, ensembles, found)
    add_figures(report, args, single, duos, large_models, ratio_inputs, deltas)
    if not large_models:
        report.skip("Figs. 3-7, 10 and the curves", f"no duo results of {dataset} in {results} (run stage 5)")
    add_curves(report, args, duos, large_models, calibration, found)
    add_cascades(report, cascade, single, duos)
    add_pareto(report, single, duos, ensembles, cascade)
    add_shift_sections(report, corrupted["single_model"], corrupted["duo"], corrupted["duo_delta"],
                       *(read[table] for table in SHIFT_TABLES), large_models)
    return Built(report, out_path, summary)

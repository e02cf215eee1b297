"""Stage 9: REPORT.md with the paper's kind of tables and figures, from the results CSVs of any
dataset (the demo's or a real run's).

    python evaluate/9_make_report.py --results_dir ./results --calibrated_dir ./calibrated \
        --predictions_dir ./predictions --large ConvNeXt_Base

Figures (PNG beside REPORT.md): the Fig. 1-style radar, metric vs FLOPs balance per mode, risk-coverage
and reliability for the large model and its best duo, the weight ratio vs FLOPs balance. Tables: the
large model, every duo and mode, the baselines found (deep ensembles, IVON, Laplace, soups), duos vs
deep ensembles, and the FLOPs-bucketed AD[m, m+1) aggregation.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from utils.cli.parsing import ArgumentParser, UserError, run_main
from utils.files import safe_io, tables
from utils.files.model_names import NameMap
from utils.files.prediction_io import align, find_prediction_file, read_predictions
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import DuoTemperatures, duo_outputs
from utils.report import figures as report


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results_dir", default="./results", help="folder of the evaluation_*.csv files")
    parser.add_argument("--calibrated_dir", default="./calibrated", help="temperature CSVs (weight-ratio figure)")
    parser.add_argument("--predictions_dir", help="prediction files (risk-coverage and reliability curves)")
    parser.add_argument("--large", help="the large model to report on (default: the first in the duo results)")
    parser.add_argument("--balance", nargs=2, type=float, default=[0.1, 0.2], help="radar's FLOPs balance range")
    parser.add_argument("--output", help="report path (default <results_dir>/REPORT.md)")
    parser.add_argument("--dataset", "--dataset_name", help="the dataset to report on, when the results folder "
                        "holds the large model's results on several")
    return parser


def summary_table(single, duos, ensembles, large: str) -> pd.DataFrame:
    """The final screen: large model raw and TS, every duo x mode, and the baselines, softmax response."""
    sr_single = single[single["uncertainty_type"] == "softmax_response"]
    rows = []

    def add(label, frame, balance=np.nan):
        for split in ("test", "ood_test"):
            part = frame[frame["split"] == split]
            if len(part):
                rows.append({"method": label, "split": split, "FLOPs balance": balance,
                             **{m: part.iloc[0][m] for m in report.TABLE_METRICS}})

    add(f"{large} (raw)", sr_single[(sr_single["model"] == large) & (sr_single["wrapper"] == "None")], 0.0)
    add(f"{large} (temp-scaled)", sr_single[(sr_single["model"] == large) & (sr_single["wrapper"] == "TempScaleWrapper")], 0.0)
    sr_duos = duos[(duos["model_large"] == large) & (duos["uncertainty_type"] == "softmax_response")] if len(duos) else duos
    for (small, mode), group in (sr_duos.groupby(["model_small", "mode"], sort=False) if len(sr_duos) else []):
        add(f"duo + {small} [{mode}]", group, float(group["gflops_balance"].iloc[0]))
    if len(ensembles):
        de = ensembles[(ensembles["subset"].astype(str) == "mean") & (ensembles["uncertainty_type"] == "softmax_response")]
        for m, group in de.groupby("m"):
            add(f"deep ensemble m={m} (pool-then-calibrate, mean)", group, float(m) - 1.0)
    for suffix, label, wrapper in (("_ivon", "IVON (MC predictive)", "None"), ("_ivon_det", "IVON (mean weights)", "None"),
                                   ("_LA", "Laplace (last layer, kron)", "None"),
                                   ("_greedy", "greedy soup (temp-scaled)", "TempScaleWrapper"),
                                   ("_uniform", "uniform soup (temp-scaled)", "TempScaleWrapper")):
        add(label, sr_single[(sr_single["model"] == large + suffix) & (sr_single["wrapper"] == wrapper)], 0.0)
    return pd.DataFrame(rows)


def duo_vs_ensemble_table(single, duos, ensembles, large: str) -> pd.DataFrame:
    """Table 1/2 style: TS large, AD[m, m+1) buckets (mean ± std over duos), DE(m) (mean ± std over subsets)."""
    rows = []
    metrics = ["Acc", "Brier", "NLL", "ECE", "CP_AUROC", "AURC"]
    base = report.baseline_rows(single, large)
    for split in ("test", "ood_test"):
        for dataset in sorted(set(single["dataset"])):
            if (dataset, split) not in base.index:
                continue
            rows.append({"method": f"{large} (temp-scaled)", "split": split, "n": 1,
                         **{m: f"{base.loc[(dataset, split)][m]:.4f}" for m in metrics}})
        buckets = report.flops_buckets(duos, large) if len(duos) else pd.DataFrame()
        for bucket, group in (buckets[buckets["split"] == split].groupby("bucket") if len(buckets) else []):
            rows.append({"method": f"AD[{bucket},{bucket + 1})", "split": split, "n": len(group),
                         **{m: report.mean_and_spread(group[m]) for m in metrics}})
        if len(ensembles):
            per = ensembles[~ensembles["subset"].astype(str).isin(["mean", "std"])
                            & (ensembles["uncertainty_type"] == "softmax_response") & (ensembles["split"] == split)]
            for m, group in per.groupby("m"):
                rows.append({"method": f"DE(m={m})", "split": split, "n": len(group),
                             **{k: report.mean_and_spread(group[k]) for k in metrics}})
    return pd.DataFrame(rows)


def curves_for(predictions_dir, calibrated_dir, large: str, small: str | None):
    """Risk-coverage and reliability data of the TS large model and its asymmetric duo."""
    large_path = find_prediction_file(predictions_dir, large)
    if large_path is None:
        return None
    singles = tables.read_single_temperatures(Path(calibrated_dir) / tables.SINGLE_TEMPERATURE_FILE)
    weights = tables.read_duo_weights(Path(calibrated_dir) / tables.DUO_TEMPERATURE_FILE)
    large_set = read_predictions(large_path)
    small_path = find_prediction_file(predictions_dir, small) if small else None
    small_set = read_predictions(small_path) if small_path else None
    curves = {}
    for split in ("test", "ood_test"):
        if split not in large_set.splits:
            continue
        data = large_set.splits[split]
        entries = {}
        if large not in singles:
            raise UserError(f"{Path(calibrated_dir) / tables.SINGLE_TEMPERATURE_FILE}: no temperature for {large} (its "
                            f"curves are temperature-scaled); run evaluate/2_temp_scale.py")
        scaled = um.WeightedLogits([data.logits], [1.0 / singles[large]])
        stats = um.softmax_stats(scaled, with_entropy=False)
        correct = stats.argmax == data.labels
        entries[f"{large} (TS)"] = (*um.risk_coverage_curve(correct, um.softmax_response(scaled, stats)),
                                    um.reliability_bins(stats.confidence, correct))
        if small_set is not None and (large, small) in weights and split in small_set.splits:
            other = align(data, small_set.splits[split], large_set.source, small_set.source, split)
            out = duo_outputs(data.logits, other.logits, DuoTemperatures(1, 1, *weights[(large, small)]),
                              modes=["asymmetric"], uncertainty_types=["softmax_response"])["asymmetric"]
            correct_duo = out.predictions == data.labels
            entries[f"duo + {small}"] = (*um.risk_coverage_curve(correct_duo, out.uncertainty["softmax_response"]),
                                         um.reliability_bins(out.stats.confidence, correct_duo))
        curves[split] = entries
    return curves


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    results = Path(args.results_dir)
    single, duos = report.read_results(results, "single_model"), report.read_results(results, "duo")
    ensembles = report.read_results(results, "deep_ensemble")
    if single.empty:
        raise UserError(f"--results_dir: no evaluation_single_model_*.csv in {results}; run stage 4 first")
    large = args.large or (duos["model_large"].iloc[0] if len(duos) else single["model"].iloc[0])
    models = NameMap((name, True) for name in single["model"].astype(str))
    if large not in models:
        raise UserError(f"--large: {large} has no rows in {results}/evaluation_single_model_*.csv")
    large = models.spelling(large)                    # the results' spelling of the name given in any case
    # one results folder may hold several datasets: report those of the large model, and only its own
    # deep ensembles (another architecture's ensembles are not its baseline)
    datasets = set(single.loc[single["model"] == large, "dataset"])
    if args.dataset:
        if args.dataset not in datasets:
            raise UserError(f"--dataset: no results of {large} on {args.dataset} in {results} (it has {sorted(datasets)})")
        datasets = {args.dataset}
    elif len(datasets) > 1:
        raise UserError(f"--dataset: {results} holds {large}'s results on {sorted(datasets)}; pass --dataset NAME "
                        f"(one report per dataset)")
    single = single[single["dataset"].isin(datasets)]
    duos = duos[duos["dataset"].isin(datasets)] if len(duos) else duos
    if len(ensembles):
        ensembles = ensembles[ensembles["dataset"].isin(datasets)
                              & (ensembles["model"].astype(str).str.casefold() == large.casefold())]
    out_path = Path(args.output or results / "REPORT.md")
    if out_path.is_dir():
        raise UserError(f"--output: {out_path} is a folder; give the report's file name (e.g. {out_path / 'REPORT.md'})")
    folder = out_path.parent
    # everything is read and checked before the first figure is written
    curves, best = None, None
    duo_t = Path(args.calibrated_dir) / tables.DUO_TEMPERATURE_FILE
    single_t = Path(args.calibrated_dir) / tables.SINGLE_TEMPERATURE_FILE
    ratio_inputs = ((tables.read_duo_weights(duo_t), tables.read_single_temperatures(single_t))
                    if duo_t.exists() and single_t.exists() else None)
    if args.predictions_dir and len(duos):
        test_duos = duos[(duos["model_large"] == large) & (duos["mode"] == "asymmetric")
                         & (duos["uncertainty_type"] == "softmax_response") & (duos["split"] == "test")]
        best = test_duos.sort_values("NLL")["model_small"].iloc[0] if len(test_duos) else None
        curves = curves_for(args.predictions_dir, args.calibrated_dir, large, best)
    sections = [f"# Asymmetric duos report: {large} on {', '.join(sorted(set(single['dataset'])))}", ""]
    summary = summary_table(single, duos, ensembles, large)
    sections += ["## Results (softmax-response uncertainty; fractions)", "", report.markdown_table(summary), ""]
    costed = report.with_known_flops(duos)       # duos of models outside backbones.csv have no FLOPs balance
    if len(costed) and len(costed[costed["model_large"] == large]):
        note = report.radar_figure(costed, single, large, folder / "radar.png", tuple(args.balance))
        report.metric_vs_balance_figure(costed, single, large, folder / "metrics_vs_balance.png")
        sections += ["## Relative improvement over the temperature-scaled large model (Fig. 1 style)", "",
                     "![radar](radar.png)", "", f"Asymmetric duos, {note}; shading: ± std over sidekicks.", "",
                     "## Metrics against FLOPs balance (Figs. 2-6 style)", "", "![metrics](metrics_vs_balance.png)", ""]
        sections += ["## Duos vs deep ensembles (Tables 1-2 style; mean ± std)", "",
                     report.markdown_table(duo_vs_ensemble_table(single, costed, ensembles, large)), ""]
        if ratio_inputs is not None:
            balances = costed.drop_duplicates(["model_large", "model_small"]).set_index(
                ["model_large", "model_small"])["gflops_balance"]
            report.weight_ratio_figure(*ratio_inputs, balances, folder / "weight_ratio.png")
            sections += ["## Learned weight ratio vs FLOPs balance (Fig. 10 style)", "", "![ratio](weight_ratio.png)", ""]
    if curves:
        report.curves_figure(curves, folder / "curves.png", f"{large} (TS) and its best duo (+ {best}, by test NLL)")
        sections += ["## Risk-coverage and reliability", "", "![curves](curves.png)", ""]
    safe_io.write_text(out_path, "\n".join(sections) + "\n")
    print(report.markdown_table(summary))
    print(f"\nwrote {out_path} and its figures")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Stage 9: REPORT.md with the paper's tables (1-4) and figures (1-7, 10) for one dataset, from the
results CSVs (plus temperatures for Fig. 10 and prediction files for the curves).

    python evaluate/9_make_report.py --results_dir ./results --calibrated_dir ./calibrated \
        --predictions_dir ./predictions --large ConvNeXt_Base

Each table and figure comes with a caption stating which duos, FLOPs window, baseline and spread it
shows; what the results cannot support is skipped with a one-line note. Tables use the paper's units.
Figures are written beside the report as <dataset>_fig*.png.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from utils.cli import console
from utils.cli.parsing import ArgumentParser, UserError, non_negative_float, run_main, plain_name
from utils.files import results as results_schema
from utils.files import safe_io
from utils.files.model_names import NameMap, check_plain_name
from utils.files.prediction_io import aligned, find_prediction_file, read_predictions
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import DuoTemperatures, duo_outputs
from utils.report import figures, pareto
from utils.report import paper_tables as pt
from utils.stages.calibration import Calibration, calibration_facts

SPLITS = ("test", "ood_test")
DERIVED = re.compile(r"(?:_s\d+|_trial\d+|_greedy|_uniform|_ivon|_ivon_det|_ivon_mc\d+_r\d+|_LA)$")   # not backbones of their own


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results_dir", default="./results", help="folder of the evaluation_*.csv files")
    parser.add_argument("--calibrated_dir", default="./calibrated", help="temperature CSVs (Fig. 10)")
    parser.add_argument("--predictions_dir", help="prediction files (risk-coverage and reliability curves)")
    parser.add_argument("--large", nargs="+", type=plain_name, metavar="NAME", help="large models of the summary, Figs. 3-7 and the "
                        "curves (default: every large model of the duo results)")
    parser.add_argument("--base", type=plain_name, help="base model of Tables 1-2 (default: the model of each deep ensemble in the results)")
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


def summary_table(single, duos, ensembles, large_models) -> pd.DataFrame:
    """The final screen: each large model raw and TS, its duos in every mode, its baselines (IVON, Laplace,
    soups, deep ensembles); softmax response, paper units."""
    rows = []

    def add(label, frame, balance=""):
        for split in SPLITS:
            part = frame[frame["split"] == split]
            if len(part):
                rows.append({"method": label, "split": split, "FLOPs balance": balance,
                             **pt.metric_cells(part.iloc[:1], pt.SUMMARY_METRICS)})

    sr_duos = duos[duos["uncertainty_type"] == "softmax_response"] if len(duos) else duos
    for large in large_models:
        add(f"{large} (raw)", pt.single_rows(single, large, None, "None"), "0")
        add(f"{large} (temp-scaled)", pt.single_rows(single, large, None), "0")
        mine = sr_duos[sr_duos["model_large"] == large] if len(sr_duos) else sr_duos
        for (small, mode), group in (mine.groupby(["model_small", "mode"], sort=False) if len(mine) else []):
            balance = float(group["gflops_balance"].iloc[0])
            add(f"{large} + {small} [{mode}]", group, f"{balance:.3f}" if np.isfinite(balance) else "unknown")
        for suffix, label, wrapper in (("_ivon", "IVON (MC predictive)", "None"), ("_ivon_det", "IVON (mean weights)", "None"),
                                       ("_LA", "Laplace (last layer, kron)", "None"),
                                       ("_greedy", "greedy soup (temp-scaled)", "TempScaleWrapper"),
                                       ("_uniform", "uniform soup (temp-scaled)", "TempScaleWrapper")):
            add(f"{large} {label}", pt.single_rows(single, large + suffix, None, wrapper))
        if len(ensembles):
            de = ensembles[(ensembles["model"] == large) & (ensembles["subset"].astype(str) == "mean")
                           & (ensembles["uncertainty_type"] == "softmax_response")]
            for m, group in de.groupby("m"):
                add(f"deep ensemble m={m} (pool-then-calibrate, mean of subsets)", group, f"{float(m) - 1:g}")
    return pd.DataFrame(rows)


class Report:
    """The sections of REPORT.md, the figures to draw once everything has been read, and the notes."""

    def __init__(self, dataset: str, folder: Path):
        self.dataset, self.folder = dataset, folder
        self.lines: list[str] = []
        self.figures: list[tuple] = []
        self.skipped: list[str] = []

    def heading(self, text: str) -> None:
        self.lines += [f"## {text}", ""]

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(what)
        self.lines += [f"_{what} skipped: {why}._", ""]

    def table(self, title: str, caption: str, by_split: dict[str, pd.DataFrame], missing: str) -> None:
        shown = {split: frame for split, frame in by_split.items() if len(frame)}
        if not shown:
            self.skip(title, missing)
            return
        self.heading(title)
        self.lines += [caption, ""]
        for split, frame in shown.items():
            self.lines += [f"**{figures.SPLIT_LABEL.get(split, split)}**", "", figures.markdown_table(frame), ""]

    def figure(self, title: str, caption: str, name: str, draw) -> None:
        """`draw(path)` runs once every section has been read and checked."""
        file_name = f"{self.dataset}_{name}.png"
        self.heading(title)
        self.lines += [f"![{name}]({file_name})", "", caption, ""]
        self.figures.append((draw, self.folder / file_name))


def base_models(args, single, ensembles, names: NameMap) -> list[str]:
    if args.base:
        if args.base not in names:
            raise UserError(f"--base: {args.base} has no single-model results in {args.results_dir}")
        return [names.spelling(args.base)]
    return sorted(set(ensembles["model"])) if len(ensembles) else []


def add_tables(report: Report, args, single, duos, ensembles, names: NameMap) -> None:
    bases = base_models(args, single, ensembles, names)
    if not bases:
        report.skip("Tables 1-2 (duos vs deep ensembles)", "no deep-ensemble results (run stage 8) and no --base")
    for base in bases:
        checkpoints = pt.base_checkpoints(single, ensembles, base)
        paired = set(duos.loc[duos["model_large"].isin(checkpoints), "model_small"]) if len(duos) else set()
        unknown = [s for s in args.table1_sidekicks or [] if s.casefold() not in {p.casefold() for p in paired}]
        if unknown:
            raise UserError(f"--table1_sidekicks: {unknown} not paired with {base} in the duo results (its sidekicks: "
                            f"{', '.join(sorted(paired)) or 'none'})")
        report.table(
            f"Table 1: base-model-controlled duos vs deep ensembles ({base})",
            f"The temperature-scaled {base} (± over its {len(checkpoints)} checkpoint(s) with results: "
            f"{', '.join(checkpoints) or 'none'}); `[AD] {base}+S`: its asymmetric duos (softmax response) with each "
            f"sidekick S, ± over the base checkpoints paired with S; `[DE]`: pool-then-calibrate deep ensembles of m "
            f"{base} checkpoints, ± over the random subsets. Balance: the sidekick's FLOPs balance, (m − 1) × 100 for "
            f"DE(m). n: rows averaged; ±: sample std (ddof 1)."
            + (f" Sidekicks shown: {', '.join(args.table1_sidekicks)} (--table1_sidekicks)." if args.table1_sidekicks else "")
            + f" {pt.UNITS_NOTE}",
            {s: pt.table1(single, duos, ensembles, base, s, args.table1_sidekicks) for s in SPLITS},
            f"no results of {base} or its duos")
        gflops = pt.base_gflops(single, duos, base)
        if not gflops > 0:
            report.skip(f"Table 2 ({base})", f"{base}'s GFLOPs are unknown (add it to the backbone CSV of stage 4)")
            continue
        report.table(
            f"Table 2: FLOPs-controlled duos vs deep ensembles (reference {base}, {gflops:.3g} GFLOPs)",
            f"AD[m, m+1): asymmetric duos (softmax response) of every large model of {report.dataset} (soups left out: "
            f"they are Fig. 7's) whose total FLOPs "
            f"(large + sidekick) are in [m, m+1) × {base}'s, mean ± std over the n duos; DE(m): pool-then-calibrate "
            f"deep ensembles of m {base} checkpoints (± over subsets), placed after the AD bucket of at most the same "
            f"cost. ±: sample std (ddof 1). {pt.UNITS_NOTE}",
            {s: pt.table2(single, duos, ensembles, base, s) for s in SPLITS}, "no duos or ensembles")
    ivon = pt.ivon_models(single)
    if not ivon:
        report.skip("Table 3 (duos vs IVON)", "no <large>_ivon* results (run train/ivon_train.py, then stage 4)")
    for large in ivon:
        report.table(
            f"Table 3: duos vs IVON ({large})",
            f"{large} raw and temperature-scaled; IVON (deterministic): the posterior mean weights; IVON (S samples): "
            f"the Monte-Carlo predictive averaging S weight draws' probabilities, mean ± std over the repeated "
            f"draws (`ivon_train.py --predict_only --test_samples S --repeats R`); IVON rows are not temperature-scaled, "
            f"as in the paper; IVON (training run's samples): the predictive ivon_train.py wrote after training, with "
            f"its --test_samples draws. Asymmetric Duos [1,2): {large}'s asymmetric duos with total FLOPs in [1, 2) × "
            f"its own (FLOPs balance < 1), ± over duos{no_duos(duos, large, 0, 1)}. {pt.UNITS_NOTE}",
            {s: pt.table3(single, duos, large, s) for s in SPLITS}, "no rows")
    laplace = pt.laplace_models(single)
    if not laplace:
        report.skip("Table 4 (duos vs Laplace)", "no <large>_LA results (run evaluate/6_laplace.py, then stage 4)")
    lo, hi = args.laplace_balance
    for large in laplace:
        report.table(
            f"Table 4: duos vs Laplace ({large})",
            f"{large} raw (baseline), temperature-scaled, and with the last-layer Kronecker Laplace predictive (LA, "
            f"raw); Asymmetric Duos: {large}'s asymmetric duos with {lo} < FLOPs balance < {hi}, mean ± std over the "
            f"duos{no_duos(duos, large, lo, hi)}. {pt.UNITS_NOTE}",
            {s: pt.table4(single, duos, large, s, (lo, hi)) for s in SPLITS}, "no rows")


def no_duos(duos, large: str, lo: float, hi: float) -> str:
    """A caption's note when no asymmetric duo of `large` has a FLOPs balance strictly inside (lo, hi)."""
    chosen = pt.asymmetric_duos(duos)
    if len(chosen):
        balance = chosen["gflops_balance"].astype(float)
        if ((chosen["model_large"] == large) & (balance > lo) & (balance < hi)).any():
            return ""
    return f" (none of {large}'s duos has a FLOPs balance in ({lo:g}, {hi:g}): the row is missing)"


def add_bootstrap(report: Report, deltas, duos, single, found) -> pd.DataFrame:
    """The bootstrap section; returns the interval rows that are current (shown in the figures too): computed from
    the predictions and temperatures of the result rows (`found`: their facts), and still their difference."""
    if deltas.empty:
        report.skip("Paired bootstrap (is each gain real?)", f"no evaluation_duo_delta_{report.dataset}*.csv (run stage "
                    f"5 with --bootstrap 1000)")
        return deltas
    current = pt.current_deltas(deltas[results_schema.agreeing(deltas, "duo_delta", found)], duos, single)
    if len(current) < len(deltas):
        report.lines += [f"_{len(deltas) - len(current)} of {len(deltas)} paired-bootstrap row(s) are left out: their "
                         f"difference no longer matches the result rows (stage 4 or 5 reran without --bootstrap); "
                         f"rerun stage 5 with --bootstrap to renew them._", ""]
    deltas = current
    if deltas.empty:
        return deltas
    resamples = sorted(set(deltas["B"].astype(int)))
    report.table("Paired bootstrap: is each duo's gain real?",
                 f"Each asymmetric duo (softmax response) minus the temperature-scaled large model on the same test "
                 f"samples: the difference, and its 95% percentile interval over B = {', '.join(map(str, resamples))} "
                 f"paired resamples (`5_evaluate_duo_predictions.py --bootstrap B`); * = the interval excludes 0. Lower "
                 f"is better for NLL, ECE, AURC and Brier. {pt.UNITS_NOTE}",
                 {s: pt.bootstrap_table(deltas, s) for s in SPLITS}, "no asymmetric softmax-response rows")
    return deltas


def add_baseline_bootstrap(report: Report, single_deltas, ensemble_deltas, single, ensembles, found) -> None:
    """Stage 4's and stage 8's intervals: each baseline against its temperature-scaled base model (current as in
    `add_bootstrap`)."""
    title = "Paired bootstrap: baselines vs the temperature-scaled model"
    if single_deltas.empty and ensemble_deltas.empty:
        report.skip(title, "no evaluation_single_model_delta_ or evaluation_deep_ensemble_delta_ files (run stage 4 "
                           "or 8 with --bootstrap 1000)")
        return
    current = pt.current_baseline_deltas(
        single_deltas[results_schema.agreeing(single_deltas, "single_model_delta", found)],
        ensemble_deltas[results_schema.agreeing(ensemble_deltas, "deep_ensemble_delta", found)], single, ensembles)
    stale = len(single_deltas) + len(ensemble_deltas) - sum(map(len, current))
    if stale:
        report.lines += [f"_{stale} baseline interval row(s) are left out: their difference no longer matches the result "
                         f"rows (a stage reran without --bootstrap, or stage 8 fitted the base model's temperature "
                         f"with another --method than stage 2); rerun stages 4 and 8 with --bootstrap._", ""]
    resamples = sorted({int(b) for frame in current for b in frame["B"]})
    report.table(title, f"Each soup, IVON and Laplace predictive (stage 4) and each DE(m) (stage 8: the mean over "
                 f"its subsets, each resampled) minus its temperature-scaled base model on the same test samples, "
                 f"softmax response: the difference and its 95% percentile interval over B = "
                 f"{', '.join(map(str, resamples))} paired resamples; * = the interval excludes 0. {pt.UNITS_NOTE}",
                 {s: pt.baseline_bootstrap_table(*current, s) for s in SPLITS}, "no softmax-response interval rows")


def with_significance(group: pd.DataFrame, deltas: pd.DataFrame) -> pd.DataFrame:
    """Duo rows with a `sig:<metric>` column per metric: the bootstrap interval of the difference to the TS
    large model excludes 0 (NaN without an interval)."""
    if deltas.empty:
        return group
    found = deltas.assign(sig=pt.significance(deltas)).pivot_table(
        index=["model_large", "model_small", "mode", "uncertainty_type", "split"], columns="metric", values="sig",
        aggfunc="first")
    found.columns = [f"sig:{m}" for m in found.columns]
    return group.join(found, on=["model_large", "model_small", "mode", "uncertainty_type", "split"])


def add_radar(report: Report, args, single, duos) -> None:
    baselines = ("TempScaleWrapper",) if args.radar_baseline == "ts" else ("None", "TempScaleWrapper")
    lo, hi = args.balance
    polygons, counts = {}, []
    for split in SPLITS:
        values = pt.radar_values(single, duos, split, (lo, hi), baselines)
        if len(values):
            mean, _ = polygons[f"{report.dataset} {figures.SPLIT_LABEL[split]}"] = pt.radar_summary(values)
            undefined = [pt.COLUMN_LABEL.get(m, m) for m, v in zip(pt.RADAR_METRICS, mean) if not np.isfinite(v)]
            counts.append(f"{split}: {values[['model_large', 'model_small']].drop_duplicates().shape[0]} duo(s) of "
                          f"{values['model_large'].nunique()} large model(s) and {values['model_small'].nunique()} sidekick(s)"
                          + (f"; {', '.join(undefined)} undefined for every duo (all or no predictions correct), not "
                             f"drawn" if undefined else ""))
    if not polygons:
        report.skip("Fig. 1 (radar)", f"no asymmetric duo with FLOPs balance in [{lo}, {hi}] (see --balance)")
        return
    official = args.radar_baseline == "official"
    against = ("the large model, averaged over its raw and temperature-scaled rows (official notebook)" if official
               else "the temperature-scaled large model")
    spread = ("every (duo, baseline) pair: large model and sidekick, raw and temperature-scaled baseline" if official
              else "every large model and sidekick")
    report.figure("Fig. 1: relative improvement toward perfect", f"Asymmetric duos (softmax response) with FLOPs balance "
                  f"in [{lo}, {hi}], each against {against}: 100·(m − b)/(1 − b) for Acc, F1, AUROC, "
                  f"−100·(m − b)/b for AURC, Brier, NLL. Line: mean; shading: ± sample std over {spread} "
                  f"({'; '.join(counts)}).", "fig1_radar", lambda path: figures.radar_figure(
                      polygons, path, f"Relative improvement (%) over f_large ({'raw and TS' if official else 'TS'})\n"
                                      f"FLOPs balance in [{lo}, {hi}]"))


def add_figures(report: Report, args, single, duos, large_models, ratio_inputs, deltas) -> None:
    add_radar(report, args, single, duos)
    ts = single[(single["wrapper"] == "TempScaleWrapper") & (single["uncertainty_type"] == "softmax_response")]
    ts = ts[pd.to_numeric(ts["gflops"], errors="coerce").notna() & ~ts["model"].str.contains(DERIVED)]
    if len(ts):
        report.figure("Fig. 2: single models, accuracy against compute", "Every backbone's temperature-scaled accuracy "
                      "(test and shifted split) against its GFLOPs (derived models — seeds, soups, IVON, Laplace — left out); stars: "
                      "the large models of the duos.", "fig2_single_models", lambda path: figures.single_models_figure(
                          ts, large_models, path, f"{report.dataset}: single models (temp-scaled)"))
    else:
        report.skip("Fig. 2 (single models vs GFLOPs)", "no single model with known GFLOPs")
    sr = duos[duos["uncertainty_type"] == "softmax_response"] if len(duos) else duos
    costed = pt.asymmetric_duos(duos, soups=True)
    for large in large_models:
        mine = sr[(sr["model_large"] == large)] if len(sr) else sr
        mine = mine[pd.to_numeric(mine["gflops_balance"], errors="coerce").notna()] if len(mine) else mine
        if not len(mine):
            report.skip(f"Figs. 3-6 ({large})", f"no duos of {large} with a known FLOPs balance")
            continue
        series = {figures.MODE_STYLE.get(mode, ("", mode))[1]: with_significance(group, deltas)
                  for mode, group in mine.groupby("mode")}
        report.figure(f"Figs. 3-6: metrics against FLOPs balance ({large})", f"Every duo of {large} in every mode "
                      f"(softmax response), against the FLOPs balance; dashed: the temperature-scaled {large}"
                      + ("; hollow markers: the paired-bootstrap interval of the difference includes 0, filled: it "
                         "excludes 0" if len(deltas) else "") + f". Fig. 3 is "
                      f"Acc/F1 (Ours vs Unweighted), Fig. 4 AUROC (Ours vs UQ only), Fig. 5 AURC, Fig. 6 SAC@98. "
                      f"{pt.UNITS_NOTE}", f"fig3-6_{large}", lambda path, series=series, large=large: figures.metric_vs_balance_figure(
                          series, {f"{large} (TS)": pt.single_rows(single, large, None)}, path, f"{report.dataset}: duos of {large}"))
    soups = [name for name in sorted(set(costed["model_large"])) if name.endswith(pt.SOUP_SUFFIXES)] if len(costed) else []
    every_soup = soups
    if args.large:                                   # --large chooses Fig. 7's soups too
        soups = [name for name in soups if name in large_models or name.rsplit("_", 1)[0] in large_models]
    if not soups:
        report.skip("Fig. 7 (duos on a model soup)", f"no duos of a soup of {', '.join(large_models)} (--large); the "
                    f"results have {', '.join(every_soup)}" if every_soup else
                    "no duos whose large model is a soup (configs/make_duos.py --soups)")
    for soup in soups:
        regular = soup.rsplit("_", 1)[0]
        series = {f"duos on {soup}": costed[costed["model_large"] == soup],
                  f"duos on {regular}": costed[costed["model_large"] == regular]}
        report.figure(f"Fig. 7: duos on the soup {soup}", f"Asymmetric duos (softmax response) whose large model is the "
                      f"soup {soup}, next to those of {regular}; dashed/dotted: the temperature-scaled {regular} and "
                      f"{soup}. {pt.UNITS_NOTE}", f"fig7_{soup}", lambda path, series=series, soup=soup, regular=regular:
                      figures.metric_vs_balance_figure(
                          series, {f"{name} (TS)": pt.single_rows(single, name, None) for name in (regular, soup)},
                          path, f"{report.dataset}: duos on the soup {soup}", ("Acc", "CP_AUROC", "AURC", "SAC@99")))
    if ratio_inputs is None:
        report.skip("Fig. 10 (temperature ratios)", f"no temperature CSVs in {args.calibrated_dir}")
        return
    main = pt.asymmetric_duos(duos)                # soups are Fig. 7's
    balances = main.drop_duplicates(["model_large", "model_small"]).set_index(
        ["model_large", "model_small"])["gflops_balance"].astype(float) if len(main) else pd.Series(dtype=float)
    points = pt.temperature_ratios(*ratio_inputs, balances)
    if points.empty:
        report.skip("Fig. 10 (temperature ratios)", f"no duo of the results has both members' temperatures in "
                    f"{args.calibrated_dir}")
        return
    report.figure("Fig. 10: temperature ratios", "(T_l^single / T_l^duo) / (T_s^single / T_s^duo) per duo, with "
                  "T^duo = 1/(2w) from stage 3's weights and T^single from stage 2: how much more the duo trusts the "
                  "large model than the two members' own calibration would; 1 = no asymmetry beyond calibration.",
                  "fig10_temperature_ratio", lambda path: figures.temperature_ratio_figure(points, path))


def curves_for(predictions_dir, calibration: Calibration, large: str, small: str | None, found):
    """Risk-coverage and reliability data of the TS large model and its asymmetric duo, from the prediction files
    the result rows were computed from (`found`: their facts)."""
    large_path = find_prediction_file(predictions_dir, large)
    if large_path is None:
        return None
    large_set = read_predictions(large_path)
    small_path = find_prediction_file(predictions_dir, small) if small else None
    small_set = read_predictions(small_path) if small_path else None
    for pset in (large_set, small_set):
        if pset is not None:
            results_schema.check_predictions_against(found, pset, "the report's curves")
    curves = {}
    for split in SPLITS:
        if split not in large_set.splits:
            continue
        data = large_set.splits[split]
        entries = {}
        if large not in calibration.singles:
            raise UserError(f"{calibration.single_path}: no temperature for {large} (its curves are temperature-scaled); "
                            f"run evaluate/2_temp_scale.py")
        scaled = um.WeightedLogits([data.logits], [1.0 / calibration.temperature(large_set)])
        stats = um.softmax_stats(scaled, with_entropy=False)
        correct = stats.argmax == data.labels
        entries[f"{large} (TS)"] = (*um.risk_coverage_curve(correct, um.softmax_response(scaled, stats)),
                                    um.reliability_bins(stats.confidence, correct))
        if small_set is not None and (large, small) in calibration.duos and split in small_set.splits:
            other = aligned(large_set, small_set, split)
            out = duo_outputs(data.logits, other.logits, DuoTemperatures(1, 1, *calibration.weights(large_set, small_set)),
                              modes=["asymmetric"], uncertainty_types=["softmax_response"])["asymmetric"]
            correct_duo = out.predictions == data.labels
            entries[f"duo + {small}"] = (*um.risk_coverage_curve(correct_duo, out.uncertainty["softmax_response"]),
                                         um.reliability_bins(out.stats.confidence, correct_duo))
        curves[split] = entries
    return curves


def add_curves(report: Report, args, duos, large_models, calibration: Calibration, found) -> None:
    if not args.predictions_dir:
        report.skip("Risk-coverage and reliability curves", "no --predictions_dir")
        return
    for large in large_models:
        test_duos = duos[(duos["model_large"] == large) & (duos["mode"] == "asymmetric")
                         & (duos["uncertainty_type"] == "softmax_response") & (duos["split"] == "test")] if len(duos) else duos
        best = test_duos.sort_values("NLL")["model_small"].iloc[0] if len(test_duos) else None
        curves = curves_for(args.predictions_dir, calibration, large, best, found)
        if not curves:
            report.skip(f"Curves ({large})", f"no prediction file of {large} in {args.predictions_dir}")
            continue
        drawn = best is not None and any(f"duo + {best}" in entries for entries in curves.values())
        why = ("" if drawn or best is None else f" Its best duo (+ {best}, by test NLL) is not drawn: its prediction file "
               f"or stage 3's weights for it are missing.")
        report.figure(f"Risk-coverage and reliability ({large})", f"Selective risk against coverage, and reliability "
                      f"(15 equal-width bins), of the temperature-scaled {large}"
                      + (f" and its best asymmetric duo (+ {best}, by test NLL)." if drawn else ".") + why,
                      f"curves_{large}", lambda path, curves=curves, large=large, best=best, drawn=drawn:
                      figures.curves_figure(curves, path, f"{large} (TS)" + (f" and its best duo (+ {best})" if drawn else "")))


def add_cascades(report: Report, cascade, single, duos) -> None:
    """Stage 7's val-fitted budgets next to the temperature-scaled large model and the full duo."""
    title = "Cascades at val-fitted budgets (beyond the paper)"
    if cascade.empty or not (cascade["selection"] == "val_budget").any():
        report.skip(title, "no val_budget rows in evaluation_cascade_*.csv (run stage 7 with --budgets)")
        return
    by_split = {}
    for split in ("test", "ood_test"):
        rows = []
        chosen = cascade[(cascade["split"] == split) & (cascade["selection"] == "val_budget")
                         & (cascade["uncertainty_type"] == "softmax_response")]
        for (large, small), group in chosen.groupby(["model_large", "model_small"], sort=True):
            ts = pt.single_rows(single, large, split)
            duo = pt.asymmetric_duos(duos, split, soups=True) if len(duos) else duos
            duo = duo[(duo["model_large"] == large) & (duo["model_small"] == small)] if len(duo) else duo
            for label, part, cost in ((f"TS {large}", ts, group["gflops_large"].iloc[0]),
                                      (f"duo {large} + {small}", duo, group["gflops_large"].iloc[0]
                                       + group["gflops_small"].iloc[0])):
                if len(part):
                    rows.append({"option": label, "budget": "", "deferred %": "", "GFLOPs": f"{cost:.3g}",
                                 **pt.metric_cells(part, pt.SUMMARY_METRICS)})
            for row in group.sort_values(["order", "target"]).to_dict("records"):
                rows.append({"option": f"cascade {row['order'].replace('_', ' ')}", "budget": f"{row['target']:g}×",
                             "deferred %": f"{100 * row['deferred']:.1f}", "GFLOPs": f"{row['gflops_expected']:.3g}",
                             **pt.metric_cells(pd.DataFrame([row]), pt.SUMMARY_METRICS)})
        by_split[split] = pd.DataFrame(rows)
    report.table(title, "Stage 7: the first model runs on every input, the second only where the first's softmax "
                 "response exceeds a threshold fitted on val so that the expected cost is the budget × the large "
                 "model's GFLOPs; where both ran the answer is the duo's. GFLOPs: expected per image on this split "
                 "(the deferred share differs from val's under shift).", by_split, "")


def add_pareto(report: Report, single, duos, ensembles, cascade) -> None:
    """Metric vs GFLOPs for every option, the Pareto front drawn and tabled."""
    title = "Which option at which compute? (Pareto front, beyond the paper)"
    points = {split: pareto.candidates(single, duos, ensembles, cascade, split) for split in ("test", "ood_test")}
    points = {split: frame for split, frame in points.items() if len(frame) >= 2}
    if not points:
        report.skip(title, "fewer than two results with a known GFLOPs cost")
        return
    unknown = sum(frame.attrs.get("unknown_cost", 0) for frame in points.values())
    caption = ("Every single model (raw and TS), soup, IVON and Laplace predictive, asymmetric duo, DE(m) and cascade "
               "sweep (stage 7) as GFLOPs per image vs metric, softmax-response uncertainty; black: the Pareto front "
               "(no other option is cheaper and at least as good). Cascades: `L → S` runs the large model first and the sidekick "
               "on the deferred share, `L ← S` the sidekick first. Costs: see utils/report/pareto.py"
               + (f"; {unknown} result(s) without a known cost are left out" if unknown else "") + ".")
    report.figure(title, caption, "pareto",
                  lambda path: figures.pareto_figure(points, path, f"{report.dataset}: metric vs compute",
                                                     pareto.PARETO_METRICS))
    for split, frame in points.items():
        report.lines += [f"**Front, {figures.SPLIT_LABEL.get(split, split)}**", "",
                         figures.markdown_table(pareto.front_table(frame)), ""]


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


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag, (lo, hi) in (("--balance", args.balance), ("--laplace_balance", args.laplace_balance)):
        if lo >= hi:
            raise UserError(f"{flag}: the range [{lo}, {hi}] is empty; give LO < HI (e.g. {flag} 0.1 0.2)")
    results = Path(args.results_dir)
    kinds = ("single_model", "duo", "deep_ensemble", "duo_delta", "cascade", "single_model_delta", "deep_ensemble_delta")
    read = {kind: results_schema.read_results(results, kind) for kind in kinds}
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
    read = {kind: frame[frame["dataset"] == dataset] for kind, frame in read.items()}
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
    found = pd.concat([results_schema.facts(read[kind], kind) for kind in kinds if not kind.endswith("_delta")]
                      + [calibration_facts(calibration)], ignore_index=True)
    stages = {source: results_schema.stage_of(kind) for kind in kinds for source in set(read[kind]["source"])}
    stages.update({str(calibration.single_path): "evaluate/2_temp_scale.py",
                   str(calibration.duo_path): "evaluate/3_duo_temp_scale.py"})
    results_schema.check_agreement(found, stages)
    single, duos, ensembles, deltas, cascade, single_deltas, ensemble_deltas = (read[kind] for kind in kinds)
    # a model's cost, wherever a results file states it (a duos CSV's costs reach stage 5's rows even where stage 4
    # had none): the single models of Fig. 2 and the Pareto front get it too
    costs = results_schema.known_costs(found)
    single = single.assign(gflops=single["gflops"].fillna(single["model"].str.casefold().map(costs)))
    duos, deltas = (frame.assign(**filled_duo_costs(frame, costs)) for frame in (duos, deltas))
    outputs = safe_io.Outputs()
    outputs.expect(out_path, "report")

    # everything is read and checked before the first figure is written
    report = Report(dataset, out_path.parent)
    summary = summary_table(single, duos, ensembles, large_models)
    report.lines += [f"# Asymmetric duos report: {dataset}", "", pt.UNITS_NOTE, ""]
    report.heading("Results (softmax-response uncertainty)")
    report.lines += [figures.markdown_table(summary) if len(summary) else "_no large model with duos_", ""]
    uncosted = duos[~np.isfinite(duos["gflops_balance"].astype(float))] if len(duos) else duos
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
    for draw, path in report.figures:
        draw(lambda data, path=path: outputs.write_bytes(path, data, "figure"))
    outputs.write_text(out_path, "\n".join(report.lines) + "\n", "report")
    outputs.commit()
    console.show(figures.markdown_table(summary) if len(summary) else "no large model with duos")
    print(f"\nwrote {out_path} and {len(report.figures)} figure(s)"
          + (f"; skipped (see the report): {', '.join(report.skipped)}" if report.skipped else ""))
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

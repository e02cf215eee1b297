"""The sections of REPORT.md: the summary table, the paper's Tables 1-4, the bootstrap tables, the figures (drawn
once everything is read and checked), the cascades at their budgets and the Pareto front. Each section states what
it shows, or one note for what the results cannot support. `args` is stage 9's parsed command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils.errors import UserError
from utils.files import results as results_schema
from utils.files.model_names import DERIVED_SUFFIXES, NameMap
from utils.report import figures, pareto
from utils.report import paper_tables as pt

SPLITS = ("test", "ood_test")


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

    sr_duos = duos[duos["uncertainty_type"] == "softmax_response"]
    for large in large_models:
        add(f"{large} (raw)", pt.single_rows(single, large, None, "None"), "0")
        add(f"{large} (temp-scaled)", pt.single_rows(single, large, None), "0")
        mine = sr_duos[sr_duos["model_large"] == large]
        for (small, mode), group in mine.groupby(["model_small", "mode"], sort=False):
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
    return sorted(set(ensembles["model"]))


def add_tables(report: Report, args, single, duos, ensembles, names: NameMap) -> None:
    bases = base_models(args, single, ensembles, names)
    if not bases:
        report.skip("Tables 1-2 (duos vs deep ensembles)", "no deep-ensemble results (run stage 8) and no --base")
    for base in bases:
        checkpoints = pt.base_checkpoints(single, ensembles, base)
        paired = set(duos.loc[duos["model_large"].isin(checkpoints), "model_small"])
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
    ts = ts[pd.to_numeric(ts["gflops"], errors="coerce").notna() & ~ts["model"].str.contains(DERIVED_SUFFIXES)]
    if len(ts):
        report.figure("Fig. 2: single models, accuracy against compute", "Every backbone's temperature-scaled accuracy "
                      "(test and shifted split) against its GFLOPs (derived models — seeds, soups, IVON, Laplace — left "
                      "out); stars: the large models of the duos.", "fig2_single_models",
                      lambda path: figures.single_models_figure(ts, large_models, path,
                                                                f"{report.dataset}: single models (temp-scaled)"))
    else:
        report.skip("Fig. 2 (single models vs GFLOPs)", "no single model with known GFLOPs")
    sr = duos[duos["uncertainty_type"] == "softmax_response"]
    costed = pt.asymmetric_duos(duos, soups=True)
    for large in large_models:
        mine = sr[(sr["model_large"] == large)]
        mine = mine[pd.to_numeric(mine["gflops_balance"], errors="coerce").notna()]
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
                      f"{pt.UNITS_NOTE}", f"fig3-6_{large}",
                      lambda path, series=series, large=large: figures.metric_vs_balance_figure(
                          series, {f"{large} (TS)": pt.single_rows(single, large, None)}, path,
                          f"{report.dataset}: duos of {large}"))
    soups = [name for name in sorted(set(costed["model_large"])) if name.endswith(pt.SOUP_SUFFIXES)]
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
        ["model_large", "model_small"])["gflops_balance"].astype(float)
    points = pt.temperature_ratios(*ratio_inputs, balances)
    if points.empty:
        report.skip("Fig. 10 (temperature ratios)", f"no duo of the results has both members' temperatures in "
                    f"{args.calibrated_dir}")
        return
    report.figure("Fig. 10: temperature ratios", "(T_l^single / T_l^duo) / (T_s^single / T_s^duo) per duo, with "
                  "T^duo = 1/(2w) from stage 3's weights and T^single from stage 2: how much more the duo trusts the "
                  "large model than the two members' own calibration would; 1 = no asymmetry beyond calibration.",
                  "fig10_temperature_ratio", lambda path: figures.temperature_ratio_figure(points, path))


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
            duo = pt.asymmetric_duos(duos, split, soups=True)
            duo = duo[(duo["model_large"] == large) & (duo["model_small"] == small)]
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

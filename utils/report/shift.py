"""The report's "under shift" sections (beyond the paper): the asymmetric duo's gain over the temperature-scaled large
model against corruption severity, an mCE-style table, and how well each separates shifted from test inputs.

Conventions (docs/robustness.md): the gain is duo - TS large on the corrupted test split (softmax response), per
severity the mean over the corruptions present, with the mean of their 95 % paired-bootstrap bounds (each
corruption's interval comes from stage 5's --bootstrap; the mean of bounds is a summary, not an interval of the
mean). CE of a predictor on a corruption is its error summed over the severities divided by the TS large model's;
mCE is the mean over corruptions (the TS large model's is 100 by construction).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from utils.files.prediction_io import CORRUPTION_SPLIT
from utils.maths.shift_detection import DETECTION_COLUMNS
from utils.report.paper_tables import significance

CURVE_METRICS = ("NLL", "ECE", "Acc", "AURC")
UNCERTAINTY = "softmax_response"


def corruption_of(split: str) -> tuple[str, int]:
    name, _, severity = split[2:].rpartition("_")
    return name, int(severity)


def is_corruption(splits: pd.Series) -> np.ndarray:
    return splits.astype(str).map(lambda s: CORRUPTION_SPLIT.fullmatch(s) is not None).to_numpy(dtype=bool)


def severity_curve(deltas: pd.DataFrame, large: str, small: str, metric: str) -> pd.DataFrame:
    """Per severity: the mean over corruptions of the asymmetric duo's delta (duo - TS large) in `metric`, the means of
    the per-corruption interval bounds, and how many corruptions (and of them significant) were averaged."""
    chosen = deltas[(deltas["model_large"] == large) & (deltas["model_small"] == small) & (deltas["mode"] == "asymmetric")
                    & (deltas["uncertainty_type"] == UNCERTAINTY) & (deltas["metric"] == metric)
                    & is_corruption(deltas["split"])]
    chosen = chosen.assign(severity=[corruption_of(s)[1] for s in chosen["split"]],
                           excludes_zero=significance(chosen).astype(int))      # from the bounds, not a text cell
    curve = chosen.groupby("severity").agg(delta=("delta", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"),
                                           corruptions=("delta", "size"), significant=("excludes_zero", "sum"))
    return curve.reset_index()


def corruption_errors(single: pd.DataFrame, duos: pd.DataFrame, large: str) -> pd.DataFrame:
    """CE (%) per corruption and mCE of the TS large model (100) and each of its asymmetric duos (softmax response)."""
    ts = single[(single["model"] == large) & (single["wrapper"] == "TempScaleWrapper")
                & (single["uncertainty_type"] == UNCERTAINTY) & is_corruption(single["split"])]
    base = {split: 1.0 - acc for split, acc in zip(ts["split"], ts["Acc"])}
    rows = []
    options = [(f"TS {large}", base)]
    for small, group in duos[(duos["model_large"] == large) & (duos["mode"] == "asymmetric")
                             & (duos["uncertainty_type"] == UNCERTAINTY) & is_corruption(duos["split"])].groupby("model_small"):
        options.append((f"duo {large} + {small}", {s: 1.0 - a for s, a in zip(group["split"], group["Acc"])}))
    corruptions = sorted({corruption_of(s)[0] for s in base})
    for label, errors in options:
        row = {"option": label}
        for name in corruptions:
            splits = [s for s in base if corruption_of(s)[0] == name and s in errors]
            denominator = sum(base[s] for s in splits)
            row[name] = 100.0 * sum(errors[s] for s in splits) / denominator if denominator > 0 else float("nan")
        row["mCE"] = float(np.nanmean([row[name] for name in corruptions])) if corruptions else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).round(1) if len(base) else pd.DataFrame()


def detection_table(single_detection: pd.DataFrame, duo_detection: pd.DataFrame, detection_deltas: pd.DataFrame,
                    large: str) -> pd.DataFrame:
    """AUROC, AUPR and FPR95 (%) of the TS large model and its asymmetric duos (softmax response) against test, for
    ood_test and, per severity, the mean over the corruptions; * marks a duo significantly better than the TS large
    model on every averaged split, † significantly worse."""
    def group_of(split: str) -> str:
        return f"corruptions, severity {corruption_of(split)[1]}" if CORRUPTION_SPLIT.fullmatch(split) else split

    rows = []
    ts = single_detection[(single_detection["model"] == large) & (single_detection["wrapper"] == "TempScaleWrapper")
                          & (single_detection["uncertainty_type"] == UNCERTAINTY)]
    for shift, part in ts.groupby(ts["split"].map(group_of), sort=True):
        rows.append({"shift": shift, "option": f"TS {large}", **{m: f"{100 * part[m].mean():.1f}" for m in DETECTION_COLUMNS}})
    duos = duo_detection[(duo_detection["model_large"] == large) & (duo_detection["mode"] == "asymmetric")
                         & (duo_detection["uncertainty_type"] == UNCERTAINTY)]
    for (small, shift), part in duos.groupby([duos["model_small"], duos["split"].map(group_of)], sort=True):
        cells = {}
        for metric in DETECTION_COLUMNS:
            found = detection_deltas[(detection_deltas["model_large"] == large)
                                     & (detection_deltas["model_small"] == small)
                                     & (detection_deltas["mode"] == "asymmetric")
                                     & (detection_deltas["uncertainty_type"] == UNCERTAINTY)
                                     & (detection_deltas["metric"] == metric)
                                     & detection_deltas["split"].isin(part["split"])]
            mark = ""
            if len(found) == len(part) and len(found) and significance(found).all():
                better = (found["delta"] < 0) if metric == "FPR95" else (found["delta"] > 0)
                mark = "*" if better.all() else "†" if (~better).all() else ""
            cells[metric] = f"{100 * part[metric].mean():.1f}{mark}"
        rows.append({"shift": shift, "option": f"duo {large} + {small}", **cells})
    return pd.DataFrame(rows).sort_values(["shift", "option"], kind="stable") if rows else pd.DataFrame()


def add_shift_sections(report, single, duos, deltas, single_detection, duo_detection, detection_deltas,
                       large_models) -> None:
    """The severity curves (one figure per large model), the mCE table and the shift-detection table."""
    from utils.report.figures import severity_figure
    title = "Under corruption: the duo's gain against severity (beyond the paper)"
    if not is_corruption(duos["split"]).any():
        report.skip(title, "no corruption splits in the results (stage 1 --corruptions, then stages 4 and 5)")
    for large in large_models:
        smalls = sorted(set(duos.loc[(duos["model_large"] == large) & is_corruption(duos["split"]), "model_small"]))
        curves = {small: {m: severity_curve(deltas, large, small, m) for m in CURVE_METRICS} for small in smalls}
        curves = {small: found for small, found in curves.items() if any(len(c) for c in found.values())}
        if curves:
            report.figure(f"{title}: {large}", "Asymmetric duo − temperature-scaled large model (softmax response) on "
                          "the corrupted test split; each point is the mean over the corruptions at that severity, "
                          "bars the means of their 95 % paired-bootstrap bounds (stage 5 --bootstrap). Below 0 is "
                          "better for NLL, ECE and AURC, above 0 for Acc.", f"severity_{large}",
                          lambda path, curves=curves, large=large: severity_figure(curves, large, path))
        errors = corruption_errors(single, duos, large)
        if len(errors):
            report.heading(f"Corruption errors, relative to the TS large model (mCE-style): {large}")
            report.lines += ["CE (%): a predictor's test error summed over severities, divided by the temperature-"
                             "scaled large model's, per corruption; mCE: their mean.", "",
                             pt_markdown(errors), ""]
        table = detection_table(single_detection, duo_detection, detection_deltas, large)
        if len(table):
            report.heading(f"Shift detection: {large}")
            report.lines += ["How well the uncertainty (softmax response) separates the shifted split (positives) "
                             "from test: AUROC, AUPR and FPR at 95 % TPR, in %; for the corruptions, the mean over "
                             "corruptions at each severity. * the duo is better than the TS large model (higher AUROC and "
                             "AUPR, lower FPR95) and † worse, with a paired-bootstrap interval excluding 0 on every "
                             "split averaged.", "", pt_markdown(table), ""]


def pt_markdown(frame: pd.DataFrame) -> str:
    from utils.report.figures import markdown_table
    return markdown_table(frame, digits=1)


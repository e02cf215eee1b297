"""The paper's tables (1-4) and the numbers behind its figures (1, 10), from result rows alone.

Every function takes the result frames of one dataset (as `utils.files.results.read_results` returns them) and
returns plain frames; `9_make_report.py` writes them with their captions. Each spread is the sample
standard deviation (ddof = SPREAD_DDOF) over what the caption names: checkpoints, subsets, duos or
repeated sampling.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from utils.files.model_names import SOUP_SUFFIXES
from utils.maths.bootstrap import excludes_zero
from utils.maths.uncertainty_metrics import METRIC_COLUMNS, SPREAD_DDOF

# The paper's units: Acc, F1, ECE, AUROC and SAC in %; NLL and AURC x100; Brier x10^4 (it is the mean
# over all N*K entries, so x10^4 brings it to the paper's magnitudes).
PAPER_SCALE = {"Acc": 100, "F1": 100, "F1_present": 100, "ECE": 100, "CP_AUROC": 100, "NLL": 100, "AURC": 100,
               "E-AURC": 100, "AUGRC": 100, "Brier": 1e4, **{f"SAC@{t}": 100 for t in range(90, 100)}}
UNITS_NOTE = ("Units as in the paper: Acc, F1, ECE, AUROC and SAC in %; NLL and AURC ×100; Brier ×10⁴ "
              "(the mean over all N·K entries of (p − onehot)²).")
COLUMN_LABEL = {"CP_AUROC": "AUROC"}
HIGHER_BETTER = {"Acc", "F1", "CP_AUROC", "F1_present", *(f"SAC@{t}" for t in range(90, 100))}
TABLE12_METRICS = ["Acc", "Brier", "NLL", "ECE", "CP_AUROC", "AURC"]       # the paper's Tables 1-3
TABLE4_METRICS = ["Acc", "F1", "Brier", "NLL", "ECE", "CP_AUROC", "AURC", "SAC@98"]
SUMMARY_METRICS = ["Acc", "F1", "NLL", "ECE", "Brier", "CP_AUROC", "AURC", "SAC@98"]   # the report's first table
RADAR_METRICS = ["Acc", "F1", "CP_AUROC", "AURC", "Brier", "NLL"]           # the paper's Fig. 1
SUMMARY_STATISTICS = ("mean", "std")                  # stage 8's summary rows, not subsets
IVON_SAMPLES = re.compile(r"_ivon_mc(\d+)_r(\d+)$")


def in_paper_units(value: float, metric: str) -> float:
    return float(value) * PAPER_SCALE.get(metric, 1)


def cell(values, metric: str, digits: int = 2) -> str:
    """'mean ± std' in the paper's units (the mean alone for one value, which has no spread)."""
    scaled = np.array([in_paper_units(v, metric) for v in values], dtype=float)
    scaled = scaled[np.isfinite(scaled)]           # CP_AUROC alone may be undefined (all or none correct)
    if len(scaled) == 0:
        return "—"
    if len(scaled) <= SPREAD_DDOF:
        return f"{scaled.mean():.{digits}f}"
    return f"{scaled.mean():.{digits}f} ± {scaled.std(ddof=SPREAD_DDOF):.{digits}f}"


def metric_cells(rows: pd.DataFrame, metrics) -> dict[str, str]:
    return {COLUMN_LABEL.get(m, m): cell(rows[m], m) for m in metrics}


def relative_improvement(value: float, base: float, metric: str) -> float:
    """Improvement toward the perfect score, in percent (the paper's Fig. 1; docs/reproduction.md)."""
    if metric in HIGHER_BETTER:
        return 100.0 * (value - base) / (1.0 - base) if base != 1 else math.nan
    return -100.0 * (value - base) / base if base != 0 else math.nan


# ----------------------------------------------------------------------------- row selections

def single_rows(single: pd.DataFrame, models, split: str | None, wrapper: str = "TempScaleWrapper",
                uncertainty: str = "softmax_response") -> pd.DataFrame:
    """The rows of one model (or several), raw ("None") or temperature-scaled, of one split (None: both)."""
    wanted = {str(m) for m in ([models] if isinstance(models, str) else models)}
    chosen = single[single["model"].isin(wanted) & (single["wrapper"] == wrapper) & (single["uncertainty_type"] == uncertainty)]
    return chosen if split is None else chosen[chosen["split"] == split]


def asymmetric_duos(duos: pd.DataFrame, split: str | None = None, soups: bool = False) -> pd.DataFrame:
    """The paper's method: asymmetric mode, softmax-response uncertainty, with a known FLOPs cost; duos
    whose large model is a soup only with `soups` (they are Fig. 7's, not the pooled tables')."""
    chosen = duos[(duos["mode"] == "asymmetric") & (duos["uncertainty_type"] == "softmax_response")]
    if not soups:
        chosen = chosen[~chosen["model_large"].str.endswith(SOUP_SUFFIXES)]
    if split is not None:
        chosen = chosen[chosen["split"] == split]
    costs = chosen[["gflops_large", "gflops_small", "gflops_balance"]].apply(pd.to_numeric, errors="coerce")
    return chosen[np.isfinite(costs).all(axis=1).to_numpy()]


def ensemble_subsets(ensembles: pd.DataFrame, model: str, split: str) -> pd.DataFrame:
    """Stage 8's per-subset rows of one ensemble name (its mean/std summary rows left out)."""
    if ensembles.empty:
        return ensembles
    return ensembles[(ensembles["model"] == model) & ~ensembles["subset"].astype(str).isin(SUMMARY_STATISTICS)
                     & (ensembles["uncertainty_type"] == "softmax_response") & (ensembles["split"] == split)]


def ensemble_members(ensembles: pd.DataFrame, model: str) -> list[str]:
    """The checkpoints stage 8 drew the ensembles of `model` from, in order of first appearance."""
    if ensembles.empty:
        return []
    names: dict[str, None] = {}
    rows = ensembles[(ensembles["model"] == model) & ~ensembles["subset"].astype(str).isin(SUMMARY_STATISTICS)]
    for label in rows["members"].astype(str):
        for name in label.split("+"):
            if name and name != "nan":
                names.setdefault(name, None)
    return list(names)


def base_checkpoints(single: pd.DataFrame, ensembles: pd.DataFrame, base: str) -> list[str]:
    """The base model and the ensemble's members that have single-model results of their own. A member whose
    results are the base's throughout is the base under another name (an ensemble of the FT trials, as the
    official code builds it, holds the selected trial), not a second checkpoint."""
    known = set(single["model"])
    names = [name for name in dict.fromkeys([base, *ensemble_members(ensembles, base)]) if name in known]
    keys = [column for column in ("wrapper", "uncertainty_type", "split") if column in single]
    metrics = [column for column in METRIC_COLUMNS if column in single]

    def results(name: str) -> pd.DataFrame:
        rows = single[single["model"] == name]
        return rows.set_index(keys)[metrics].sort_index() if keys else rows[metrics]

    if base not in names:
        return names
    own = results(base)
    return [base] + [name for name in names[1:] if not results(name).equals(own)]


def base_gflops(single: pd.DataFrame, duos: pd.DataFrame, base: str) -> float:
    """The base model's GFLOPs: its single-model rows, else its duos' gflops_large; NaN when unknown."""
    values = pd.to_numeric(single.loc[single["model"] == base, "gflops"], errors="coerce")
    if not duos.empty:
        values = pd.concat([values, pd.to_numeric(duos.loc[duos["model_large"] == base, "gflops_large"], errors="coerce")])
    values = values[np.isfinite(values)]
    return float(values.iloc[0]) if len(values) else math.nan


# ----------------------------------------------------------------------------- Tables 1-4

def _row(method: str, rows: pd.DataFrame, metrics, **extra) -> dict:
    return {"Method": method, **extra, "n": len(rows), **metric_cells(rows, metrics)}


def _ensemble_rows(ensembles: pd.DataFrame, base: str, split: str, flops_label) -> dict[int, dict]:
    subsets = ensemble_subsets(ensembles, base, split)
    return {int(m): _row(f"[DE] {base} (m={int(m)})", group, TABLE12_METRICS, **flops_label(int(m)))
            for m, group in subsets.groupby(subsets["m"].astype(int))} if len(subsets) else {}


def table1(single, duos, ensembles, base: str, split: str, sidekicks=None) -> pd.DataFrame:
    """Base-model-controlled (paper Table 1): the temperature-scaled base over its checkpoints, its
    asymmetric duos per sidekick (± over base checkpoints), and DE(m) of the base (± over subsets)."""
    checkpoints = base_checkpoints(single, ensembles, base)
    rows = []
    base_rows = single_rows(single, checkpoints, split)
    if len(base_rows):
        rows.append(_row(f"{base} (temp-scaled)", base_rows, TABLE12_METRICS, **{"Balance (%)": "0"}))
    chosen = asymmetric_duos(duos, split)
    chosen = chosen[chosen["model_large"].isin(checkpoints)]
    if sidekicks:
        wanted = {s.casefold() for s in sidekicks}
        chosen = chosen[chosen["model_small"].str.casefold().isin(wanted)]
    order = chosen.groupby("model_small")["gflops_balance"].mean().sort_values()
    for small, balance in order.items():
        group = chosen[chosen["model_small"] == small]
        rows.append(_row(f"[AD] {base}+{small}", group, TABLE12_METRICS, **{"Balance (%)": f"{100 * balance:.0f}"}))
    for _, row in sorted(_ensemble_rows(ensembles, base, split, lambda m: {"Balance (%)": f"{100 * (m - 1)}"}).items()):
        rows.append(row)
    return pd.DataFrame(rows)


def flops_buckets(duos: pd.DataFrame, reference_gflops: float) -> pd.DataFrame:
    """AD[m, m+1): asymmetric duos of every large model, by total FLOPs in units of the reference's."""
    rows = asymmetric_duos(duos).copy()
    total = rows["gflops_large"].astype(float) + rows["gflops_small"].astype(float)
    rows["bucket"] = np.floor(total / reference_gflops + 1e-9).astype(int)       # 2 x 4.1 lands in [2, 3)
    return rows


def table2(single, duos, ensembles, base: str, split: str) -> pd.DataFrame:
    """FLOPs-controlled (paper Table 2): AD[m, m+1) pools the asymmetric duos of every large model whose
    total FLOPs are in [m, m+1) x the base's (± over duos), next to DE(m+1) of the base (± over subsets)."""
    gflops = base_gflops(single, duos, base)
    rows = []
    base_rows = single_rows(single, base_checkpoints(single, ensembles, base), split)
    if len(base_rows):
        rows.append(_row(f"{base} (temp-scaled)", base_rows, TABLE12_METRICS, **{"FLOPs (G)": f"{gflops:.3g}"}))
    buckets = flops_buckets(duos, gflops)
    buckets = buckets[buckets["split"] == split]
    ad = {int(b) + 1: _row(f"AD[{int(b)},{int(b) + 1})", group, TABLE12_METRICS,
                           **{"FLOPs (G)": f"[{b * gflops:.3g},{(b + 1) * gflops:.3g})"})
          for b, group in buckets.groupby("bucket")}
    de = _ensemble_rows(ensembles, base, split, lambda m: {"FLOPs (G)": f"{m * gflops:.3g}"})
    for m in sorted(set(ad) | set(de)):
        rows += [table[m] for table in (ad, de) if m in table]
    return pd.DataFrame(rows)


def ivon_runs(single: pd.DataFrame, large: str) -> dict[int, list[str]]:
    """{samples: [the <large>_ivon_mc<S>_r<r> model names]} of the repeated Monte-Carlo predictions."""
    runs: dict[int, list[str]] = {}
    for name in sorted(set(single["model"])):
        match = IVON_SAMPLES.search(name)
        if match and name[: match.start()] == large:
            runs.setdefault(int(match.group(1)), []).append(name)
    return dict(sorted(runs.items()))


def ivon_models(single: pd.DataFrame) -> list[str]:
    """The large models with IVON results (<large>_ivon, _ivon_det or _ivon_mc<S>_r<r>)."""
    found = set()
    for name in set(single["model"]):
        for pattern in (IVON_SAMPLES, re.compile(r"_ivon(_det)?$")):
            match = pattern.search(name)
            if match:
                found.add(name[: match.start()])
    return sorted(found & set(single["model"]))


def table3(single, duos, large: str, split: str) -> pd.DataFrame:
    """AD vs IVON (paper Table 3): the large model raw and temperature-scaled, IVON's mean-weights and
    Monte-Carlo predictives (raw, as the paper; ± over repeated sampling), and the asymmetric duos of
    the large model with total FLOPs in [1, 2) x its own (± over duos)."""
    rows = []
    for label, models, wrapper in ((f"Baseline {large}", [large], "None"),
                                   (f"Temp-scaled {large}", [large], "TempScaleWrapper"),
                                   ("IVON (deterministic)", [f"{large}_ivon_det"], "None"),
                                   ("IVON (training run's samples)", [f"{large}_ivon"], "None"),
                                   *((f"IVON ({s} samples)", names, "None")
                                     for s, names in ivon_runs(single, large).items())):
        chosen = single_rows(single, models, split, wrapper)
        if len(chosen):
            rows.append(_row(label, chosen, TABLE12_METRICS))
    chosen = asymmetric_duos(duos, split)
    chosen = chosen[(chosen["model_large"] == large) & (chosen["gflops_balance"].astype(float) < 1)]
    if len(chosen):
        rows.append(_row("Asymmetric Duos [1,2)", chosen, TABLE12_METRICS))
    return pd.DataFrame(rows)


def laplace_models(single: pd.DataFrame) -> list[str]:
    return sorted({name[:-3] for name in set(single["model"]) if name.endswith("_LA")} & set(single["model"]))


def table4(single, duos, large: str, split: str, window=(0.1, 0.3)) -> pd.DataFrame:
    """AD vs Laplace (paper Table 4): the large model raw, temperature-scaled and with the last-layer
    Laplace predictive (raw), and its asymmetric duos with window[0] < FLOPs balance < window[1]."""
    rows = []
    for label, model, wrapper in ((f"{large} baseline", large, "None"), (f"{large} temp-scaled", large, "TempScaleWrapper"),
                                  (f"{large} LA", f"{large}_LA", "None")):
        chosen = single_rows(single, model, split, wrapper)
        if len(chosen):
            rows.append(_row(label, chosen, TABLE4_METRICS))
    chosen = asymmetric_duos(duos, split)
    balance = chosen["gflops_balance"].astype(float)
    chosen = chosen[(chosen["model_large"] == large) & (balance > window[0]) & (balance < window[1])]
    if len(chosen):
        rows.append(_row("Asymmetric Duos", chosen, TABLE4_METRICS))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Figs. 1 and 10

def radar_values(single, duos, split: str, balance=(0.1, 0.2), baselines=("TempScaleWrapper",),
                 metrics=RADAR_METRICS) -> pd.DataFrame:
    """Relative improvement of every asymmetric duo (any large model, any sidekick) with FLOPs balance
    in [balance[0], balance[1]] over its own large model's baseline rows: one row per (duo, baseline).
    The paper uses the temperature-scaled baseline; its notebook also averages in the raw one
    (baselines=("None", "TempScaleWrapper"))."""
    chosen = asymmetric_duos(duos, split)
    values = chosen["gflops_balance"].astype(float)
    chosen = chosen[(values >= balance[0]) & (values <= balance[1])]
    rows = []
    for _, duo in chosen.iterrows():
        for wrapper in baselines:
            base = single_rows(single, duo["model_large"], split, wrapper)
            if len(base):
                rows.append({"model_large": duo["model_large"], "model_small": duo["model_small"], "baseline": wrapper,
                             **{m: relative_improvement(duo[m], base.iloc[0][m], m) for m in metrics}})
    return pd.DataFrame(rows, columns=["model_large", "model_small", "baseline", *metrics])


def radar_summary(values: pd.DataFrame, metrics=RADAR_METRICS) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis mean and sample std (zero for a single duo) of `radar_values`."""
    data = values[list(metrics)].to_numpy(dtype=float)
    finite = np.isfinite(data)
    count = finite.sum(axis=0)
    total = np.where(finite, data, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.full(len(metrics), np.nan), where=count > 0)   # NaN where undefined for all
    squares = np.where(finite, (data - mean) ** 2, 0.0).sum(axis=0)
    std = np.divide(squares, count - SPREAD_DDOF, out=np.zeros(len(metrics)), where=count > SPREAD_DDOF) ** 0.5
    return mean, np.where(count > 0, std, np.nan)


def temperature_ratios(weights: dict, singles: dict, balances: pd.Series) -> pd.DataFrame:
    """Fig. 10's quantity per duo: (T_l^single / T_l^duo) / (T_s^single / T_s^duo), with T^duo = 1 / (2 w),
    i.e. (w_l T_l^single) / (w_s T_s^single); duos that reverted to the large model (w_s = 0) have none.
    `weights` and `singles` as utils/files/tables reads them (values recorded with their provenance)."""
    rows = []
    for (large, small), recorded in weights.items():
        w_large, w_small = recorded.value
        if (large, small) not in balances.index or large not in singles or small not in singles:
            continue
        ratio = (math.inf if w_small == 0 else (w_large * singles[large].value) / (w_small * singles[small].value))
        rows.append({"model_large": large, "model_small": small, "gflops_balance": float(balances.loc[(large, small)]),
                     "ratio": ratio})
    return pd.DataFrame(rows, columns=["model_large", "model_small", "gflops_balance", "ratio"])


# ----------------------------------------------------------------------------- paired bootstrap (stage 5 --bootstrap)

def _whole_groups_current(merged: pd.DataFrame, expected: pd.Series, keys: list[str]) -> np.ndarray:
    """Which interval rows to keep: those of a predictor (`keys`) whose every metric's `delta` still equals the
    result rows' difference; one stale metric (a rerun, another temperature) makes the whole predictor stale."""
    same = np.isclose(merged["delta"], expected, rtol=1e-9, atol=1e-12) | (merged["delta"].isna() & expected.isna())
    return same.groupby([merged[k] for k in keys], sort=False, dropna=False).transform("all").to_numpy()


def current_deltas(deltas: pd.DataFrame, duos: pd.DataFrame, single: pd.DataFrame) -> pd.DataFrame:
    """The interval rows whose `delta` still equals the duo row minus the temperature-scaled large model's row
    (same uncertainty type; kl_disagreement against the softmax response): a rerun of stage 4 or 5 without
    --bootstrap (new temperatures, new predictions) leaves older intervals behind, which must not be shown."""
    if deltas.empty or duos.empty:
        return deltas.iloc[:0]
    keys = ["model_large", "model_small", "mode", "uncertainty_type", "split"]
    duo_long = duos.melt(id_vars=keys, value_vars=list(METRIC_COLUMNS), var_name="metric", value_name="duo_value")
    ts = single[single["wrapper"] == "TempScaleWrapper"].melt(
        id_vars=["model", "uncertainty_type", "split"], value_vars=list(METRIC_COLUMNS), var_name="metric",
        value_name="base_value").rename(columns={"model": "model_large", "uncertainty_type": "base_type"})
    merged = deltas.assign(base_type=deltas["uncertainty_type"].where(
        deltas["uncertainty_type"].isin(["softmax_response", "entropy"]), "softmax_response"))
    merged = merged.merge(duo_long, on=[*keys, "metric"], how="left").merge(
        ts, on=["model_large", "base_type", "split", "metric"], how="left")
    return deltas[_whole_groups_current(merged, merged["duo_value"] - merged["base_value"], keys)]


def significance(deltas: pd.DataFrame) -> pd.Series:
    """Whether each interval excludes 0 (from the bounds, whatever a hand-edited 'significant' cell says)."""
    return pd.Series(excludes_zero(deltas["ci_low"], deltas["ci_high"]), index=deltas.index)


def delta_cell(row, metric: str) -> str:
    """'Δ [low, high]' in the paper's units, starred when the interval excludes 0."""
    values = [in_paper_units(row[c], metric) for c in ("delta", "ci_low", "ci_high")]
    if not np.isfinite(values).all():
        return "—"
    star = "*" if excludes_zero(row["ci_low"], row["ci_high"]) else ""
    shown = ".2f" if max(abs(v) for v in values) >= 0.005 else ".2g"      # tiny differences keep their digits
    return f"{values[0]:+{shown}} [{values[1]:+{shown}}, {values[2]:+{shown}}]{star}"


def nll_verdict(by_metric: pd.DataFrame) -> str:
    """Whether the NLL interval (rows indexed by metric) says lower, higher or no significant difference."""
    if "NLL" not in by_metric.index:
        return "—"
    nll = by_metric.loc["NLL"]
    if not excludes_zero(nll["ci_low"], nll["ci_high"]):
        return "no significant difference"
    return "lower (significant)" if nll["ci_high"] < 0 else "higher (significant)"


def bootstrap_table(deltas: pd.DataFrame, split: str, metrics=("Acc", "NLL", "ECE", "CP_AUROC", "AURC", "Brier"),
                    mode: str = "asymmetric") -> pd.DataFrame:
    """One row per duo of `mode` (softmax response): each metric's difference to the temperature-scaled large
    model with its interval; an NLL column saying in words whether the NLL gain is real."""
    chosen = deltas[(deltas["mode"] == mode) & (deltas["uncertainty_type"] == "softmax_response")
                    & (deltas["split"] == split)].sort_values(["model_large", "gflops_balance", "model_small"], kind="stable")
    rows = []
    for (large, small), group in chosen.groupby(["model_large", "model_small"], sort=False):
        by_metric = group.set_index("metric")
        verdict = nll_verdict(by_metric)
        balance = float(group["gflops_balance"].iloc[0])
        rows.append({"Duo": f"{large} + {small}", "FLOPs balance": f"{balance:.3f}" if np.isfinite(balance) else "unknown",
                     **{COLUMN_LABEL.get(m, m): delta_cell(by_metric.loc[m], m) if m in by_metric.index else "—"
                        for m in metrics},
                     "NLL vs TS f_large": verdict, "B": int(group["B"].iloc[0])})
    return pd.DataFrame(rows)


def _long(frame: pd.DataFrame, keys: list[str], name: str) -> pd.DataFrame:
    return frame.melt(id_vars=keys, value_vars=list(METRIC_COLUMNS), var_name="metric", value_name=name)


def current_baseline_deltas(single_deltas: pd.DataFrame, ensemble_deltas: pd.DataFrame, single: pd.DataFrame,
                            ensembles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stage-4 and stage-8 interval rows whose `delta` still equals the result rows' difference (the baseline's
    row, or DE(m)'s mean over its subsets, minus the base model's temperature-scaled row), as `current_deltas`."""
    ts = _long(single[single["wrapper"] == "TempScaleWrapper"], ["model", "uncertainty_type", "split"], "base_value")
    ts = ts.rename(columns={"model": "base"})
    kept = []
    for deltas, results, keys in ((single_deltas, single, ["model", "wrapper", "uncertainty_type", "split"]),
                                  (ensemble_deltas, ensembles, ["model", "m", "uncertainty_type", "split"])):
        if deltas.empty or results.empty:
            kept.append(deltas.iloc[:0] if len(deltas.columns) else pd.DataFrame(columns=["B"]))
            continue
        if "subset" in results.columns:           # DE(m): the mean over stage 8's subsets, not its summary rows
            results = results[~results["subset"].isin(SUMMARY_STATISTICS)].groupby(keys, as_index=False)[
                list(METRIC_COLUMNS)].mean()
        merged = deltas.merge(_long(results, keys, "value"), on=[*keys, "metric"], how="left").merge(
            ts, on=["base", "uncertainty_type", "split", "metric"], how="left")
        kept.append(deltas[_whole_groups_current(merged, merged["value"] - merged["base_value"], keys)])
    return kept[0], kept[1]


def baseline_bootstrap_table(single_deltas: pd.DataFrame, ensemble_deltas: pd.DataFrame, split: str,
                             metrics=("Acc", "NLL", "ECE", "CP_AUROC", "AURC", "Brier")) -> pd.DataFrame:
    """One row per baseline (softmax response): each metric's difference to its temperature-scaled base model with
    the interval, and the NLL verdict in words."""
    rows, parts = [], []
    if len(single_deltas):
        chosen = single_deltas[(single_deltas["split"] == split) & (single_deltas["uncertainty_type"] == "softmax_response")]
        for (model, wrapper, base), group in chosen.groupby(["model", "wrapper", "base"], sort=True):
            parts.append((f"{model}{' (TS)' if wrapper == 'TempScaleWrapper' else ' (raw)'}", base, group))
    if len(ensemble_deltas):
        chosen = ensemble_deltas[(ensemble_deltas["split"] == split)
                                 & (ensemble_deltas["uncertainty_type"] == "softmax_response")]
        for (model, m, base), group in chosen.groupby(["model", "m", "base"], sort=True):
            parts.append((f"DE({m}) {model}, mean of {int(group['subsets'].iloc[0])} subset(s)", base, group))
    for label, base, group in parts:
        by_metric = group.set_index("metric")
        verdict = nll_verdict(by_metric)
        rows.append({"Baseline": label, "vs TS": base,
                     **{COLUMN_LABEL.get(m, m): delta_cell(by_metric.loc[m], m) if m in by_metric.index else "—"
                        for m in metrics},
                     "NLL vs TS": verdict, "B": int(group["B"].iloc[0])})
    return pd.DataFrame(rows)

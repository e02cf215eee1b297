"""Which option is best at a given compute: every evaluated predictor as a (GFLOPs per image, metric) point,
and the Pareto front of those points (numbers only; the figure is drawn in `figures`).

Costs: a single model (raw, temperature-scaled, a soup, IVON's mean-weights predictor) costs its backbone's
GFLOPs; IVON with S Monte-Carlo samples S times that; last-layer Laplace about the backbone's (one feature pass,
the last layer's sampling is negligible at these sizes); a duo gflops_large + gflops_small; DE(m) m times its
base model's; a cascade its expected GFLOPs. Every point uses the softmax-response uncertainty.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from utils.files.model_names import SOUP_SUFFIXES
from utils.report import paper_tables

PARETO_METRICS = ("Acc", "NLL", "ECE", "CP_AUROC", "AURC")
FAMILIES = ("single (raw)", "single (TS)", "soup (TS)", "IVON", "Laplace", "deep ensemble (TS)",
            "duo (asymmetric)", "cascade (large first)", "cascade (small first)")
_UNCERTAINTY = "softmax_response"


def _single_family(name: str, wrapper: str) -> tuple[str, str, float]:
    """(family, base model, cost multiple of the base) of a single-model results row."""
    match = paper_tables.IVON_SAMPLES.search(name)
    if match:
        return "IVON", name[: match.start()], float(match.group(1))
    for suffix, family in (("_ivon_det", "IVON"), ("_LA", "Laplace")):
        if name.endswith(suffix):
            return family, name[: -len(suffix)], 1.0
    if name.endswith("_ivon"):                      # the training run's own samples: their number is not recorded
        return "IVON", name[:-5], math.nan
    if name.lower().endswith(SOUP_SUFFIXES):
        return ("soup (TS)" if wrapper == "TempScaleWrapper" else "soup (raw)"), name, 1.0
    return ("single (TS)" if wrapper == "TempScaleWrapper" else "single (raw)"), name, 1.0


def candidates(single: pd.DataFrame, duos: pd.DataFrame, ensembles: pd.DataFrame, cascade: pd.DataFrame,
               split: str) -> pd.DataFrame:
    """One row per predictor of `split`: label, family, gflops and every metric column. Points whose cost is
    unknown are left out (`unknown_cost` counts them in `frame.attrs`)."""
    metrics = [m for m in paper_tables.PAPER_SCALE if m in single.columns]
    rows, unknown = [], 0

    def add(label: str, family: str, gflops: float, values) -> None:
        nonlocal unknown
        if not (isinstance(gflops, float) and math.isfinite(gflops) and gflops > 0):
            unknown += 1
            return
        rows.append({"label": label, "family": family, "gflops": gflops, **{m: float(values[m]) for m in metrics}})

    if len(single):
        chosen = single[(single["split"] == split) & (single["uncertainty_type"] == _UNCERTAINTY)]
        for row in chosen.to_dict("records"):
            family, base, multiple = _single_family(row["model"], row["wrapper"])
            if family in ("IVON", "Laplace") and row["wrapper"] != "None":
                continue                              # the baselines are reported raw, as the paper does
            own = float(row["gflops"]) if family.startswith(("single", "soup")) else math.nan
            cost = own if math.isfinite(own) else multiple * paper_tables.base_gflops(single, duos, base)
            wrapper = " (TS)" if row["wrapper"] == "TempScaleWrapper" else ""
            add(f"{row['model']}{wrapper}", family, cost, row)
    if len(duos):
        for row in paper_tables.asymmetric_duos(duos, split, soups=True).to_dict("records"):
            add(f"{row['model_large']} + {row['model_small']}", "duo (asymmetric)",
                float(row["gflops_large"]) + float(row["gflops_small"]), row)
    if len(ensembles):
        chosen = ensembles[(ensembles["split"] == split) & (ensembles["uncertainty_type"] == _UNCERTAINTY)
                           & ~ensembles["subset"].isin(paper_tables.SUMMARY_STATISTICS)]
        for (model, m), subsets in chosen.groupby(["model", "m"], sort=True):      # the mean over stage 8's subsets
            add(f"DE({m}) {model}", "deep ensemble (TS)", m * paper_tables.base_gflops(single, duos, model),
                subsets[metrics].mean())
    if len(cascade):
        # the sweep's ends (nothing or everything deferred) are the first model alone and the duo: shown as such
        chosen = cascade[(cascade["split"] == split) & (cascade["uncertainty_type"] == _UNCERTAINTY)
                         & (cascade["selection"] == "sweep") & (cascade["deferred"] > 0) & (cascade["deferred"] < 1)]
        for row in chosen.to_dict("records"):
            arrow = "→" if row["order"] == "large_first" else "←"
            add(f"{row['model_large']} {arrow} {row['model_small']} ({100 * row['deferred']:.0f}% deferred)",
                f"cascade ({row['order'].replace('_', ' ')})", float(row["gflops_expected"]), row)
    frame = pd.DataFrame(rows, columns=["label", "family", "gflops", *metrics])
    frame.attrs["unknown_cost"] = unknown
    return frame


def pareto_front(cost, value, higher_better: bool) -> np.ndarray:
    """Which points no other point dominates (no more cost, no worse value, strictly better in one); NaN values
    are never on the front."""
    cost = np.asarray(cost, dtype=float)
    value = np.asarray(value, dtype=float)
    good = value if higher_better else -value
    defined = np.isfinite(good) & np.isfinite(cost)
    no_more_cost = cost[:, None] <= cost[None, :]             # [j, i]: j costs no more than i
    no_worse = good[:, None] >= good[None, :]
    strictly = (cost[:, None] < cost[None, :]) | (good[:, None] > good[None, :])
    dominated = (no_more_cost & no_worse & strictly & defined[:, None]).any(axis=0)
    return defined & ~dominated


def front(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The front of one metric, cheapest first."""
    if points.empty:
        return points
    mask = pareto_front(points["gflops"], points[metric], metric in paper_tables.HIGHER_BETTER)
    return points[mask].sort_values(["gflops", metric], ascending=[True, metric not in paper_tables.HIGHER_BETTER])


def front_table(points: pd.DataFrame, metrics=PARETO_METRICS, shown: int = 12) -> pd.DataFrame:
    """One row per metric: its front as 'label (GFLOPs: value)' from the cheapest option to the best one; options
    with the same cost and value are one step ('A = B'), and a front of more than `shown` steps keeps both ends."""
    rows = []
    for metric in metrics:
        chosen = front(points, metric)
        steps = [f"{' = '.join(group['label'])} ({cost:.3g}: {paper_tables.in_paper_units(value, metric):.2f})"
                 for (cost, value), group in chosen.groupby(["gflops", metric], sort=False)]
        if len(steps) > shown:
            steps = steps[: shown // 2] + [f"… {len(steps) - shown} more …"] + steps[-(shown // 2):]
        share = chosen["family"].value_counts()
        rows.append({"metric": paper_tables.COLUMN_LABEL.get(metric, metric), "points on the front": len(chosen),
                     "families": ", ".join(f"{family} {count}" for family, count in share.items()),
                     "front (GFLOPs: value), cheapest first": " → ".join(steps)})
    return pd.DataFrame(rows)

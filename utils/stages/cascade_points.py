"""Cascades of a duo's members as result rows (stage 7): the first model on every input, the second (and so the
duo's answer) only where the first's uncertainty exceeds tau; a sweep of thresholds and thresholds fitted on val
for cost budgets. The per-threshold arithmetic lives in utils/maths/cascades.py."""
from __future__ import annotations

from dataclasses import dataclass

from utils.errors import warn
from utils.files.prediction_io import PredictionSet, aligned
from utils.maths import cascades
from utils.maths.duo_modes import DuoTemperatures, duo_outputs
from utils.stages.intervals import mode_terms, scaled_terms


def split_terms(logits_large, logits_small, labels, temps: DuoTemperatures, uncertainty_types) -> dict:
    """{"large"|"small"|"duo": {uncertainty type: SampleTerms}} of one split: each member temperature-scaled, and
    the asymmetric duo."""
    duo = duo_outputs(logits_large, logits_small, temps, ["asymmetric"], uncertainty_types)["asymmetric"]
    return {"large": scaled_terms(logits_large, labels, temps.single_large, uncertainty_types),
            "small": scaled_terms(logits_small, labels, temps.single_small, uncertainty_types),
            "duo": mode_terms(duo, labels)}


@dataclass
class CascadePlan:
    """Which cascades of a pair to evaluate: orders, uncertainty types, sweep steps and cost budgets."""
    orders: list[str]
    uncertainty_types: list[str]
    steps: int
    budgets: list[float]


def budget_thresholds(large: PredictionSet, small: PredictionSet, temps: DuoTemperatures, gflops: dict,
                      plan: CascadePlan) -> dict:
    """(order, uncertainty type) -> [("val_budget", B, tau)]: for each budget B, the tau that defers on the val split
    the share of inputs an expected cost of B x gflops_large pays for. A budget outside what the cascade can cost
    (below the first model alone, at or above the whole duo) is warned about."""
    if not plan.budgets:
        return {}
    val_large = large.split("val", "to fit the cascade thresholds of --budgets")
    val_small = aligned(large, small, "val", "to fit the cascade thresholds of --budgets")
    kinds = plan.uncertainty_types
    val = {"large": scaled_terms(val_large.logits, val_large.labels, temps.single_large, kinds),
           "small": scaled_terms(val_small.logits, val_large.labels, temps.single_small, kinds)}
    full = (gflops["large"] + gflops["small"]) / gflops["large"]
    taus = {}
    for order in plan.orders:
        first, second = ("large", "small") if order == "large_first" else ("small", "large")
        lowest = gflops[first] / gflops["large"]
        for budget in plan.budgets:
            where = f"--budgets {budget:g}: {large.model} + {small.model} {order}"
            if budget < lowest:
                warn(f"{where}: below the first model's own cost ({lowest:.3g}x {large.model}'s GFLOPs), so the "
                     f"cascade defers nothing and costs that")
            elif budget >= full:
                warn(f"{where}: at or above the whole duo's cost ({full:.4g}x {large.model}'s GFLOPs; FLOPs balance "
                     f"{gflops['small'] / gflops['large']:.3g}), so the cascade defers every input and is the duo; for "
                     f"{order} budgets between {lowest:.4g} and {full:.4g} make sense")
        for uncertainty in kinds:
            taus[(order, uncertainty)] = []
            for budget in plan.budgets:
                fraction = cascades.budget_fraction(budget, gflops["large"], gflops[first], gflops[second])
                tau = cascades.threshold_for_fraction(val[first][uncertainty].uncertainty, fraction)
                taus[(order, uncertainty)].append(("val_budget", budget, tau))
    return taus


def cascade_rows(terms: dict, taus: dict, gflops: dict, plan: CascadePlan) -> list[dict]:
    """One row per order, uncertainty type and threshold (the sweep's, then the budgets'): every metric, the share
    deferred and the expected GFLOPs (plus order, uncertainty_type, selection, target, tau)."""
    rows = []
    for order in plan.orders:
        first = "large" if order == "large_first" else "small"
        for uncertainty in plan.uncertainty_types:
            sweep = [("sweep", fraction, tau) for fraction, tau in
                     cascades.sweep_thresholds(terms[first][uncertainty].uncertainty, plan.steps)]
            for selection, target, tau in sweep + taus.get((order, uncertainty), []):
                metrics, deferred = cascades.cascade_point(terms[first][uncertainty], terms["duo"][uncertainty], tau)
                cost = cascades.expected_gflops(order, gflops["large"], gflops["small"], deferred)
                rows.append({**metrics, "order": order, "uncertainty_type": uncertainty, "selection": selection,
                             "target": target, "tau": tau, "deferred": deferred, "gflops_expected": cost})
    return rows

"""What each duo mode means (docs/methods.md, "Duo modes"): member logits + temperatures -> p, prediction, uncertainty.

The single definition used online by `DuoWrapper` and offline by stage 5. With large logits l,
small logits s, stage-2 temperatures T^single and stage-3 duo weights w (z_duo = w_l l + w_s s):

| mode            | p                                   | prediction | softmax-response uncertainty |
| unweighted      | softmax((l + s) / 2)                | argmax p   | 1 - max p                    |
| unweighted_ts   | softmax((l/T_l + s/T_s) / 2), single| argmax p   | 1 - max p                    |
| uqonly          | softmax(z_duo)                      | argmax l   | 1 - p[argmax l]              |
| asymmetric      | softmax(z_duo)  (the paper)         | argmax p   | 1 - max p                    |
| asymmetric_code | softmax(z_duo)  (official script)   | argmax p   | 1 - p[argmax l]              |

A mode whose weights are all 0 (both temperatures inf) gives uniform p and the large model's prediction.
Every mode also reports `entropy` = H(p) and `kl_disagreement` = its softmax-response uncertainty
+ 0.1 * KL(p_s || p_l), with p_l, p_s the members' probabilities under the mode's own scaling
(1 for unweighted, 1/T^single for unweighted_ts, 1/T^duo = 2w for the duo modes).

`combine="probs"` averages the members' probabilities instead of their logits. For unweighted and
unweighted_ts it is the usual ensemble average of the scaled members, p = (softmax(a_l l) + softmax(a_s s)) / 2.
For the duo modes the fitted weights keep their meaning as a mixture: writing them as a sharpness c = w_l + w_s
and shares pi = w / c (so that z_duo = c (pi_l l + pi_s s) is the logit form), the probability form is
p = pi_l softmax(c l) + pi_s softmax(c s). A weight of 0 removes its member (w_s = 0 gives softmax(w_l l),
exactly the logit form), and w = (0.5, 0.5) gives the plain average. The prediction and uncertainty rules of
the table are unchanged; the kl_disagreement term keeps the logit form's member scalings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from utils.maths import uncertainty_metrics as um

MODES = ("unweighted", "unweighted_ts", "uqonly", "asymmetric", "asymmetric_code")
_COMBINATION = {"unweighted": "raw", "unweighted_ts": "single", "uqonly": "duo",
                "asymmetric": "duo", "asymmetric_code": "duo"}
_PREDICT_WITH_LARGE = {"uqonly"}
_UNCERTAINTY_AT_LARGE = {"uqonly", "asymmetric_code"}
COMBINE = ("logits", "probs")         # average the members' scaled logits (the paper) or their probabilities


@dataclass(frozen=True)
class DuoTemperatures:
    """Single-model temperatures (stage 2) and duo weights (stage 3; w = 1 / (2 T^duo))."""
    single_large: float = 1.0
    single_small: float = 1.0
    weight_large: float = 0.5
    weight_small: float = 0.5


def weight_to_temperature(weight: float, members: int = 2) -> float:
    """Duo weight w -> the official divisive temperature T with w = 1/(members * T); w = 0 -> inf."""
    return math.inf if weight <= 0 else 1.0 / (members * weight)


def temperature_to_weight(temperature: float, members: int = 2) -> float:
    return 0.0 if math.isinf(temperature) else 1.0 / (members * temperature)


@dataclass
class ModeOutput:
    logits: um.WeightedLogits           # z with p = softmax(z)
    stats: um.SoftmaxStats
    predictions: np.ndarray
    uncertainty: dict[str, np.ndarray]  # by uncertainty type


def member_scales(mode: str, temps: DuoTemperatures) -> tuple[float, float]:
    """Per-member multipliers defining the mode's scaled member logits; z averages them."""
    kind = _COMBINATION[mode]
    if kind == "raw":
        return 1.0, 1.0
    if kind == "single":
        return 1.0 / temps.single_large, 1.0 / temps.single_small
    return 2.0 * temps.weight_large, 2.0 * temps.weight_small


def mixture(mode: str, temps: DuoTemperatures) -> tuple[tuple[float, float], tuple[float, float]]:
    """The probability form of a mode (combine="probs"): (each member's logit scale, each member's share of the
    average). The duo modes: the common sharpness c = w_l + w_s and the shares w / c (see the module's docstring);
    both weights 0 give uniform p."""
    if _COMBINATION[mode] != "duo":
        return member_scales(mode, temps), (0.5, 0.5)
    total = temps.weight_large + temps.weight_small
    if total == 0:
        return (0.0, 0.0), (0.5, 0.5)
    return (total, total), (temps.weight_large / total, temps.weight_small / total)


def combined_logits(logits_large, logits_small, mode: str, temps: DuoTemperatures,
                    combine: str = "logits") -> um.WeightedLogits | um.ProbabilityMixture:
    """z with p = softmax(z): the scaled members' logit average, or the log of their probability mixture."""
    if combine == "probs":
        scales, shares = mixture(mode, temps)
        return um.ProbabilityMixture([logits_large, logits_small], scales, shares)
    scale_large, scale_small = member_scales(mode, temps)
    if combine != "logits":
        raise ValueError(f"unknown combine '{combine}'; choose from {', '.join(COMBINE)}")
    return um.WeightedLogits([logits_large, logits_small], [scale_large / 2.0, scale_small / 2.0])


def duo_outputs(logits_large, logits_small, temps: DuoTemperatures, modes=MODES,
                uncertainty_types=um.UNCERTAINTY_TYPES, large_normalizers: dict | None = None,
                combine: str = "logits") -> dict[str, ModeOutput]:
    """Evaluate several modes at once, computing each distinct probability vector only once.

    `large_normalizers` ({scale: logsumexp rows of scale * logits_large}), kept by a caller that pairs one
    large model with many sidekicks, spares the KL one pass per duo in the modes whose large-model scaling
    does not depend on the sidekick (unweighted, unweighted_ts)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown duo mode(s) {unknown}; choose from {', '.join(MODES)}")
    large, small = um.as_weighted(logits_large).members[0], um.as_weighted(logits_small).members[0]
    large_argmax = np.argmax(large, axis=1)
    cache: dict[str, tuple] = {}
    outputs = {}
    for mode in modes:
        kind = _COMBINATION[mode]
        if kind not in cache:
            z = combined_logits(large, small, mode, temps, combine)
            cache[kind] = (z, um.softmax_stats(z), {})
        z, stats, kl_cache = cache[kind]
        # all weights 0 (both temperatures inf: uniform beat both members on val): p is uniform and the
        # prediction is the large model's, as a single model at T = inf keeps its own
        degenerate = not any(member_scales(mode, temps))
        predictions = large_argmax if mode in _PREDICT_WITH_LARGE or degenerate else stats.argmax
        at = large_argmax if mode in _UNCERTAINTY_AT_LARGE else None
        response = um.softmax_response(z, stats, at=at)
        uncertainty = {}
        for kind_u in uncertainty_types:
            if kind_u == "softmax_response":
                uncertainty[kind_u] = response
            elif kind_u == "entropy":
                uncertainty[kind_u] = um.entropy(stats)
            elif kind_u == "kl_disagreement":
                if "kl" not in kl_cache:
                    scale_large, scale_small = member_scales(mode, temps)
                    scaled_large = um.WeightedLogits([large], [scale_large])
                    normalizer = None
                    if large_normalizers is not None and kind != "duo":
                        if scale_large not in large_normalizers:
                            large_normalizers[scale_large] = um.log_normalizer(scaled_large)
                        normalizer = large_normalizers[scale_large]
                    kl_cache["kl"] = um.kl_divergence(um.WeightedLogits([small], [scale_small]), scaled_large,
                                                      normalizer)
                uncertainty[kind_u] = um.kl_disagreement(response, kl_cache["kl"])
            else:
                raise ValueError(f"unknown uncertainty type '{kind_u}'; choose from {um.UNCERTAINTY_TYPES}")
        outputs[mode] = ModeOutput(logits=z, stats=stats, predictions=predictions, uncertainty=uncertainty)
    return outputs

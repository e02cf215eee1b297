"""Model soups (Wortsman et al. 2022): uniform and greedy weight averaging of fine-tuning trials."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

State = dict[str, torch.Tensor]


def running_mean(mean: State | None, state: State, count: int) -> State:
    """mean of `count` states from the mean of the first count-1 and the count-th; integer buffers
    (e.g. BatchNorm's num_batches_tracked) are kept from the first state."""
    if mean is None:
        return {k: v.detach().clone().to(torch.float64) if v.is_floating_point() else v.clone() for k, v in state.items()}
    out = {}
    for key, value in mean.items():
        out[key] = value + (state[key].to(torch.float64) - value) / count if value.is_floating_point() else value
    return out


def cast_like(mean: State, reference: State) -> State:
    return {k: v.to(reference[k].dtype) for k, v in mean.items()}


def uniform_soup(states: Iterable[State]) -> tuple[State, int]:
    """The arithmetic mean of all states, accumulated one at a time (never all in memory)."""
    mean, count, first = None, 0, None
    for state in states:
        count += 1
        first = first or state
        mean = running_mean(mean, state, count)
    if count == 0:
        raise ValueError("no ingredients")
    return cast_like(mean, first), count


def greedy_soup(states_by_rank: Iterable[State], evaluate: Callable[[State], float]) -> tuple[State, list[int], list[float]]:
    """Ingredients sorted best first; each is added only if the held-out metric strictly improves.

    Returns the soup, the positions of the ingredients used, and the metric after each step.
    """
    states = iter(states_by_rank)
    first = next(states)
    mean = running_mean(None, first, 1)
    best = evaluate(cast_like(mean, first))
    used, history = [0], [best]
    for position, state in enumerate(states, start=1):
        candidate = running_mean(mean, state, len(used) + 1)
        score = evaluate(cast_like(candidate, first))
        history.append(score)
        if score > best:
            mean, best = candidate, score
            used.append(position)
    return cast_like(mean, first), used, history

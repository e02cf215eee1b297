"""Dynamic duos (an extension, not in the paper: the official code's 3dy script): per-sample
temperatures predicted from the members' pooled penultimate features,

    T_l(x) = softplus(a_l . phi(x) + b_l),  T_s(x) = softplus(a_s . phi(x) + b_s),
    z(x) = l(x) / T_l(x) + s(x) / T_s(x),

with phi = [phi_l; phi_s] ("concat", the default) or each member's own features ("separate").
Initialised at a = 0, b = 1 (constant temperatures), fitted on validation NLL. Features are
standardised with the validation mean and std (the official code used raw features).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

MODES = ("concat", "separate")
MIN_TEMPERATURE = 1e-3
OPTIMIZERS = ("lbfgs", "adam")


class DynamicTemperatures(nn.Module):
    def __init__(self, dim_large: int, dim_small: int, mode: str = "concat"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        inputs = (dim_large + dim_small, dim_large + dim_small) if mode == "concat" else (dim_large, dim_small)
        self.large, self.small = nn.Linear(inputs[0], 1), nn.Linear(inputs[1], 1)
        for layer in (self.large, self.small):
            nn.init.zeros_(layer.weight)
            nn.init.ones_(layer.bias)
        self.register_buffer("mean", torch.zeros(dim_large + dim_small))
        self.register_buffer("std", torch.ones(dim_large + dim_small))
        self.dim_large = dim_large

    def standardise_with(self, features_large: torch.Tensor, features_small: torch.Tensor) -> None:
        both = torch.cat([features_large, features_small], dim=1)
        self.mean.copy_(both.mean(0))
        self.std.copy_(both.std(0).clamp_min(1e-6))

    def temperatures(self, features_large: torch.Tensor, features_small: torch.Tensor):
        both = (torch.cat([features_large, features_small], dim=1) - self.mean) / self.std
        if self.mode == "concat":
            inputs = (both, both)
        else:
            inputs = (both[:, :self.dim_large], both[:, self.dim_large:])
        # a floor keeps z finite when a temperature heads to 0 during the line search
        return (nn.functional.softplus(self.large(inputs[0])) + MIN_TEMPERATURE,
                nn.functional.softplus(self.small(inputs[1])) + MIN_TEMPERATURE)

    def forward(self, logits_large, logits_small, features_large, features_small) -> torch.Tensor:
        t_large, t_small = self.temperatures(features_large, features_small)
        return logits_large / t_large + logits_small / t_small


def fit(model: DynamicTemperatures, logits_large, logits_small, features_large, features_small, labels,
        optimizer: str = "lbfgs", steps: int = 10, epochs: int = 32, batch_size: int = 128, seed: int = 0) -> list[float]:
    """Fit on validation NLL: full-batch L-BFGS (strong Wolfe; lr 0.5, 20 iterations per step) or
    mini-batch Adam keeping the epoch with the lowest training loss. Returns the loss history."""
    tensors = [torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in
               (logits_large, logits_small, features_large, features_small)]
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    model.double()
    model.standardise_with(tensors[2], tensors[3])

    def loss_on(idx=slice(None)):
        return nn.functional.cross_entropy(model(*(t[idx] for t in tensors)), y[idx])

    history = [float(loss_on().detach())]
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_on()
            loss.backward()
            return loss
        for _ in range(steps):
            previous = {k: v.clone() for k, v in model.state_dict().items()}
            opt.step(closure)
            loss = float(loss_on().detach())
            if not np.isfinite(loss):           # a diverged step: keep the last finite state and stop
                model.load_state_dict(previous)
                break
            history.append(loss)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters())
        generator = torch.Generator().manual_seed(seed)
        best = (history[0], {k: v.clone() for k, v in model.state_dict().items()})
        for _ in range(epochs):
            for batch in torch.randperm(len(y), generator=generator).split(batch_size):
                opt.zero_grad()
                loss_on(batch).backward()
                opt.step()
            history.append(float(loss_on().detach()))
            if history[-1] < best[0]:
                best = (history[-1], {k: v.clone() for k, v in model.state_dict().items()})
        model.load_state_dict(best[1])
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
    return history

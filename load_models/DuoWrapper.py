"""An Asymmetric Duo as one `nn.Module`: a large model, a small sidekick, and two fitted weights.

`forward` returns the mode's combined logits; `predict_with_uncertainty` adds probabilities,
predictions and the three uncertainty measures. The modes' meaning lives in `duo_modes`, shared
with the offline evaluation (stage 5).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from load_models.TempScaleWrapper import _numpy
from utils.maths import calibrate_temperature, duo_modes
from utils.stages.calibration import checked_duo_weights, checked_temperature


class DuoWrapper(nn.Module):
    """`DuoWrapper(large, small, mode="asymmetric")`; inputs are one tensor for both members, or a
    `(x_large, x_small)` pair when the members need different preprocessing."""

    def __init__(self, large: nn.Module | None, small: nn.Module | None, mode: str = "asymmetric",
                 temperatures: duo_modes.DuoTemperatures | None = None, combine: str = "logits"):
        super().__init__()
        if mode not in duo_modes.MODES:
            raise ValueError(f"unknown duo mode '{mode}'; choose from {', '.join(duo_modes.MODES)}")
        if combine not in duo_modes.COMBINE:
            raise ValueError(f"unknown combine '{combine}'; choose from {', '.join(duo_modes.COMBINE)}")
        self.large, self.small, self.mode, self.combine_with = large, small, mode, combine
        self.temperatures = temperatures or duo_modes.DuoTemperatures()

    def fit(self, val_logits_large, val_logits_small, val_labels, method: str = "exact") -> calibrate_temperature.DuoFit:
        """Fit both single-model temperatures (for `unweighted_ts`) and the duo weights on validation logits."""
        large, small, labels = _numpy(val_logits_large), _numpy(val_logits_small), _numpy(val_labels)
        single_large = checked_temperature(large, labels, "the large model's val logits", "large", method).temperature
        single_small = checked_temperature(small, labels, "the sidekick's val logits", "sidekick", method).temperature
        duo = checked_duo_weights(large, small, labels, "the duo's val logits", "the duo", method)
        self.temperatures = duo_modes.DuoTemperatures(single_large, single_small, duo.weight_large, duo.weight_small)
        return duo

    @torch.no_grad()
    def fit_on_loader(self, loader, device: str | torch.device = "cpu", method: str = "exact") -> calibrate_temperature.DuoFit:
        """Collect both members' validation logits from a loader of (x, y[, ...]) and fit."""
        large, small, labels = [], [], []
        for batch in loader:
            x, y = batch[0], batch[1]
            logits_large, logits_small = self.member_logits(_to_device(x, device))
            large.append(logits_large.float().cpu())
            small.append(logits_small.float().cpu())
            labels.append(torch.as_tensor(y).cpu())
        return self.fit(torch.cat(large), torch.cat(small), torch.cat(labels), method=method)

    def member_logits(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        x_large, x_small = x if isinstance(x, (tuple, list)) else (x, x)
        return self.large(x_large), self.small(x_small)

    def combine(self, logits_large: torch.Tensor, logits_small: torch.Tensor) -> torch.Tensor:
        """The duo's logits z (softmax(z) = p): the scaled members' average, or with combine="probs" the log
        of their probability mixture (duo_modes.mixture: a member whose share is 0 is left out)."""
        if self.combine_with == "probs":
            scales, shares = duo_modes.mixture(self.mode, self.temperatures)
            members = torch.stack([torch.log_softmax(scale * logits, dim=1) + math.log(share)
                                   for scale, share, logits in zip(scales, shares, (logits_large, logits_small))
                                   if share > 0])
            return torch.logsumexp(members, dim=0)
        scale_large, scale_small = duo_modes.member_scales(self.mode, self.temperatures)
        return (scale_large * logits_large + scale_small * logits_small) / 2.0

    def forward(self, x) -> torch.Tensor:
        return self.combine(*self.member_logits(x))

    @torch.no_grad()
    def predict_with_uncertainty(self, x) -> dict[str, torch.Tensor]:
        logits_large, logits_small = self.member_logits(x)
        return self.outputs_from_logits(logits_large, logits_small)

    def outputs_from_logits(self, logits_large: torch.Tensor, logits_small: torch.Tensor) -> dict[str, torch.Tensor]:
        large, small = logits_large.detach().float().cpu(), logits_small.detach().float().cpu()
        out = duo_modes.duo_outputs(large, small, self.temperatures, modes=[self.mode],
                                    combine=self.combine_with)[self.mode]
        z = torch.from_numpy(out.logits.materialise())
        result = {"logits": z.float(), "probs": torch.softmax(z, dim=1).float(),
                  "preds": torch.from_numpy(out.predictions)}
        result.update({name: torch.from_numpy(values) for name, values in out.uncertainty.items()})
        return result


def _to_device(x, device):
    if isinstance(x, (tuple, list)):
        return type(x)(t.to(device, non_blocking=True) for t in x)
    return x.to(device, non_blocking=True)

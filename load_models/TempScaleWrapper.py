"""A model (or its logits) divided by one temperature fitted on validation NLL."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from utils.maths import calibrate_temperature
from utils.maths import uncertainty_metrics as um
from utils.stages.calibration import checked_temperature


class TempScaleWrapper(nn.Module):
    """`forward(x) = model(x) / T`. Fit T with `fit(val_logits, val_labels)`."""

    def __init__(self, model: nn.Module | None = None, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float64))

    def fit(self, val_logits, val_labels, method: str = "exact") -> calibrate_temperature.TemperatureFit:
        fit = checked_temperature(_numpy(val_logits), _numpy(val_labels), "the val logits", "the model", method)
        self.temperature.fill_(fit.temperature)
        return fit

    def scale(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature.to(logits.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("TempScaleWrapper has no model; call scale(logits) on precomputed logits")
        return self.scale(self.model(x))

    @torch.no_grad()
    def predict_with_uncertainty(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits, probabilities, predictions and the single-model uncertainty measures; predictions are
        the model's own (a temperature never changes them, and at T = inf the scaled logits are all 0)."""
        if self.model is None:
            raise RuntimeError("TempScaleWrapper has no model; call scale(logits) on precomputed logits")
        raw = self.model(x)
        outputs = single_model_outputs(self.scale(raw))
        outputs["preds"] = raw.detach().float().cpu().argmax(dim=1)
        return outputs


def single_model_outputs(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    cpu = logits.detach().float().cpu()
    stats = um.softmax_stats(cpu)
    return {"logits": cpu, "probs": torch.softmax(cpu.double(), dim=1).float(),
            "preds": torch.from_numpy(stats.argmax),
            "softmax_response": torch.from_numpy(um.softmax_response(cpu, stats)),
            "entropy": torch.from_numpy(um.entropy(stats))}


def _numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)

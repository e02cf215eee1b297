"""A shallow ensemble: one backbone, several linear heads; predictive = mean of the heads' softmax.

Not evaluated in the paper (it is discussed only as related work); kept as a baseline building block.
"""
from __future__ import annotations

import torch
from torch import nn


class ShallowEnsembleWrapper(nn.Module):
    """`backbone(x)` must return pooled features [B, D]; `forward` returns log of the mean head
    probabilities, which behaves as logits for every later stage (softmax gives the mean p)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, num_heads: int = 5):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(nn.Linear(feature_dim, num_classes) for _ in range(num_heads))

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return torch.stack([head(features) for head in self.heads])     # [H, B, K]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return summarize_heads(self.head_logits(x))["log_probs"]

    @torch.no_grad()
    def predict_with_uncertainty(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return summarize_heads(self.head_logits(x))


def summarize_heads(head_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """From [H, B, K] head logits: mean prediction, predictive entropy, expected entropy and the
    mutual information (predictive minus expected entropy, the disagreement between heads)."""
    log_p = torch.log_softmax(head_logits.double(), dim=-1)
    log_mean = torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(head_logits.shape[0]), dtype=torch.float64))
    mean_p = log_mean.exp()
    predictive_entropy = -(mean_p * log_mean).sum(-1)
    expected_entropy = -(log_p.exp() * log_p).sum(-1).mean(0)
    return {"log_probs": log_mean.to(head_logits.dtype), "probs": mean_p.to(head_logits.dtype),
            "preds": mean_p.argmax(-1), "entropy": predictive_entropy,
            "expected_entropy": expected_entropy,
            "mutual_information": (predictive_entropy - expected_entropy).clamp_min(0.0)}

"""Laplace-baseline helpers for evaluate/6_laplace.py (laplace-torch, last-layer posterior).

- `feature_loaders`: a last-layer Laplace approximation only sees the pooled features and the head, so
  the backbone runs once per image and laplace-torch works on a head-only model fed with the features
  (the same posterior and predictive; the prior grid search no longer reruns the backbone).
- `kron_last_layer_covariance` / `use_fast_kron_predictive`: the GLM predictive covariance of a kron
  last-layer posterior in closed form, instead of laplace-torch's per-sample C x (D+1)C Jacobians
  (issue #138); checked against the library's path in the tests.
- `predictive_chunk`: rows per library predictive call within a memory budget, for other posteriors.
"""
from __future__ import annotations

import copy

import torch

from load_models import model_loader
from load_models.inference import predict_with_features


class PairLoader:
    """(x, y) batches for laplace-torch from our (x, y, id) loaders, at most `max_batch` samples each (the
    library's predictive holds a Jacobian per sample); keeps `.dataset` for N."""

    def __init__(self, loader, device, max_batch: int | None = None):
        self.loader, self.dataset, self.device, self.max_batch = loader, loader.dataset, device, max_batch

    def __iter__(self):
        for x, y, _ in self.loader:
            y = torch.as_tensor(y)
            step = self.max_batch or len(y)
            for i in range(0, len(y), step):
                yield x[i:i + step].to(self.device), y[i:i + step].to(self.device)

    def __len__(self) -> int:
        return len(self.loader)


def feature_loaders(model, loaders: dict, device, batch_size: int) -> tuple[torch.nn.Module, dict]:
    """A head-only copy of the model and loaders of (pooled features, label, id): the backbone
    runs once per image instead of once per prior-grid point and predictive call."""
    _, head = model_loader.find_head(model)
    head_model = torch.nn.Sequential(torch.nn.Identity(), copy.deepcopy(head)).to(device).eval()
    out = {}
    for split, loader in loaders.items():
        if loader is None:
            out[split] = None
            continue
        pred, pooled = predict_with_features(model, loader, device)
        features = torch.from_numpy(pooled)
        dataset = torch.utils.data.TensorDataset(features, torch.from_numpy(pred.labels),
                                                 torch.arange(len(pred.labels)))
        batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        out[split] = _WithIds(batches, pred.ids)
    return head_model, out


class _WithIds:
    """Feature batches that yield the original sample ids again."""

    def __init__(self, loader, ids):
        self.loader, self.dataset, self.ids = loader, loader.dataset, ids

    def __iter__(self):
        for x, y, positions in self.loader:
            yield x, y, self.ids[positions.numpy()]

    def __len__(self) -> int:
        return len(self.loader)


def kron_last_layer_covariance(precision, phi: torch.Tensor) -> torch.Tensor:
    """Exact GLM function-space covariance [B, C, C] of a last-layer Kron posterior, without Jacobians.

    With the posterior precision of the weight group Q1 L1 Q1^T (x) Q2 L2 Q2^T + delta (laplace-torch's
    KronDecomposed, rows = classes) the weight part is Q1 diag(w) Q1^T with
    w_i = sum_j (Q2^T phi)_j^2 / (l1_i l2_j + delta); a bias group adds Q diag(1 / (l + delta)) Q^T.
    O(D^2 + D C + C^2) per sample instead of a C x (D+1)C Jacobian (laplace-torch issue #138, #201).
    """
    covariance = None
    for values, vectors, delta in zip(precision.eigenvalues, precision.eigenvectors, precision.deltas):
        if len(values) == 2:
            (l1, l2), (q1, q2) = values, vectors
            inverse = 1.0 / (torch.outer(l1, l2) + delta)                 # [C, D]
            w = (phi.to(q2.dtype) @ q2) ** 2 @ inverse.T                   # [B, C]
            part = torch.einsum("ci,bi,ki->bck", q1, w, q1)
        else:
            (eigenvalues,), (q,) = values, vectors
            part = ((q / (eigenvalues + delta)) @ q.T).unsqueeze(0)
        covariance = part if covariance is None else covariance + part
    return covariance


def use_fast_kron_predictive(la) -> bool:
    """Route laplace-torch's (non-joint) GLM predictive of a last-layer Kron posterior through
    `kron_last_layer_covariance`; returns False (library path kept) for other posteriors."""
    from laplace import KronLLLaplace
    if not isinstance(la, KronLLLaplace) or getattr(la.posterior_precision, "damping", False):
        return False
    library = la._glm_predictive_distribution

    def predictive(X, joint: bool = False, diagonal_output: bool = False):
        if joint:
            return library(X, joint=joint, diagonal_output=diagonal_output)
        f_mu, phi = la.model.forward_with_features(X)
        f_var = kron_last_layer_covariance(la.posterior_precision, phi.detach())
        if diagonal_output:
            f_var = f_var.diagonal(dim1=1, dim2=2)
        return f_mu.detach(), f_var.to(f_mu.dtype).detach()

    la._glm_predictive_distribution = predictive
    return True


def predictive_chunk(num_classes: int, feature_dim: int, budget_gb: float) -> int:
    """Samples per predictive call so that the Jacobians (C x (D+1)C floats each, with ~3x
    working copies) fit in the budget."""
    per_sample = 3 * num_classes * (feature_dim + 1) * num_classes * 4
    return max(1, int(budget_gb * 2**30 // per_sample))


def laplace_log_probs(la, chunk: int, link_approx: str):
    """The inference hook of the Laplace predictive: log of its GLM predictive probabilities, `chunk`
    samples per library call (the Jacobians' memory budget)."""
    def outputs(x: torch.Tensor) -> torch.Tensor:
        parts = [la(x[i:i + chunk], pred_type="glm", link_approx=link_approx) for i in range(0, len(x), chunk)]
        probs = torch.cat(parts).double().clamp_min(1e-300)
        return (probs / probs.sum(1, keepdim=True)).log()
    return outputs

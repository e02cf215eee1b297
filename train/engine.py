"""The loops: prediction over a loader (stage 1, validation, baselines) and, with the training
issue, the training epoch."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from load_models.model_loader import logits_and_features


@dataclass
class Predictions:
    logits: np.ndarray            # float32 [N, K]
    labels: np.ndarray            # int64 [N]
    ids: np.ndarray               # int64 or str [N]
    features: np.ndarray | None   # float32 [N, D]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from utils.cli import UserError
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, with_features: bool = False,
            description: str = "") -> Predictions:
    """Logits (and pooled penultimate features) for every sample of a loader of (x, y, id)."""
    model.eval()
    logits, labels, ids, features = [], [], [], []
    batches = loader
    if description and sys.stderr.isatty():
        from tqdm import tqdm
        batches = tqdm(loader, desc=description, leave=False)
    for x, y, sample_ids in batches:
        x = x.to(device, non_blocking=True)
        if with_features:
            out, feats = logits_and_features(model, x)
            features.append(feats.float().cpu())
        else:
            out = model(x)
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(y))
        ids.extend(sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids))
    id_array = np.asarray(ids)
    return Predictions(logits=torch.cat(logits).numpy(), labels=torch.cat(labels).numpy().astype(np.int64),
                       ids=id_array.astype(np.int64) if id_array.dtype.kind in "iu" else id_array.astype(str),
                       features=torch.cat(features).numpy() if with_features else None)

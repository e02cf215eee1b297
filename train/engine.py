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


# ----------------------------------------------------------------------------- training

def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA for "bf16" (and "auto"); plain fp32 otherwise."""
    import contextlib
    if device.type == "cuda" and precision in ("bf16", "auto"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int):
    """Per-epoch schedule: linear warm-up from 0.1x for `warmup_epochs`, then cosine annealing."""
    warmup_epochs = min(max(warmup_epochs, 0), max(epochs - 1, 0))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs - warmup_epochs, 1))
    if warmup_epochs == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                    precision: str = "auto", step_hook=None) -> float:
    """One epoch of cross-entropy training; returns the mean loss. A non-finite loss raises
    FloatingPointError (Ray Tune then marks the trial as failed, the search goes on)."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    for x, y, _ in loader:
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, precision):
            loss = criterion(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {float(loss)}")
        loss.backward()
        (step_hook or optimizer.step)()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / max(count, 1)


def selection_score(predictions: Predictions, metric: str) -> float:
    """The model-selection metric: macro-F1 ("f1", iWildCam) or accuracy ("acc")."""
    from utils.uncertainty_metrics import accuracy, macro_f1
    preds = predictions.logits.argmax(1)
    if metric == "f1":
        return macro_f1(predictions.labels, preds, predictions.logits.shape[1])
    if metric == "acc":
        return accuracy(predictions.labels, preds)
    raise ValueError(f"unknown selection metric '{metric}' (acc or f1)")

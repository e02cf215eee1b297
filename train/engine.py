"""The training loop (hp_tune's trials, IVON's schedule) and the model-selection score. Inference
lives in `load_models.inference`, shared with the evaluation stages."""
from __future__ import annotations

import torch
from torch import nn

from load_models.inference import autocast_context, to_device
from utils.files.prediction_io import Split
from utils.maths.uncertainty_metrics import accuracy, macro_f1


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
                    precision: str = "auto", channels_last: bool = False, accumulate: int = 1) -> float:
    """One epoch of cross-entropy training; returns the mean loss.

    With `accumulate` = k the loader's batches are micro-batches: gradients of k of them are summed
    (each loss scaled by 1/k) before one optimizer step, so the effective batch size is k times the
    loader's when memory is short. A non-finite loss raises FloatingPointError (Ray Tune then marks
    the trial as failed and the search goes on).
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    total, count = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    pending = 0
    for x, y, _ in loader:
        x, y = to_device(x, device, channels_last), torch.as_tensor(y).to(device, non_blocking=True)
        with autocast_context(device, precision):
            loss = criterion(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {float(loss.detach())}")
        (loss / accumulate).backward()
        pending += 1
        if pending == accumulate:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pending = 0
        total += float(loss.detach()) * len(y)
        count += len(y)
    if pending:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return total / max(count, 1)


def selection_score(predictions: Split, metric: str) -> float:
    """The model-selection metric: macro-F1 ("f1", iWildCam) or accuracy ("acc")."""
    preds = predictions.logits.argmax(1)
    if metric == "f1":
        return macro_f1(predictions.labels, preds, predictions.logits.shape[1])
    if metric == "acc":
        return accuracy(predictions.labels, preds)
    raise ValueError(f"unknown selection metric '{metric}' (acc or f1)")

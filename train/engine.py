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


def stack_predictions(outputs: list[torch.Tensor], labels: list, ids: list, features: list | None = None) -> Predictions:
    """Batches of (logits or log-probs, labels, ids[, features]) as one Predictions."""
    id_array = np.asarray(ids)
    return Predictions(logits=torch.cat(outputs).float().numpy(),
                       labels=torch.cat([torch.as_tensor(y) for y in labels]).numpy().astype(np.int64),
                       ids=id_array.astype(np.int64) if id_array.dtype.kind in "iu" else id_array.astype(str),
                       features=torch.cat(features).numpy() if features else None)


def batch_ids(sample_ids) -> list:
    return sample_ids.tolist() if isinstance(sample_ids, (torch.Tensor, np.ndarray)) else list(sample_ids)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from utils.cli import UserError
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, with_features: bool = False,
            description: str = "", precision: str = "fp32", channels_last: bool = False) -> Predictions:
    """Logits (and pooled penultimate features) for every sample of a loader of (x, y, id)."""
    model.eval()
    logits, labels, ids, features = [], [], [], []
    batches = loader
    if description and sys.stderr.isatty():
        from tqdm import tqdm
        batches = tqdm(loader, desc=description, leave=False)
    for x, y, sample_ids in batches:
        x = _to_device(x, device, channels_last)
        with autocast_context(device, precision):
            if with_features:
                out, feats = logits_and_features(model, x)
                features.append(feats.float().cpu())
            else:
                out = model(x)
        logits.append(out.float().cpu())
        labels.append(y)
        ids.extend(batch_ids(sample_ids))
    return stack_predictions(logits, labels, ids, features if with_features else None)


# ----------------------------------------------------------------------------- training

PRECISIONS = ("auto", "bf16", "fp32")


def autocast_context(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA for "auto" and "bf16"; on CPU only when "bf16" is asked for; else fp32."""
    import contextlib
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Move to the device (channels_last memory format if asked), enable cuDNN autotuning on CUDA
    and optionally torch.compile."""
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return torch.compile(model) if compile else model


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


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
        x, y = _to_device(x, device, channels_last), torch.as_tensor(y).to(device, non_blocking=True)
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


def selection_score(predictions: Predictions, metric: str) -> float:
    """The model-selection metric: macro-F1 ("f1", iWildCam) or accuracy ("acc")."""
    from utils.uncertainty_metrics import accuracy, macro_f1
    preds = predictions.logits.argmax(1)
    if metric == "f1":
        return macro_f1(predictions.labels, preds, predictions.logits.shape[1])
    if metric == "acc":
        return accuracy(predictions.labels, preds)
    raise ValueError(f"unknown selection metric '{metric}' (acc or f1)")

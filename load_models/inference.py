"""The one inference loop (stage 1, validation while training, IVON's and Laplace's predictives) and the
device plumbing it shares with training: device choice, autocast, channels_last, moving batches.

`predict` turns a loader of (x, y, id) into a `prediction_io.Split`; its `outputs` hook says how a
batch becomes logits (default: the model's forward; IVON averages posterior draws, Laplace calls its
predictive), so every baseline writes its predictions through the same loop.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from load_models.model_loader import logits_and_features
from utils.cli import console
from utils.cli.parsing import UserError
from utils.files.prediction_io import Split


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA for "auto" and "bf16"; on CPU only when "bf16" is asked for; else fp32."""
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


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def id_array(ids: list) -> np.ndarray:
    """Sample ids as int64 when they are integers, else text."""
    array = np.asarray(ids)
    return array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(str)


def _batch_ids(sample_ids) -> list:
    return sample_ids.tolist() if isinstance(sample_ids, (torch.Tensor, np.ndarray)) else list(sample_ids)


@torch.no_grad()       # not inference_mode: Laplace's predictive may need autograd inside its own enable_grad
def predict(model: nn.Module, loader, device: torch.device, outputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
            description: str = "", precision: str = "fp32", channels_last: bool = False) -> Split:
    """The logits (or log-probabilities, whatever `outputs` returns) of every sample of a loader of
    (x, y, id), as a Split; `outputs(x)` defaults to `model(x)`."""
    model.eval()
    outputs = outputs or model
    logits, labels, ids = [], [], []
    batches = loader
    screen = console.progress_stream() if description else None
    if screen is not None:                    # a terminal: a bar; a log file or a slurm job: nothing
        from tqdm import tqdm
        batches = tqdm(loader, desc=description, leave=False, file=screen)
    for x, y, sample_ids in batches:
        x = to_device(x, device, channels_last)
        with autocast_context(device, precision):
            out = outputs(x)
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(y).cpu())
        ids.extend(_batch_ids(sample_ids))
    return Split(torch.cat(logits).numpy(), torch.cat(labels).numpy().astype(np.int64), id_array(ids))


def predict_with_features(model: nn.Module, loader, device: torch.device, **options) -> tuple[Split, np.ndarray]:
    """`predict`, plus the pooled penultimate features (the head's input) of every sample, float32 [N, D]."""
    features = []

    def outputs(x: torch.Tensor) -> torch.Tensor:
        logits, pooled = logits_and_features(model, x)
        features.append(pooled.float().cpu())
        return logits

    split = predict(model, loader, device, outputs, **options)
    return split, torch.cat(features).numpy()

"""Model construction: torchvision and timm backbones with a new head, offline weights, transforms,
penultimate features and project checkpoints.

Weights (`weights=`): "default" loads the pretrained weights from the local caches (torch hub for
torchvision, the Hugging Face cache for timm) and never downloads unless `allow_download=True`
(the staging script on a login node); "none" is random initialisation; any other value is a file
holding an ImageNet state_dict. A missing cache file is an error that names the exact path to
stage and the command that stages it.
"""
from __future__ import annotations

import datetime as _dt
import io
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before timm: an uncached lookup otherwise retries ~47 s

import torch
import torchvision
from torch import nn
from torchvision import transforms as T

from utils.cli.parsing import UserError
from utils.files import safe_io
from utils.files.model_names import SOUP_SUFFIXES, SOURCES

STAGE_COMMAND = "python train/download_imagenet_models.py --models {name}"


def architecture_of(model_name: str) -> str:
    """Soup names `<arch>_greedy` / `<arch>_uniform` resolve to their architecture."""
    for suffix in SOUP_SUFFIXES:
        if model_name.endswith(suffix):
            return model_name[: -len(suffix)]
    return model_name


def guess_source(model_name: str) -> str:
    return "torchvision" if architecture_of(model_name).lower() in torchvision.models.list_models() else "timm"


# ----------------------------------------------------------------------------- weights

def torchvision_weights(model_name: str, tv_weights: str | None = None):
    name = architecture_of(model_name).lower()
    if name not in torchvision.models.list_models():
        raise UserError(f"--model: '{model_name}' is not a torchvision model (e.g. ConvNeXt_Base, RegNet_X_1_6GF); "
                        f"use --source timm for timm names")
    enum = torchvision.models.get_model_weights(name)
    key = tv_weights if tv_weights and str(tv_weights) not in ("nan", "") else "DEFAULT"
    try:
        return enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise UserError(f"--tv_weights: {model_name} has no weights '{key}'; choose from "
                        f"{', '.join(w.name for w in enum)}") from None


def torchvision_cache_file(model_name: str, tv_weights: str | None = None) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(torchvision_weights(model_name, tv_weights).url)


def timm_cache_dir(model_name: str) -> Path:
    import timm
    from huggingface_hub import constants
    cfg = timm.models.get_pretrained_cfg(architecture_of(model_name))
    repo = getattr(cfg, "hf_hub_id", None) or f"timm/{architecture_of(model_name)}"
    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def _load_torchvision(model_name: str, tv_weights: str | None, weights: str, allow_download: bool) -> nn.Module:
    name = architecture_of(model_name).lower()
    if weights == "none":
        torchvision_weights(model_name, tv_weights)          # validate the name
        return torchvision.models.get_model(name, weights=None)
    if weights != "default":
        model = torchvision.models.get_model(name, weights=None)
        _load_state_file(model, weights, model_name)
        return model
    enum = torchvision_weights(model_name, tv_weights)
    cached = torchvision_cache_file(model_name, tv_weights)
    if not cached.exists() and not allow_download:
        raise UserError(f"pretrained weights for {model_name} are not staged: expected {cached}; on a machine with "
                        f"internet run `{STAGE_COMMAND.format(name=model_name)}` (set TORCH_HOME to share the cache), "
                        f"or pass --weights FILE or --weights none")
    return torchvision.models.get_model(name, weights=enum)


def _load_timm(model_name: str, weights: str, allow_download: bool) -> nn.Module:
    import timm
    arch = architecture_of(model_name)
    if not timm.is_model(arch):
        raise UserError(f"--model: '{model_name}' is neither a torchvision model (e.g. ConvNeXt_Base) nor a timm model "
                        f"(e.g. tf_efficientnetv2_l.in21k_ft_in1k); for a raw state_dict pass --model NAME --source S")
    if weights == "none":
        return timm.create_model(arch, pretrained=False)
    if weights != "default":
        path = safe_io.readable(weights, "--weights file")
        try:
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        except Exception as exc:       # timm's loader: an unpickling, format or shape error
            raise UserError(f"--weights: {path}: cannot read it as a plain state_dict of {arch} "
                            f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]})") from None
    try:
        return timm.create_model(arch, pretrained=True)
    except Exception as exc:       # huggingface_hub raises several types for a missing cache entry
        if "offline" not in str(exc).lower() and "LocalEntryNotFound" not in type(exc).__name__ \
                and "not found" not in str(exc).lower():
            raise
        raise UserError(f"pretrained weights for {model_name} are not staged: expected the Hugging Face cache entry "
                        f"{timm_cache_dir(model_name)}; on a machine with internet run "
                        f"`{STAGE_COMMAND.format(name=model_name)}` (set HF_HOME to share the cache), or pass "
                        f"--weights FILE or --weights none") from None


def _load_state_file(model: nn.Module, path: str | Path, model_name: str) -> None:
    path = safe_io.readable(path, "--weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"--weights: {path}: cannot read it as a plain state_dict ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:160]})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"--weights: {path} holds no state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"--weights: {path} does not fit {model_name}: {_summarise_load_error(exc)}") from None


# ----------------------------------------------------------------------------- heads and features

def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: timm's `get_classifier()`, else the last nn.Linear (torchvision's fc,
    classifier[-1], head or heads.head)."""
    if hasattr(model, "get_classifier") and isinstance(model.get_classifier(), nn.Linear):
        target = model.get_classifier()
        return next(name for name, module in model.named_modules() if module is target), target
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__}: no nn.Linear classifier head found")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    name, head = find_head(model)
    if hasattr(model, "reset_classifier") and hasattr(model, "get_classifier"):
        model.reset_classifier(num_classes)
        return model
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(head.in_features, num_classes))
    return model


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass returning the logits and the pooled penultimate features (the head's input)."""
    _, head = find_head(model)
    captured = {}
    handle = head.register_forward_hook(lambda module, inputs, output: captured.__setitem__("features", inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured["features"].flatten(1)


def forward_features_pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return logits_and_features(model, x)[1]


def get_model_with_head(model_name: str, num_classes: int | None = None, source: str | None = None,
                        tv_weights: str | None = None, freeze: bool = False, keep_imagenet_head: bool = False,
                        weights_path: str | Path | None = None, weights: str = "default",
                        allow_download: bool = False) -> nn.Module:
    """A backbone with a fresh `nn.Linear(num_classes)` head (or its ImageNet head), optionally frozen.

    `weights`: "default" (pretrained, from the local caches), "none" (random init) or a file;
    `weights_path` is the same as `weights=<file>`.
    """
    source = source or guess_source(model_name)
    if source not in SOURCES:
        raise UserError(f"--source: unknown source '{source}'; choose from {', '.join(SOURCES)}")
    weights = str(weights_path) if weights_path else str(weights)
    model = (_load_torchvision(model_name, tv_weights, weights, allow_download) if source == "torchvision"
             else _load_timm(model_name, weights, allow_download))
    if not keep_imagenet_head:
        if num_classes is None:
            raise ValueError("num_classes is required unless keep_imagenet_head=True")
        replace_head(model, num_classes)
    if freeze:
        head_name, _ = find_head(model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(head_name + ".")
    return model


# ----------------------------------------------------------------------------- transforms

# The training augmentations a dataset YAML may list under training.augment, applied in this order. The
# paper's recipe (RandAugment + horizontal flip) is the default for natural images; handwritten digits change
# meaning when flipped or heavily distorted, so MNIST uses a mild random affine instead.
AUGMENTATIONS = {
    "randaugment": lambda: T.RandAugment(),
    "flip": lambda: T.RandomHorizontalFlip(),
    "affine": lambda: T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
}
DEFAULT_AUGMENT = ("randaugment", "flip")


def get_transforms(model_name: str, source: str | None = None, tv_weights: str | None = None,
                   image_size: int | None = None, augment=DEFAULT_AUGMENT) -> dict[str, T.Compose]:
    """{"eval": the weights' own preprocessing, "train": RGB -> the `augment` ops (AUGMENTATIONS) -> eval}.

    `image_size` replaces the resize/crop by a plain resize to that size (low-resolution runs).
    """
    unknown = [name for name in augment or () if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)}")
    source = source or guess_source(model_name)
    if source == "torchvision":
        preset = torchvision_weights(model_name, tv_weights).transforms()
        mean, std = preset.mean, preset.std
        resize = [T.Resize(preset.resize_size, interpolation=preset.interpolation, antialias=True),
                  T.CenterCrop(preset.crop_size)]
    else:
        import timm
        cfg = timm.data.resolve_data_config({}, model=None, pretrained_cfg=timm.models.get_pretrained_cfg(
            architecture_of(model_name)).to_dict())
        mean, std = cfg["mean"], cfg["std"]
        size = cfg["input_size"][-1]
        scaled = int(size / cfg.get("crop_pct", 1.0))
        interpolation = T.InterpolationMode(cfg.get("interpolation", "bicubic"))
        resize = [T.Resize(scaled, interpolation=interpolation, antialias=True), T.CenterCrop(size)]
    if image_size:
        resize = [T.Resize((image_size, image_size), antialias=True)]
    to_rgb = T.Lambda(_to_rgb)
    eval_transform = T.Compose([to_rgb, *resize, T.ToTensor(), T.Normalize(mean, std)])
    augmentations = [AUGMENTATIONS[name]() for name in augment or ()]
    train_transform = T.Compose([to_rgb, *augmentations, *eval_transform.transforms[1:]])
    return {"train": train_transform, "eval": eval_transform}


def _to_rgb(image):
    return image.convert("RGB") if hasattr(image, "convert") else image


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | Path, model: nn.Module | dict, outputs: safe_io.Outputs | None = None, **meta) -> Path:
    """Atomically write {"state_dict", "model_name", "source", "num_classes", ...metadata} from a
    model or its state_dict; with `outputs`, queue it there to be committed with the run's other files."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    record = {"state_dict": {k: v.detach().cpu() for k, v in state.items()},
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **meta}
    buffer = io.BytesIO()
    torch.save(record, buffer)
    if outputs is None:
        safe_io.write_bytes(path, buffer.getvalue())
    else:
        outputs.write_bytes(path, buffer.getvalue(), "checkpoint")
    return Path(path)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"--model_path: {path} not found")
    safe_io.readable(path, "checkpoint")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: cannot read checkpoint ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:160]})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a state_dict or a project checkpoint")
    if "state_dict" not in record:                 # a raw state_dict (the official code's checkpoints)
        record = {"state_dict": record}
    return record


def rebuild_from_checkpoint(path: str | Path, model_name: str | None = None, source: str | None = None,
                            tv_weights: str | None = None, num_classes: int | None = None, raw_name: str | None = None,
                            image_size: int | None = None) -> tuple[nn.Module, dict, dict[str, T.Compose]]:
    """The model a checkpoint holds, its record (architecture, source, tv_weights, classes, image size) and
    the transforms it was trained with. `model_name` must agree with the recorded architecture; `raw_name`,
    `source` and `tv_weights` describe a raw state_dict, which records none; `image_size` overrides the
    recorded one."""
    model, record = load_model_from_checkpoint(path, model_name, source, num_classes, raw_name)
    record["tv_weights"] = record.get("tv_weights") or tv_weights
    record["image_size"] = image_size or record.get("image_size")
    transforms = get_transforms(record["model_name"], record["source"], record["tv_weights"], record["image_size"],
                                record.get("augment", DEFAULT_AUGMENT))     # what it was trained with
    return model, record, transforms


def load_model_from_checkpoint(path: str | Path, model_name: str | None = None, source: str | None = None,
                               num_classes: int | None = None, raw_name: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was trained as (no pretrained weights needed) and load it.

    `model_name` must agree with the architecture the checkpoint records; `raw_name` only names the
    architecture of a raw state_dict, which records none."""
    record = read_checkpoint(path)
    name = record.get("model_name") or model_name or raw_name
    if not name:
        raise UserError(f"{path}: a raw state_dict does not say its architecture; pass --model NAME (and --source)")
    recorded = record.get("model_name")
    if model_name and recorded and architecture_of(model_name).lower() != architecture_of(recorded).lower():
        raise UserError(f"{path}: checkpoint is for {record['model_name']}, not {model_name}")
    source = record.get("source") or source or guess_source(name)
    model = get_model_with_head(name, 1000, source=source, weights="none")
    head_name, _ = find_head(model)
    state = record["state_dict"]
    head_key = f"{head_name}.weight"
    if head_key not in state:
        raise UserError(f"{path}: does not fit {name} ({source}): no '{head_key}' in the checkpoint; "
                        f"pass the right --model/--source")
    stored_classes = int(state[head_key].shape[0])
    if num_classes is not None and stored_classes != num_classes:
        raise UserError(f"{path}: checkpoint has {stored_classes} classes but the dataset has {num_classes}")
    if stored_classes != 1000:
        replace_head(model, stored_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path}: does not fit {name} ({source}): {_summarise_load_error(exc)}") from None
    record.update(model_name=name, source=source, num_classes=stored_classes)
    return model, record


def _summarise_load_error(exc: RuntimeError) -> str:
    """torch's multi-line load_state_dict error as one short line (missing/unexpected/size mismatch)."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
    return "; ".join(line[:100] + ("..." if len(line) > 100 else "") for line in lines[:3])


def count_gflops(model: nn.Module, image_size: int) -> float:
    """Multiply-adds (GFLOPS in torchvision's convention) of one forward pass at image_size."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    except (AssertionError, RuntimeError, ValueError) as exc:       # e.g. a ViT built for 224 px given 28 px
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{type(model).__name__} cannot run on {image_size} px images ({reason}): choose a model that "
                        f"accepts this image_size, or another image_size") from None
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9

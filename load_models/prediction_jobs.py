"""Stage 1's jobs: which models to predict (a checkpoint, a folder of them, or pretrained ImageNet models), each
with its name, architecture and weights' source, and whether an existing prediction file is already complete
(from the same checkpoint, with every split asked for)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from load_models import model_loader
from utils.errors import UserError
from utils.files import tables
from utils.files.model_names import checkpoint_dir, existing_path, unique_by_case
from utils.files.prediction_io import read_predictions


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def list_jobs(args, backbones) -> list[dict]:
    """(name, checkpoint or None) for every model to predict."""
    def job(name: str, checkpoint: Path | None) -> dict:
        name = tables.model_identity(name, "model name", backbones)
        # the output is named after the file (e.g. ResNet50_s1, ConvNeXt_Base_greedy); the architecture
        # comes from the checkpoint's metadata, else --model, else the name itself
        recorded = model_loader.read_checkpoint(checkpoint).get("model_name") if checkpoint else None
        if recorded and args.model and model_loader.architecture_of(args.model).lower() != recorded.lower():
            raise UserError(f"{checkpoint}: checkpoint is for {recorded}, not {args.model}")
        arch = model_loader.architecture_of(recorded or args.model or name)
        source = args.source or tables.backbone_text(backbones, arch, "source") or model_loader.guess_source(arch)
        tv_weights = args.tv_weights or tables.backbone_text(backbones, arch, "tv_weights")
        return {"name": name, "arch": arch, "checkpoint": checkpoint, "source": source, "tv_weights": tv_weights}

    if args.model_path:
        path = existing_path(args.model_path)
        if not path.exists():
            raise UserError(f"--model_path: {path} not found")
        return [job(args.name_prefix + path.stem.removesuffix("_best"), path)]
    pretrained_only = UserError("--name_prefix: it names the predictions of checkpoints (--model_path, --model_dir); "
                                "pretrained models keep their own names")
    if not args.all_models and not args.model_dir:       # the official form gives only --model_dir_path
        if args.dataset == "imagenet" and args.model:
            if args.name_prefix:
                raise pretrained_only
            return [job(args.model, None)]
        raise UserError("give --model_path FILE, or --all_models (with --model_dir), or for ImageNet --model NAME")
    default_dir = (Path("checkpoints") / "imagenet" if args.dataset == "imagenet"      # download_imagenet_models.py
                   else checkpoint_dir("checkpoints", args.dataset, "ff"))
    folder = Path(args.model_dir or default_dir)
    checkpoints = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    if args.mode == "soup":
        checkpoints = [p for p in checkpoints if p.stem.lower().endswith(model_loader.SOUP_SUFFIXES)]
        if not checkpoints:
            raise UserError(f"--mode soup: no *_greedy.pth or *_uniform.pth in {folder}; run train/make_soup.py first")
    if checkpoints:
        unique_by_case([path.stem for path in checkpoints], f"--model_dir {folder}")
        return [job(args.name_prefix + path.stem, path) for path in checkpoints]
    if args.dataset == "imagenet":
        if args.name_prefix:
            raise pretrained_only
        return [job(str(name), None) for name in backbones["model_name"]]
    raise UserError(f"--model_dir: no *.pth checkpoints in {folder}")


def is_complete(path: Path, features_path: Path, source_id: str, splits: list[str], want_features: bool) -> bool:
    if not path.exists() or (want_features and not features_path.exists()):
        return False
    try:
        existing = read_predictions(path)
    except UserError:
        return False          # partial or corrupt: redo
    if path.suffix == ".npz" and existing.meta.get("source_checkpoint") != source_id:
        return False          # written from another checkpoint
    return sorted(existing.splits) == sorted(splits)

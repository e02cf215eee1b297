"""Dataset YAML configs (`configs/<dataset>.yaml`): defaults that command-line flags override.

Every key is declared with its type below, so a typo or a wrong type is a one-line error naming
the file and the key instead of a silently ignored setting.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from utils.cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_BACKBONES = CONFIG_DIR / "backbones.csv"


def resolve_config_path(path: str | Path, flag: str) -> Path:
    """A config file or folder named on the command line: the path as given when it exists (relative
    to the working folder, so an explicit file always wins), else the same relative path inside this
    repository (`configs/duos.csv` works from any folder); an error naming `flag` when neither exists."""
    path = Path(path)
    if path.exists():
        return path
    if not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    where = "" if path.is_absolute() else f" (looked in the working folder and in the repository {REPO_ROOT})"
    raise UserError(f"{flag}: {path} not found{where}")

_NUMBER = (int, float)
_OPTIONAL_STR = (str, type(None))
SCHEMA: dict[str, dict[str, tuple]] = {
    "data": {"root": _OPTIONAL_STR, "ood_root": _OPTIONAL_STR, "split_dir": _OPTIONAL_STR,
             "image_size": (int, type(None))},
    "training": {"num_epochs_lp": (int,), "num_epochs_ff": (int,), "batch_size": (int,), "num_workers": (int,),
                 "grace_period": (int,), "warmup_epochs": (int,), "selection_metric": (str,)},
    "search": {"lp_samples": (int,), "num_samples": (int,), "lp_lr": (list,), "ff_lr": (list,),
               "ff_weight_decay": (list,)},
}


def load_config(path: str | Path) -> dict:
    """Read and check a YAML config; missing sections are empty dicts."""
    path = resolve_config_path(path, "--config")
    if not path.is_file():
        raise UserError(f"--config: {path} is not a file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections {sorted(SCHEMA)}")
    config = {}
    for section, values in raw.items():
        if section not in SCHEMA:
            raise UserError(f"{path}: unknown section '{section}' (known: {', '.join(SCHEMA)})")
        if not isinstance(values, dict):
            raise UserError(f"{path}: section '{section}' must be a mapping")
        for key, value in values.items():
            if key not in SCHEMA[section]:
                raise UserError(f"{path}: unknown key '{section}.{key}' (known: {', '.join(SCHEMA[section])})")
            expected = SCHEMA[section][key]
            if isinstance(value, bool) or not isinstance(value, expected):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in expected)
                raise UserError(f"{path}: '{section}.{key}' must be {names}, got {value!r}")
            if expected == (list,) and (len(value) != 2 or not all(isinstance(v, _NUMBER) for v in value)):
                raise UserError(f"{path}: '{section}.{key}' must be a [low, high] pair of numbers, got {value!r}")
        config[section] = dict(values)
    for section in SCHEMA:
        config.setdefault(section, {})
    return config


def dataset_config(dataset: str, path: str | Path | None = None, config_dir: str | Path | None = None) -> dict:
    """`path`, else `<config_dir>/<dataset>.yaml` (the official `--config_dir`), else
    configs/<dataset>.yaml of this repository, else empty defaults."""
    if path is not None:
        return load_config(path)
    if config_dir is not None:
        folder = resolve_config_path(config_dir, "--config_dir")
        if not (folder / f"{dataset}.yaml").is_file():
            raise UserError(f"--config_dir: no {dataset}.yaml in {folder}")
        return load_config(folder / f"{dataset}.yaml")
    default = CONFIG_DIR / f"{dataset}.yaml"
    return load_config(default) if default.exists() else {section: {} for section in SCHEMA}

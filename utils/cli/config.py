"""Dataset YAML configs (`configs/<dataset>.yaml`): defaults that command-line flags override.

Every key is declared with its type (and range) below, so a typo, a wrong type or a 0 where a count
belongs is a one-line error naming the file and the key instead of a silently ignored setting. The
pipeline YAML (`evaluate/run_pipeline.py`) is checked by the same `check_mapping`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import yaml

from utils.errors import UserError
from utils.files import safe_io
from utils.paths import CONFIG_DIR, resolve_config_path

DATASETS = ("iwildcam", "caltech256", "imagenet", "mnist5k")


@dataclass(frozen=True)
class Field:
    """One YAML key: its allowed types, a lower bound for numbers, the type (and bound) of a list's
    items, a fixed length for a list, the allowed values, and `check`: the argparse type of the flag the
    value becomes (a key passed on to a stage accepts exactly what that stage's flag accepts)."""
    types: tuple
    minimum: float | None = None
    items: tuple | None = None
    length: int | None = None
    choices: tuple | None = None
    check: object = None


_NAME = lambda: (str, type(None))          # noqa: E731
_COUNT, _OPTIONAL_COUNT = Field((int,), 1), Field((int, type(None)), 1)
_RANGE = Field((list,), 0.0, items=(int, float), length=2)      # [low, high], log-uniform: 0 < low <= high

SCHEMA: dict = {
    "data": {"root": Field(_NAME()), "ood_root": Field(_NAME()), "split_dir": Field(_NAME()),
             "image_size": _OPTIONAL_COUNT},
    "training": {"num_epochs_lp": _COUNT, "num_epochs_ff": _COUNT, "batch_size": _COUNT,
                 "num_workers": Field((int,), 0), "grace_period": _COUNT, "warmup_epochs": Field((int,), 0),
                 "selection_metric": Field((str,), choices=("acc", "f1")),
                 # training augmentations, in order (load_models.model_loader.AUGMENTATIONS)
                 "augment": Field((list,), items=(str,), choices=("randaugment", "flip", "affine"))},
    "search": {"lp_samples": _COUNT, "num_samples": _COUNT, "lp_lr": _RANGE, "ff_lr": _RANGE,
               "ff_weight_decay": _RANGE},
}


def _type_names(types: tuple) -> str:
    return " or ".join({"NoneType": "null", "str": "text", "int": "a whole number", "float": "a number",
                        "list": "a list", "bool": "true/false", "dict": "a mapping"}[t.__name__] for t in types)


def _is_a(value, types: tuple) -> bool:
    # YAML's true/false are Python bools, which are ints: accepted only where bool is declared
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _check_value(value, spec: Field, name: str, path: Path) -> None:
    if not _is_a(value, spec.types):
        raise UserError(f"{path}: '{name}' must be {_type_names(spec.types)}, got {value!r}")
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list):
        if spec.length is not None and len(value) != spec.length:
            raise UserError(f"{path}: '{name}' must be a list of {spec.length}, got {value!r}")
        if not all(_is_a(item, spec.items or ()) for item in value):
            raise UserError(f"{path}: '{name}' must be a list of {_type_names(spec.items or ())}, got {value!r}")
    for item in values:
        if spec.minimum is not None and isinstance(item, (int, float)) and not item >= spec.minimum:
            raise UserError(f"{path}: '{name}' must be >= {spec.minimum}, got {value!r}")
        if spec.minimum == 0.0 and spec.length == 2 and not (0 < item < float("inf")):
            raise UserError(f"{path}: '{name}' must be a [low, high] pair with 0 < low <= high, got {value!r}")
        if spec.choices is not None and item is not None and item not in spec.choices:
            raise UserError(f"{path}: '{name}' must be one of {', '.join(map(str, spec.choices))}, got {item!r}")
        if spec.check is not None and item is not None:
            try:
                spec.check(str(item))
            except argparse.ArgumentTypeError as exc:
                raise UserError(f"{path}: '{name}': {exc} (the flag it becomes refuses it)") from None
    if spec.length == 2 and value[0] > value[1]:
        raise UserError(f"{path}: '{name}' must be a [low, high] pair with low <= high, got {value!r}")


def check_mapping(raw, schema: dict, path: Path, prefix: str = "") -> dict:
    """`raw` checked against `schema` (key -> Field, or a nested schema for a section); an unknown key,
    a wrong type or an out-of-range value is a one-line error naming the file and the key."""
    if raw is None and prefix:
        raw = {}
    if not isinstance(raw, dict):
        where = f"'{prefix[:-1]}'" if prefix else "the file"
        raise UserError(f"{path}: {where} must be a mapping of keys ({', '.join(schema)}), got {raw!r}")
    checked = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise UserError(f"{path}: unknown key '{name}' (known: {', '.join(schema)})")
        spec = schema[key]
        if isinstance(spec, dict):
            checked[key] = check_mapping(value, spec, path, f"{name}.")
        else:
            _check_value(value, spec, name, path)
            checked[key] = value
    return checked


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping_without_repeats(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    keys = [loader.construct_object(key_node, deep=True) for key_node, _ in node.value]
    repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if repeated:
        raise yaml.constructor.ConstructorError(None, None, f"key(s) {repeated} given twice", node.start_mark)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def load_yaml(path: str | Path, what: str, flag: str = "--config"):
    """The parsed YAML file at `path` (resolved as `resolve_config_path` does); a missing, unreadable
    or malformed file is a one-line error."""
    path = safe_io.readable(resolve_config_path(path, flag), what)
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader), path
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid YAML ({' '.join(str(exc).split())[:200]})") from None


def load_config(path: str | Path) -> dict:
    """Read and check a dataset YAML; missing sections are empty dicts."""
    raw, path = load_yaml(path, "config YAML")
    config = check_mapping(raw or {}, SCHEMA, path)
    return {section: config.get(section, {}) for section in SCHEMA}


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

"""Model identity (docs/files.md, "Model names"): a model's name is the stem of its prediction file.

Names are compared case-insensitively everywhere: a duos CSV row `ResNet18` finds `resnet18.npz`, a
temperature row written as `convnext_base` serves `ConvNeXt_Base`. Files a stage creates are spelt as
the model's `configs/backbones.csv` row (`--model convnext_base` writes `ConvNeXt_Base.npz`), with the
derived suffixes kept (`_s1`, `_trial0`, `_greedy`, `_uniform`, `_ivon`, `_ivon_det`, `_LA`). Two files whose
names differ only by case are an error naming both, and a name that becomes part of a path must be a
plain name.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from utils.errors import UserError

SOURCES = ("torchvision", "timm")     # where a backbone's architecture and weights come from

# Every derived model name is <backbone><suffix> (spelt lowercase, but `_LA`): (suffix pattern, what it is, whether
# it costs what its backbone costs per image, whether the report sets it against its temperature-scaled backbone)
DERIVED = (
    (r"_s\d+", "another seed of the backbone (hp_tune --save_name)", True, False),
    (r"_trial\d+", "one fine-tuning trial (soup/<model>/trial<i>.pth)", True, False),
    (r"_greedy", "the greedy soup", True, True),
    (r"_uniform", "the uniform soup", True, True),
    (r"_ivon_det", "IVON's mean weights", True, True),
    (r"_ivon_mc\d+_r\d+", "one repeat of IVON's Monte-Carlo predictive", False, True),
    (r"_ivon", "IVON's Monte-Carlo predictive", False, True),
    (r"_la", "the last-layer Laplace predictive", False, True),
)


def _suffixes(rows) -> re.Pattern:
    return re.compile("(?:" + "|".join(pattern for pattern, *_ in rows) + ")$", re.IGNORECASE)


DERIVED_SUFFIXES = _suffixes(DERIVED)
SAME_COST_SUFFIXES = _suffixes(row for row in DERIVED if row[2])
BASELINE_SUFFIXES = _suffixes(row for row in DERIVED if row[3])
SOUP_SUFFIXES = ("_greedy", "_uniform")          # make_soup.py's <arch>_greedy, <arch>_uniform


def fold(name) -> str:
    return str(name).casefold()


def baseline_backbone(name: str) -> str | None:
    """The backbone a baseline's prediction file derives from (`ResNet50_ivon_mc4_r0` -> `ResNet50`), else None."""
    match = BASELINE_SUFFIXES.search(str(name))
    return str(name)[: match.start()] if match and match.start() > 0 else None


def check_plain_name(name: str, what: str) -> str:
    """`name` unchanged if it can safely be a file name: no separators, not empty, no leading dot (a hidden file,
    which no stage lists, and '..'), no control characters or surrounding spaces."""
    text = str(name)
    if (not text.strip() or text.startswith(".") or any(c in text for c in "/\\") or text != text.strip()
            or any(ord(c) < 32 or ord(c) == 127 for c in text)):
        raise UserError(f"{what}: {text!r} is not a plain name (no path separators, no leading '.': a hidden file no "
                        f"stage reads, or '..'; no control characters, no leading or trailing spaces); it becomes part "
                        f"of a file name")
    return text


def backbone_row(name: str, backbone_names: Iterable[str] | None,
                 suffixes: re.Pattern = DERIVED_SUFFIXES) -> tuple[str, str] | None:
    """(the backbones.csv row spelling, the derived suffixes in canonical spelling) when `name`, or
    its base before derived suffixes, matches a row case-insensitively; else None."""
    rows: dict[str, str] = {}
    for row in backbone_names or ():
        rows.setdefault(fold(row), str(row))
    base, found = str(name), []
    while True:
        if fold(base) in rows:
            return rows[fold(base)], "".join(reversed(found))
        match = suffixes.search(base)
        if match is None or match.start() == 0:
            return None
        suffix = match.group(0)
        found.append("_LA" if suffix.lower() == "_la" else suffix.lower())
        base = base[: match.start()]


def canonical_name(name: str, backbone_names: Iterable[str] | None) -> str:
    """`name` spelt as its backbones.csv row when it (or its base before derived suffixes such as
    `_s1`, `_greedy`, `_ivon`, `_LA`) matches a row case-insensitively; else `name` unchanged."""
    match = backbone_row(name, backbone_names)
    return str(name) if match is None else match[0] + match[1]


class NameMap(dict):
    """A dict keyed by model names, or tuples of names, whose lookups ignore case. Keys keep the
    spelling they were stored with (iteration yields them); `spelling(key)` gives it for any case."""

    def __init__(self, items: Iterable[tuple] = ()):
        super().__init__()
        self._index: dict = {}
        for key, value in items:
            self[key] = value

    @staticmethod
    def _fold(key):
        return tuple(fold(k) for k in key) if isinstance(key, tuple) else fold(key)

    def __setitem__(self, key, value) -> None:
        stored = self._index.get(self._fold(key))
        if stored is not None and stored != key:
            super().__delitem__(stored)              # the newest spelling wins
        self._index[self._fold(key)] = key
        super().__setitem__(key, value)

    def __getitem__(self, key):
        stored = self._index.get(self._fold(key))
        if stored is None:
            raise KeyError(key)
        return super().__getitem__(stored)

    def __contains__(self, key) -> bool:
        return self._fold(key) in self._index

    def get(self, key, default=None):
        return self[key] if key in self else default

    def spelling(self, key):
        return self._index[self._fold(key)]


def unique_by_case(names: Iterable[str], where: str) -> None:
    """Error when a name is listed twice, or two names differ only by case (one model, two spellings)."""
    seen: dict[str, str] = {}
    for name in names:
        if fold(name) not in seen:
            seen[fold(name)] = name
            continue
        other = seen[fold(name)]
        if other == name:
            raise UserError(f"{where}: {name} is listed twice")
        raise UserError(f"{where}: '{other}' and '{name}' differ only by case, so they name the same model; "
                        f"remove or rename one of them")


def find_file(folder: str | Path, filename: str) -> Path | None:
    """`folder/filename`, or the one entry of `folder` whose name equals `filename` ignoring case;
    None when there is none, an error when two entries differ only by case."""
    folder = Path(folder)
    exact = folder / filename
    if not folder.is_dir():
        return None
    matches = sorted(p for p in folder.iterdir() if fold(p.name) == fold(filename))
    if len(matches) > 1:
        raise UserError(f"{folder}: {', '.join(p.name for p in matches)} differ only by case, so they name the same "
                        f"model; remove or rename one of them")
    if matches:
        return matches[0]
    return exact if exact.exists() else None


def output_path(folder: str | Path, filename: str) -> Path:
    """Where to write `filename` in `folder`: over an existing file of the same name in another case
    (one model, one file), else `folder/filename`."""
    return find_file(folder, filename) or Path(folder) / filename


CHECKPOINT_STAGES = ("lp", "ff", "soup", "ivon")   # hp_tune's linear probe and fine-tune, make_soup, ivon_train


def checkpoint_dir(root: str | Path, dataset: str, stage: str | None = None) -> Path:
    """The checkpoint layout every training stage shares: <root>/<dataset>/<stage>/ (the dataset's own
    folder, holding optimal_hyperparams_<stage>.csv and ray_results/, when `stage` is None)."""
    if stage is not None and stage not in CHECKPOINT_STAGES:
        raise ValueError(f"unknown checkpoint stage '{stage}' ({', '.join(CHECKPOINT_STAGES)})")
    return Path(root) / dataset / (stage or "")


def checkpoint_path(root: str | Path, dataset: str, stage: str, filename: str) -> Path:
    """<root>/<dataset>/<stage>/<filename>, over an existing file of that name in another case."""
    return output_path(checkpoint_dir(root, dataset, stage), filename)


def existing_path(path: str | Path) -> Path:
    """`path` if it exists, else the file of the same name in its folder ignoring case (so
    `checkpoints/convnext_base_best.pth` finds `checkpoints/ConvNeXt_Base_best.pth`); `path` itself
    when neither exists (the caller reports it)."""
    path = Path(path)
    if path.exists():
        return path
    found = find_file(path.parent, path.name)
    return found if found is not None else path

"""Which pipeline steps have nothing new to do: a step whose command line, code, and every file it reads
or writes are as they were at the end of the last complete run would write the same files again.

A step's files are the folders and files its path flags name (predictions, calibrated temperatures,
results, the duos and backbones CSVs, the checkpoints it predicts), fingerprinted by content (files
over 64 MiB, i.e. checkpoints, by size and modification time); hidden files (locks, temporaries) do not
count; the repository's configs count as code. Datasets (--data_dir) are not fingerprinted: after
changing the data, rerun with `--refresh` (stage 1 itself reuses a complete prediction file). Stamps are
recorded only when a run completes, for every step it ran or reused, so a failed or interrupted run leaves the
last complete run's stamps, which then no longer match.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from utils.files import safe_io

STAMP_FILE = "step_stamps.json"
PATH_FLAGS = ("--predictions_dir", "--calibrated_dir", "--results_dir", "--output_dir", "--model_dir", "--config",
              "--backbone_csv", "--members_csv", "--model_path")
CODE_FOLDERS = ("evaluate", "train", "load_data", "load_models", "utils")
_CONTENT_LIMIT = 64 << 20
_file_digests: dict[tuple, str] = {}        # (path, size, mtime_ns) -> content digest, within one process


def _file_digest(path: Path, stat: os.stat_result) -> str:
    if stat.st_size > _CONTENT_LIMIT:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _file_digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _file_digests[key] = digest.hexdigest()
    return _file_digests[key]


def fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """One digest of every visible file under `paths` (names relative to each path, and contents);
    a path that does not exist counts as absent."""
    digest = hashlib.sha256()
    for root in sorted({str(p) for p in paths}):
        digest.update(f"\0{root}\0".encode())
        top = Path(root)
        if top.is_file():
            digest.update(_file_digest(top, top.stat()).encode())
            continue
        if not top.is_dir():
            digest.update(b"<absent>")
            continue
        for folder, subfolders, files in os.walk(top):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = Path(folder) / name
                digest.update(f"{path.relative_to(top)}\0{_file_digest(path, path.stat())}\0".encode())
    return digest.hexdigest()


def step_paths(argv: list) -> list[str]:
    """The files and folders a step reads or writes: the values of its path flags, each where the stage
    finds it (a config such as `configs/duos.csv` missing from the working folder is the repository's)."""
    from utils.paths import REPO_ROOT
    argv = [str(a) for a in argv]
    paths = [argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag in PATH_FLAGS]
    return [str(REPO_ROOT / p) if not Path(p).exists() and not Path(p).is_absolute() and (REPO_ROOT / p).exists()
            else p for p in paths]


def code_digest(repository: Path) -> str:
    """A digest of the project's Python sources and its configs (the default backbones.csv, duos.csv and
    dataset YAMLs the stages read when no flag names them): changed code or configs may change outputs."""
    sources = sorted(p for folder in CODE_FOLDERS for p in (repository / folder).rglob("*.py"))
    return fingerprint(sources + sorted(p for p in (repository / "configs").glob("*") if p.is_file()))


class Stamps:
    """The stamps file: {step key: fingerprint of the step's files at the end of the last complete run}."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.saved = {}          # a missing or damaged stamps file only means the steps run again
        if not isinstance(self.saved, dict):
            self.saved = {}

    @staticmethod
    def key(script: str, argv: list, code: str) -> str:
        return hashlib.sha256(json.dumps([script, [str(a) for a in argv], code]).encode()).hexdigest()

    def unchanged(self, key: str, paths: list[str]) -> bool:
        return key in self.saved and self.saved[key] == fingerprint(paths)

    def record(self, steps: dict[str, list[str]]) -> None:
        """Stamp these steps (key -> paths) with their files as they are now."""
        self.saved.update({key: fingerprint(paths) for key, paths in steps.items()})
        safe_io.write_text(self.path, json.dumps(self.saved, indent=1, sort_keys=True) + "\n")

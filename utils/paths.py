"""The base layer's paths: where the repository and its configs are, and how a config named on the command line
is found (the working folder first, then the repository). Imports nothing of the project but utils.errors."""
from __future__ import annotations

from pathlib import Path

from utils.errors import UserError

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

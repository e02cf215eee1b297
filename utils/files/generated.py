"""Files a command generates into a folder (the pipeline's duos and backbones CSVs, its slurm scripts): it may
replace what it wrote itself, never a file it did not create.

The folder's `.generated.json` lists each generated file with the SHA-256 of what was written. A file that exists
is replaced only when it is listed with its present content (written by us and not edited since) or already holds
exactly the new content; anything else (a user's own duos.csv, an edited script) is an error naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from utils.errors import UserError
from utils.files import safe_io

MANIFEST = ".generated.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GeneratedFiles:
    """The generated files of one folder, queued into an `Outputs` (see the module's docstring)."""

    def __init__(self, folder: str | os.PathLike, owner: str):
        self.folder, self.owner = Path(folder), owner
        self.manifest_path = self.folder / MANIFEST
        self.listed: dict[str, str] = {}
        if self.manifest_path.exists():
            try:
                listed = json.loads(safe_io.readable(self.manifest_path, "list of generated files").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UserError(f"{self.manifest_path}: not the list of generated files {owner} writes (invalid JSON); "
                                f"move it aside and rerun") from None
            if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
                raise UserError(f"{self.manifest_path}: not the list of generated files {owner} writes; move it aside "
                                f"and rerun")
            self.listed = listed
        self.queued: dict[str, str] = {}

    def _key(self, path: Path) -> str:
        try:
            return os.path.relpath(path.resolve(), self.folder.resolve())
        except ValueError:                       # another drive (Windows): the absolute path
            return str(path.resolve())

    def write(self, outputs: safe_io.Outputs, path: str | os.PathLike, data: bytes, what: str) -> None:
        """Queue `data` for `path` in `outputs`, unless `path` holds a file this owner did not write."""
        path = Path(path)
        key = self._key(path)
        if path.is_file():
            present = _sha256(path.read_bytes())
            if present != _sha256(data) and self.listed.get(key) != present:
                why = f"was edited since {self.owner} wrote it" if key in self.listed else f"{self.owner} did not write it"
                raise UserError(f"{path}: exists and {why}; it is left as it is: move it aside (or point the "
                                f"configuration at it, e.g. duos_csv:), then rerun")
        outputs.write_bytes(path, data, what)
        self.queued[key] = _sha256(data)

    def queue_manifest(self, outputs: safe_io.Outputs) -> None:
        """Queue the updated list with the other outputs, so it changes only when they do."""
        if self.queued:
            listed = {**self.listed, **self.queued}
            outputs.write_text(self.manifest_path, json.dumps(listed, indent=1, sort_keys=True) + "\n",
                               "list of generated files")

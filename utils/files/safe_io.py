"""Safe file handling: checked reads, atomic writes and locked CSV upserts.

Every file a stage reads is opened through `readable`/`read_table`, so a missing, unreadable or
malformed file is a one-line error naming it. Every file a stage writes goes through here, so a
killed job never leaves a truncated file under its final name (its temporary file is swept by the
next write to that folder) and concurrent array jobs that share a CSV never lose each other's rows.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from utils.cli.parsing import UserError

# `.<target>.<8 random chars>.tmp`, as `atomic_path` names them (mkstemp's alphabet)
_TMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
STALE_TMP_SECONDS = 3600        # no write of ours leaves a temporary file untouched this long


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success fsync and rename it over `path`.

    On any exception the temporary file is removed and the target is left untouched.
    """
    path = Path(path)
    make_folder(path.parent)
    sweep_stale_temporaries(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise UserError(f"{path.parent}: permission denied writing there; choose another output folder") from None
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot write there ({exc.strerror}); choose another output folder") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600; colleagues on a cluster read what the umask allows
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def sweep_stale_temporaries(folder: Path, max_age: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove temporary files of our own naming that a killed write left in `folder` (those untouched
    for `max_age` seconds; a live write in a concurrent job keeps touching its own)."""
    removed, now = [], time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if _TMP_PATTERN.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_folder(folder: str | os.PathLike) -> None:
    """mkdir -p, with a one-line error when a file is in the way or the place is not writable."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{folder}: cannot create this output folder, a file of that name is in the way; choose "
                        f"another folder") from None
    except PermissionError:
        raise UserError(f"{folder}: permission denied creating this output folder; choose another folder") from None


def readable(path: str | os.PathLike, what: str) -> Path:
    """`path` if it is a file this process can read; else a one-line error naming it and `what` it is."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give the {what} file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise UserError(f"{path}: permission denied reading the {what}; ask its owner to make it readable") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    return path


def read_table(path: str | os.PathLike, what: str, advice: str = "", **read_csv_args) -> pd.DataFrame:
    """A CSV file as a DataFrame; a missing, unreadable, empty, binary or ragged file is a one-line
    error naming it and `what` it is, followed by `advice` (never a traceback, never a guess)."""
    path = readable(path, what)
    advice = f"; {advice}" if advice else ""
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the {what} is an empty file (no header){advice}")
    try:
        with warnings.catch_warnings():
            # a row with more fields than the header: pandas would shift the columns (or drop cells) silently
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, index_col=False, **read_csv_args)
    except pd.errors.ParserWarning:
        raise UserError(f"{path}: a row of the {what} has more fields than its header{advice}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: cannot parse the {what} ({' '.join(str(exc).split())[:160]}){advice}") from None


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """numpy savez (no pickle) to `path`, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    write_text(path, buffer.getvalue())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive POSIX lock on the side file `.<name>.lock` beside `path`.

    POSIX (fcntl) locks also hold across hosts on NFS with lockd, where cluster jobs share folders.
    The side file is never removed, so every process locks the same inode.
    """
    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    make_folder(lock_path.parent)
    try:
        handle = open(lock_path, "a")
    except PermissionError:
        raise UserError(f"{path.parent}: permission denied writing there; choose another output folder") from None
    except IsADirectoryError:
        raise UserError(f"{lock_path}: is a folder; remove it (it is this stage's lock file)") from None
    with handle:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_UN)


class LockedTable:
    """A CSV table read under its file lock; `upsert` changes it, and it is written on leaving
    `locked_table` (only if changed)."""

    def __init__(self, path: Path, key_columns: Sequence[str], columns: Sequence[str] | None,
                 required: Sequence[str] = ()):
        self.path, self.key_columns, self.columns, self.changed = path, list(key_columns), columns, False
        if path.exists() and (path.is_dir() or path.stat().st_size > 0):
            # an existing file that cannot be read is never replaced: it may hold other jobs' results
            self.frame = read_table(path, "existing table", "it was left as it is: repair it or move it aside, "
                                    "then rerun", keep_default_na=False, na_values=[""],
                                    dtype={k: str for k in self.key_columns})
            missing = [k for k in [*self.key_columns, *required] if k not in self.frame.columns]
            if missing:
                raise UserError(f"{path}: the existing table lacks column(s) {missing}; it was left as it is: "
                                f"repair its header or move it aside, then rerun")
            blank = self.frame[self.key_columns].isna().any(axis=1).to_numpy()
            if blank.any():                        # a stale row no upsert could ever replace
                raise UserError(f"{path}: data row {int(blank.argmax()) + 1} has an empty {', '.join(self.key_columns)} "
                                f"cell; it was left as it is: repair the row or move the file aside, then rerun")
            repeated = pd.Series(self._keys(self.frame)).duplicated().to_numpy()
            if repeated.any():                     # an upsert would silently keep only one of them
                row = self.frame[self.key_columns].iloc[int(repeated.argmax())].tolist()
                raise UserError(f"{path}: two rows for {', '.join(map(str, row))} (names in any case are one "
                                f"model); keep one and rerun")
        else:
            self.frame = pd.DataFrame(columns=list(columns or key_columns))

    def _keys(self, frame: pd.DataFrame, columns: Sequence[str] | None = None) -> list[tuple]:
        # model names are one identity in any case (contract §2): `resnet18` and `ResNet18` are one row
        return [tuple(str(v).strip().casefold() for v in key)
                for key in frame[list(columns or self.key_columns)].astype(str).itertuples(index=False, name=None)]

    def get(self, **key) -> dict | None:
        """The stored row whose key columns equal `key` (ignoring case), or None."""
        wanted = tuple(str(key[k]).strip().casefold() for k in self.key_columns)
        for position, existing in enumerate(self._keys(self.frame)):
            if existing == wanted:
                return self.frame.iloc[position].to_dict()
        return None

    def upsert(self, rows: pd.DataFrame, replace_groups: Sequence[str] | None = None) -> None:
        """Insert or replace `rows` by key; with `replace_groups` (a subset of the key columns), every existing
        row of a group the new rows cover goes too (a rerun's curve replaces the whole earlier curve)."""
        new_keys = set(self._keys(rows))
        keep = [key not in new_keys for key in self._keys(self.frame)]
        if replace_groups and len(self.frame):
            new_groups = set(self._keys(rows, replace_groups))
            keep = [k and group not in new_groups for k, group in zip(keep, self._keys(self.frame, replace_groups))]
        merged = pd.concat([self.frame[keep], rows], ignore_index=True) if len(self.frame) else rows.reset_index(drop=True)
        self.frame = merged[~pd.Series(self._keys(merged)).duplicated(keep="last").to_numpy()]
        self.changed = True


def check_table(path: str | os.PathLike, key_columns: Sequence[str]) -> None:
    """Fail now, before hours of work, if an existing table that the stage will add rows to at its end
    cannot be read (corrupt, ragged, a folder, duplicate keys)."""
    path = Path(path)
    if path.exists():
        LockedTable(path, key_columns, None)


@contextlib.contextmanager
def locked_table(path: str | os.PathLike, key_columns: Sequence[str], columns: Sequence[str] | None = None,
                 required: Sequence[str] = ()) -> Iterator[LockedTable]:
    """Read-modify-write of a shared CSV under an exclusive lock (concurrent array jobs lose nothing). An
    existing table must have the key columns and the `required` ones (else it is left as it is)."""
    path = Path(path)
    with file_lock(path):
        table = LockedTable(path, key_columns, columns, required)
        yield table
        if table.changed:
            frame = table.frame
            if columns is not None:
                frame = frame[[c for c in columns if c in frame.columns] + [c for c in frame.columns if c not in columns]]
            write_csv(path, frame)


def upsert_csv(path: str | os.PathLike, rows: pd.DataFrame, key_columns: Sequence[str],
               columns: Sequence[str] | None = None, required: Sequence[str] = (),
               replace_groups: Sequence[str] | None = None) -> pd.DataFrame:
    """Insert or replace `rows` in the CSV at `path`, keyed by `key_columns`, under a file lock.

    Rows of the existing file whose key is not in `rows` (nor, with `replace_groups`, in a group of them) are
    kept in their order; new and replaced rows follow. Returns the table as written.
    """
    with locked_table(path, key_columns, columns, required) as table:
        table.upsert(rows, replace_groups)
    return table.frame

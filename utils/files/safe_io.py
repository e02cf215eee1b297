"""Safe file handling: checked reads, atomic writes, locked CSV upserts and outputs that commit together.

Every file a stage reads is opened through `readable`/`read_table`, so a missing, unreadable or
malformed file is a one-line error naming it. Every file a stage writes goes through here, so a
killed job never leaves a truncated file under its final name (its temporary file is swept by the
next write to that folder) and concurrent array jobs that share a CSV never lose each other's rows.
A stage that writes several files collects them in one `Outputs` and commits them together: every file
is rendered to a temporary first and renamed only when all of them are, so an error at any point leaves
every file as it was (see `Outputs`).
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
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from utils.errors import UserError

# `.<target>.<8 random chars>.tmp` (or `.bak`, a replaced file kept until a commit ends), as `atomic_path` and
# `Outputs` name them (mkstemp's alphabet)
_TMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|bak)$")
STALE_TMP_SECONDS = 3600        # no write of ours leaves a temporary file untouched this long


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success fsync and rename it over `path`.

    On any exception the temporary file is removed and the target is left untouched.
    """
    path = Path(path)
    make_folder(path.parent)
    sweep_stale_temporaries(path.parent)
    fd, tmp = _new_temporary(path)
    os.close(fd)
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
    """One file, atomically (a stage that writes several collects them in `Outputs`)."""
    replace_together({Path(path): bytes(data)})


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """numpy savez (no pickle) to `path`, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    write_text(path, frame_as_csv(frame))


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
        # model names are one identity in any case (docs/files.md, "Model names"): `resnet18` and `ResNet18` are one row
        return [tuple(str(v).strip().casefold() for v in key)
                for key in frame[list(columns or self.key_columns)].astype(str).itertuples(index=False, name=None)]

    def get(self, **key) -> dict | None:
        """The stored row whose key columns equal `key` (ignoring case), or None."""
        wanted = tuple(str(key[k]).strip().casefold() for k in self.key_columns)
        for position, existing in enumerate(self._keys(self.frame)):
            if existing == wanted:
                return self.frame.iloc[position].to_dict()
        return None

    def upsert(self, rows: pd.DataFrame, replace_groups: Sequence[str] | None = None,
               drop_groups: pd.DataFrame | None = None) -> None:
        """Insert or replace `rows` by key; with `replace_groups` (a subset of the key columns), every existing
        row of a group the new rows cover goes too (a rerun's curve replaces the whole earlier curve), and so does
        every row of a group listed in `drop_groups` (a model rerun without the split this table holds)."""
        new_keys = set(self._keys(rows))
        keep = [key not in new_keys for key in self._keys(self.frame)]
        if replace_groups and len(self.frame):
            gone = set(self._keys(rows, replace_groups))
            if drop_groups is not None and len(drop_groups):
                gone |= set(self._keys(drop_groups, replace_groups))
            keep = [k and group not in gone for k, group in zip(keep, self._keys(self.frame, replace_groups))]
        if len(rows) == 0 and all(keep):
            return
        merged = pd.concat([self.frame[keep], rows], ignore_index=True) if len(self.frame) else rows.reset_index(drop=True)
        self.frame = merged[~pd.Series(self._keys(merged)).duplicated(keep="last").to_numpy()]
        self.changed = True

    def ordered(self) -> pd.DataFrame:
        """The table with the declared columns first, in their order, and any others after them."""
        if self.columns is None:
            return self.frame
        columns = self.columns
        return self.frame[[c for c in columns if c in self.frame.columns] + [c for c in self.frame.columns
                                                                              if c not in columns]]


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
            write_csv(path, table.ordered())


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


# ----------------------------------------------------------------------------- outputs that commit together

# The two file-system steps of a commit, indirect so that tests can make the k-th of either fail.
_replace = os.replace


def _new_temporary(path: Path) -> tuple[int, Path]:
    """(open descriptor, path) of a new `.<name>.<8 chars>.tmp` beside `path`; a one-line error where none can be made."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise UserError(f"{path.parent}: permission denied writing there; choose another output folder") from None
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot write there ({exc.strerror}); choose another output folder") from None
    return fd, Path(name)


def _write_temporary(path: Path, data: bytes) -> Path:
    """`data` in a new temporary file beside `path`, fsynced, with the permissions a plain open would give."""
    fd, tmp = _new_temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _backup(path: Path) -> Path:
    """A hard link to the file at `path` (`.<name>.<8 chars>.bak`), so that a failed commit can put it back."""
    while True:
        backup = path.with_name(f".{path.name}.{os.urandom(6).hex()[:8]}.bak")
        try:
            os.link(path, backup)
            return backup
        except FileExistsError:
            continue


def replace_together(contents: dict[Path, bytes]) -> None:
    """Write every `contents[path]` to a temporary beside `path`, then rename them all over their targets; when a
    rename fails, the targets already replaced get their old files back (new ones are removed), so the folders
    end as they began."""
    temporaries: dict[Path, Path] = {}
    replaced: list[tuple[Path, Path | None]] = []
    try:
        for path, data in contents.items():
            make_folder(path.parent)
            sweep_stale_temporaries(path.parent)
            temporaries[path] = _write_temporary(path, data)
        try:
            for path, tmp in temporaries.items():
                backup = _backup(path) if path.exists() else None
                try:
                    _replace(tmp, path)
                except BaseException:
                    if backup is not None:
                        backup.unlink(missing_ok=True)
                    raise
                replaced.append((path, backup))
        except BaseException:
            for path, backup in reversed(replaced):
                with contextlib.suppress(OSError):
                    if backup is None:
                        path.unlink()
                    else:
                        os.replace(backup, path)
            replaced.clear()
            raise
    except PermissionError as exc:
        raise UserError(f"{exc.filename or 'an output folder'}: permission denied writing there; choose another "
                        f"output folder (nothing was changed)") from None
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
        for _, backup in replaced:
            if backup is not None:
                backup.unlink(missing_ok=True)
    for folder in {path.parent for path in contents}:
        _fsync_dir(folder)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


class Outputs:
    """Every file one run of a stage writes, committed together at its end.

    A stage names its targets as soon as it knows them (`expect`: the folder can be made and written, the target
    is no folder and no input of the run, an existing table it adds rows to can be read), queues each file's
    content as it is computed (`write_*`, `upsert`) and calls `commit()` last. The commit locks every table it
    upserts (in path order, so concurrent jobs cannot deadlock), merges the new rows under the locks, writes every
    file to a temporary, and renames them only when all are written (`replace_together`). An error before or
    during the commit leaves every target as it was; only the hidden lock files of the tables may be new."""

    def __init__(self, inputs: Iterable[str | os.PathLike] = ()):
        self._inputs: dict[Path, str] = {}
        self._files: dict[Path, bytes] = {}
        self._tables: dict[Path, dict] = {}
        self.add_inputs(inputs)

    def add_inputs(self, paths: Iterable[str | os.PathLike]) -> None:
        """Files this run reads that no output may replace (prediction files, the duos CSV, ...)."""
        for path in paths:
            if path is not None:
                self._inputs.setdefault(Path(path).resolve(), str(path))

    def expect(self, path: str | os.PathLike, what: str = "output") -> Path:
        """Check now, before any work, that `path` can be written (see the class); returns it."""
        path = Path(path)
        target = path.resolve()
        if target in self._inputs:
            raise UserError(f"{path}: the {what} would replace {self._inputs[target]}, which this run reads; choose "
                            f"another output")
        if path.is_dir():
            raise UserError(f"{path}: is a folder, where the {what} file belongs; move it aside or choose another output")
        existing = _nearest_existing(path.parent)
        if not existing.is_dir():
            raise UserError(f"{existing}: cannot create the output folder {path.parent}, a file of that name is in the "
                            f"way; choose another folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            if existing != path.parent:
                raise UserError(f"{path.parent}: permission denied creating this output folder; choose another folder")
            raise UserError(f"{existing}: permission denied writing there; choose another output folder")
        lock = path.parent / f".{path.name}.lock"
        if lock.is_dir():
            raise UserError(f"{lock}: is a folder; remove it (it is this stage's lock file)")
        if path.exists() and not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
            raise UserError(f"{path}: permission denied replacing it; choose another output folder")
        return path

    def write_bytes(self, path: str | os.PathLike, data: bytes, what: str = "output") -> Path:
        path = self.expect(path, what)
        self._files[path] = bytes(data)
        return path

    def write_text(self, path: str | os.PathLike, text: str, what: str = "output") -> Path:
        return self.write_bytes(path, text.encode("utf-8"), what)

    def write_csv(self, path: str | os.PathLike, frame: pd.DataFrame, what: str = "output") -> Path:
        return self.write_text(path, frame_as_csv(frame), what)

    def write_npz(self, path: str | os.PathLike, arrays: dict, what: str = "output") -> Path:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return self.write_bytes(path, buffer.getvalue(), what)

    def expect_table(self, path: str | os.PathLike, key_columns: Sequence[str], required: Sequence[str] = (),
                     what: str = "table", validate: Callable[[pd.DataFrame, Path], object] | None = None) -> Path:
        """`expect`, and an existing table at `path` must be one this stage can add rows to (readable, its key
        columns and the `required` ones present, each key once, and whatever `validate(frame, path)` checks); else
        it is named and left as it is."""
        path = self.expect(path, what)
        if path.exists():
            table = LockedTable(path, key_columns, None, required)
            if validate is not None:
                validate(table.frame, path)
        return path

    def upsert(self, path: str | os.PathLike, rows: pd.DataFrame, key_columns: Sequence[str],
               columns: Sequence[str] | None = None, required: Sequence[str] = (),
               replace_groups: Sequence[str] | None = None, drop_groups: pd.DataFrame | None = None,
               validate: Callable[[pd.DataFrame, Path], object] | None = None) -> Path:
        """Queue `rows` for the table at `path` (see `LockedTable.upsert`); the table is read, checked with
        `validate` and merged under its lock at commit time, so concurrent jobs' rows are kept."""
        path = self.expect_table(path, key_columns, required, validate=validate)
        entry = self._tables.setdefault(path, {"key_columns": list(key_columns), "columns": columns,
                                               "required": list(required), "validate": validate, "operations": []})
        entry["operations"].append((rows, replace_groups, drop_groups))
        return path

    @property
    def targets(self) -> list[Path]:
        return sorted({*self._files, *self._tables})

    def commit(self) -> list[Path]:
        """Write every queued file together (see the class); returns the paths written."""
        for path in self.targets:
            self.expect(path)
        with contextlib.ExitStack() as locks:
            for path in sorted(self._tables):
                locks.enter_context(file_lock(path))
            contents = dict(self._files)
            for path, entry in self._tables.items():
                table = LockedTable(path, entry["key_columns"], entry["columns"], entry["required"])
                if entry["validate"] is not None and path.exists():
                    entry["validate"](table.frame, path)
                for rows, replace_groups, drop_groups in entry["operations"]:
                    table.upsert(rows, replace_groups, drop_groups)
                if table.changed:
                    contents[path] = frame_as_csv(table.ordered()).encode("utf-8")
            replace_together(contents)
        return self.targets


def frame_as_csv(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()

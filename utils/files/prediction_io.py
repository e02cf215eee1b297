"""Prediction files: one model's logits, labels and sample ids per split (docs/files.md).

Formats read: the project's NPZ and CSV, and the official code's `y-prediction/<dataset>/` tree.
Every read validates the data (finite logits, labels in range, unique ids, non-empty splits) and
raises `UserError` naming the file, so later stages can trust what they are given. Two prediction
sets are combined by sample id, never by row position (`align`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils.errors import UserError, warn
from utils.files import safe_io
from utils.files.model_names import NameMap, check_plain_name, existing_path, find_file, fold, unique_by_case
from utils.maths.uncertainty_metrics import log_normalizer

SPLITS = ("val", "test", "ood_test")
# the test images under a corruption at a severity (stage 1's --corruptions, load_data/corruptions.py):
# c_<corruption>_<1-5>
CORRUPTION_NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "brightness", "contrast",
                    "pixelate", "jpeg_compression")
CORRUPTION_SPLIT = re.compile(rf"c_({'|'.join(CORRUPTION_NAMES)})_[1-5]")


def is_split_name(name: str) -> bool:
    return name in SPLITS or CORRUPTION_SPLIT.fullmatch(name) is not None


def split_order(names) -> list[str]:
    """Splits in file order: val, test, ood_test, then the corruption splits by name."""
    return [s for s in SPLITS if s in names] + sorted(n for n in names if n not in SPLITS)
FEATURES_SUFFIX = ".features.npz"


@dataclass
class Split:
    logits: np.ndarray   # float [N, K]; logits or log-probabilities
    labels: np.ndarray   # int64 [N]
    ids: np.ndarray      # int64 or str [N], unique

    def __len__(self) -> int:
        return len(self.labels)


DIGEST_LENGTH = 16        # hex characters of SHA-256 kept: 64 bits tell apart any two prediction sets a user makes


def _split_digest(name: str, split: Split, kind: str) -> str:
    """SHA-256 of one split (its name, the kind, logits as stored, labels, ids), rows in their order: the order is
    part of what a split is, since the ranking metrics break ties in uncertainty by sample order."""
    hasher = hashlib.sha256()
    ids = np.asarray(split.ids)
    logits = np.ascontiguousarray(split.logits)
    labels = split.labels
    hasher.update(f"{name}|{kind}|{logits.dtype.str}|{logits.shape}|".encode())
    hasher.update(memoryview(logits).cast("B"))
    hasher.update(memoryview(np.ascontiguousarray(labels, dtype=np.int64)).cast("B"))
    if ids.dtype.kind in "iu":
        hasher.update(memoryview(np.ascontiguousarray(ids, dtype=np.int64)).cast("B"))
    else:
        hasher.update("\0".join(map(str, ids.tolist())).encode("utf-8"))
    return hasher.hexdigest()[:DIGEST_LENGTH]


@dataclass
class PredictionSet:
    model: str
    splits: dict[str, Split]
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"
    _digests: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def split_digest(self, name: str) -> str:
        """What one split of these predictions is, in 16 hex characters (SHA-256 of its logits as stored, labels and
        ids, in row order, and the kind). A temperature records the digest of the val split it was fitted on."""
        if name not in self._digests:
            self._digests[name] = _split_digest(name, self.split(name), self.meta.get("kind", "logits"))
        return self._digests[name]

    @property
    def digest(self) -> str:
        """What these predictions are, in 16 hex characters: a digest of every split's `split_digest`. Every result
        row records the digests of the prediction sets it was computed from, so that a reader can tell whether two
        files were computed from the same predictions."""
        if "*" not in self._digests:
            parts = "|".join(f"{name}:{self.split_digest(name)}" for name in sorted(self.splits))
            self._digests["*"] = hashlib.sha256(parts.encode()).hexdigest()[:DIGEST_LENGTH]
        return self._digests["*"]

    @property
    def num_classes(self) -> int:
        return next(iter(self.splits.values())).logits.shape[1]

    @property
    def dataset(self) -> str | None:
        return self.meta.get("dataset")

    def split(self, name: str, purpose: str = "") -> Split:
        if name not in self.splits:
            why = f" (needed {purpose})" if purpose else ""
            raise UserError(f"{self.source}: no '{name}' split{why}; it has {sorted(self.splits)}")
        return self.splits[name]


# ----------------------------------------------------------------------------- validation

def _number_array(values, source: str, name: str, what: str) -> np.ndarray:
    """`values` as a plain numeric array: booleans, complex numbers, text and records are refused,
    since any conversion of them would be a guess."""
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        kinds = {"b": "True/False values", "c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects",
                 "V": "records (a structured array)", "M": "dates", "m": "time spans"}
        raise UserError(f"{source}: split '{name}' {what} are {kinds.get(array.dtype.kind, array.dtype)}, "
                        f"not real numbers")
    return array


def _sample_ids(values, source: str, name: str, num_rows: int) -> np.ndarray:
    """Sample ids as int64 (whole numbers) or str (anything else that names an image); missing,
    empty or NaN ids are refused: two of them could not be told apart."""
    ids = np.asarray(values)
    if ids.ndim != 1 or len(ids) != num_rows:
        raise UserError(f"{source}: split '{name}' needs one sample id per row ({num_rows}), got shape {ids.shape}")
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64, copy=False)
    if ids.dtype.kind == "f":
        if not np.isfinite(ids).all():
            raise UserError(f"{source}: split '{name}' has {int((~np.isfinite(ids)).sum())} NaN or inf sample ids")
        if not (ids == np.round(ids)).all():
            raise UserError(f"{source}: split '{name}' has fractional sample ids (e.g. {ids[ids != np.round(ids)][0]})")
        return ids.astype(np.int64)
    if ids.dtype.kind not in "UO":
        raise UserError(f"{source}: split '{name}' sample ids must be whole numbers or text, got {ids.dtype}")
    if ids.dtype.kind == "O" and not all(isinstance(v, str) for v in ids):
        raise UserError(f"{source}: split '{name}' has missing or non-text sample ids")
    ids = ids.astype(str)
    blank = int((np.char.strip(ids) == "").sum())
    if blank:
        raise UserError(f"{source}: split '{name}' has {blank} empty sample ids")
    return ids


# What a prediction file's arrays hold (meta "kind" of an NPZ, a `kind` column of a CSV or of the official layout's
# raw CSVs, kind= of the numpy API): logits (default), log_probs (log p: softmax(log p) = p, used as given), or
# probs (p, converted on reading to log max(p, PROBABILITY_FLOOR); softmax renormalises rows whose sum drifted).
# Rows count as probabilities when every entry lies in [0, 1] and every row sums to 1, within SUM_TOLERANCE (wide
# enough for probabilities rounded to two decimals; no logits look like that), as percentages when the same holds
# for 100, as log-probabilities when their exponentials sum to 1 within it.
KINDS = ("logits", "log_probs", "probs")
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)     # ~1.2e-38, log -87.3: a probability rounded to 0 in float32
SUM_TOLERANCE = 0.1
_DECLARE = ('declare what they are: "kind": "probs" in an NPZ\'s meta, a `kind` column holding probs in a CSV, '
            'kind="probs" in utils/api')


def _rows_sum_to(values: np.ndarray, total: float) -> bool:
    """Every entry in [0, total] and every row summing to `total`, both within SUM_TOLERANCE (relative)."""
    if not (values.min() >= 0 and values.max() <= total * (1 + SUM_TOLERANCE)):
        return False
    return bool(np.all(np.abs(values.sum(axis=1, dtype=np.float64) / total - 1) <= SUM_TOLERANCE))


def _is_probabilities(values: np.ndarray) -> bool:
    return _rows_sum_to(values, 1.0)


def as_logits(values: np.ndarray, kind: str, source: str, name: str) -> np.ndarray:
    """The split's array as the stages use it (logits, or log-probabilities that serve as logits), after checking
    it is what `kind` declares: probabilities declared as logits (the usual `predict_proba` mistake) are refused,
    never used as logits."""
    if kind not in KINDS:
        raise UserError(f"{source}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "probs":
        if not _is_probabilities(values):
            worst = int(np.argmax(np.abs(values.sum(axis=1, dtype=np.float64) - 1) + (values.min(axis=1) < 0)))
            percent = " (percentages? divide them by 100)" if _rows_sum_to(values, 100.0) else ""
            raise UserError(f"{source}: split '{name}' is declared kind 'probs' but row {worst + 1} is no probability "
                            f"vector (entries outside [0, 1], or it sums to {float(values[worst].sum()):.6g}, not 1 "
                            f"within {SUM_TOLERANCE:g}){percent}; export the model's probabilities")
        return np.log(np.maximum(values, PROBABILITY_FLOOR)).astype(values.dtype, copy=False)
    if kind == "log_probs":
        norms = log_normalizer(values)
        worst = int(np.argmax(np.abs(norms)))
        if abs(np.expm1(norms[worst])) > SUM_TOLERANCE:
            raise UserError(f"{source}: split '{name}' is declared kind 'log_probs' but row {worst + 1}'s probabilities "
                            f"sum to {float(np.exp(norms[worst])):.6g}, not 1; export log-probabilities, or declare "
                            f"what the array holds")
        return values
    if _is_probabilities(values):
        raise UserError(f"{source}: split '{name}' holds probabilities (every entry in [0, 1], every row summing to 1 "
                        f"within {SUM_TOLERANCE:g}), but they are declared as logits, which would give wrong numbers; "
                        f"{_DECLARE}")
    if _rows_sum_to(values, 100.0):
        raise UserError(f"{source}: split '{name}' holds percentages (every row summing to 100), but they are "
                        f"declared as logits; divide them by 100 and {_DECLARE}")
    return values


def validated_split(split: Split, source: str, name: str, kind: str = "logits") -> Split:
    """One split checked as every reader checks it (see `_validate_split`), its array converted from `kind`."""
    return _validate_split(split, source, name, kind)


def _validate_split(split: Split, source: str, name: str, kind: str = "logits") -> Split:
    logits = _number_array(split.logits, source, name, "logits")
    if logits.ndim != 2:
        raise UserError(f"{source}: split '{name}' logits must be 2-D [N, K], got shape {logits.shape}")
    if logits.shape[0] == 0:
        raise UserError(f"{source}: split '{name}' is empty")
    if logits.shape[1] < 2:
        raise UserError(f"{source}: split '{name}' has {logits.shape[1]} logit column(s); a classifier needs 2 or more")
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float32)
    elif logits.dtype.itemsize > 8:          # float128 and the like: torch reads float16/32/64 only
        logits = logits.astype(np.float64)
    bad_rows = int((~np.isfinite(logits)).any(axis=1).sum())
    if bad_rows:
        raise UserError(f"{source}: split '{name}' has NaN or inf logits in {bad_rows} of {len(logits)} rows")
    logits = as_logits(logits, kind, source, name)
    labels = _number_array(split.labels, source, name, "labels")
    if labels.shape != (logits.shape[0],):
        raise UserError(f"{source}: split '{name}' has labels of shape {labels.shape} for {logits.shape[0]} logit rows")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise UserError(f"{source}: split '{name}' labels must be whole numbers")
    labels = labels.astype(np.int64, copy=False)
    num_classes = logits.shape[1]
    out_of_range = int(((labels < 0) | (labels >= num_classes)).sum())
    if out_of_range:
        raise UserError(f"{source}: split '{name}' has {out_of_range} labels outside [0, {num_classes}) "
                        f"(K = number of logit columns)")
    ids = _sample_ids(split.ids, source, name, len(labels))
    n_unique = len(pd.unique(ids))
    if n_unique != len(ids):
        raise UserError(f"{source}: split '{name}' has {len(ids) - n_unique} duplicate sample ids")
    return Split(logits=logits, labels=labels, ids=ids)


def _validate(pset: PredictionSet) -> PredictionSet:
    """Every split checked; probabilities converted to log-probabilities (the set then holds kind log_probs and
    records what the file held as `stored_kind`)."""
    if not pset.splits:
        raise UserError(f"{pset.source}: no splits found (expected any of {', '.join(SPLITS)})")
    kind = pset.meta.get("kind", "logits")
    if not isinstance(kind, str) or kind not in KINDS:
        raise UserError(f"{pset.source}: kind {kind!r} is not one of {', '.join(KINDS)}")
    for name in list(pset.splits):
        pset.splits[name] = _validate_split(pset.splits[name], pset.source, name, kind)
    if kind == "probs":
        pset.meta.update(kind="log_probs", stored_kind="probs")
    widths = {name: s.logits.shape[1] for name, s in pset.splits.items()}
    if len(set(widths.values())) > 1:
        raise UserError(f"{pset.source}: splits have different numbers of classes {widths}")
    return pset


# ----------------------------------------------------------------------------- reading

def is_features_file(path: str | Path) -> bool:
    return Path(path).name.endswith(FEATURES_SUFFIX)


def read_predictions(path: str | Path) -> PredictionSet:
    """Read one model's prediction file (.npz, .csv, or an official `<split>/raw/<model>.csv`).

    The model's name is the file's stem, whatever its `meta.model` says (a warning names both)."""
    path = Path(path)
    if is_features_file(path):
        raise UserError(f"{path}: a features file (stage 1 --features), not a prediction file; give "
                        f"{path.name[: -len(FEATURES_SUFFIX)]}.npz instead")
    official_root = _official_root_of(path)
    if official_root is not None:
        return read_official(official_root, path.stem)
    if path.suffix not in (".npz", ".csv"):
        if not path.exists():
            raise UserError(f"{path}: prediction file not found")
        raise UserError(f"{path}: unknown prediction file type (expected .npz or .csv)")
    safe_io.readable(path, "prediction file")
    if path.suffix == ".npz":
        pset = _read_npz(path)
    elif path.suffix == ".csv":
        pset = _read_csv(path)
    return _validate(pset)


def _model_name_of(path: Path) -> str:
    """The model a prediction file holds: its name without the suffix, which must be a plain name (it keys every
    table row the model gets)."""
    name = path.name[: -len(path.suffix)] if path.suffix else path.name
    return check_plain_name(name, f"{path}: the model name (the file's name without {path.suffix or 'a suffix'})")


def _npz_problem(exc: Exception) -> str:
    """Why np.load refused a file, without numpy's advice to unpickle it (never safe on a shared folder)."""
    if isinstance(exc, ValueError) and "pickled" in str(exc):
        return "not an NPZ archive of arrays (pickled or unknown data)"
    return f"{type(exc).__name__}: {exc}"


def _read_npz(path: Path) -> PredictionSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise UserError(f"{path}: cannot read NPZ ({_npz_problem(exc)}); regenerate it with stage 1, or write it "
                        "again from your own logits (docs/files.md)") from None
    meta: dict = {}
    if "meta" in data:
        try:
            meta = json.loads(str(data["meta"]))
        except json.JSONDecodeError:
            raise UserError(f"{path}: 'meta' is not valid JSON") from None
        if not isinstance(meta, dict):
            raise UserError(f"{path}: 'meta' must be a JSON object of fields (dataset, model, ...), got "
                            f"{type(meta).__name__}")
    splits = {}
    names = [key[len("logits_"):] for key in data if key.startswith("logits_")]
    for name in names:
        if name.startswith("c_") and not is_split_name(name):
            raise UserError(f"{path}: split '{name}' is no corruption split (c_<corruption>_<severity 1-5>, the "
                            f"corruptions: {', '.join(CORRUPTION_NAMES)}); rename it or predict it again")
    for name in split_order([n for n in names if is_split_name(n)]):
        for key in (f"labels_{name}", f"ids_{name}"):
            if key not in data:
                raise UserError(f"{path}: has logits_{name} but no {key}")
        splits[name] = Split(data[f"logits_{name}"], data[f"labels_{name}"], data[f"ids_{name}"])
    model = _model_name_of(path)
    recorded = meta.get("model")
    if meta.get("dataset") is not None:
        if not isinstance(meta["dataset"], str):
            raise UserError(f"{path}: meta.dataset must be a name, got {meta['dataset']!r}")
        check_plain_name(meta["dataset"], f"{path}: meta.dataset")
    if recorded is not None and fold(recorded) != fold(model):
        warn(f"{path}: meta.model is '{recorded}' but the file is named '{model}'; the file name is the model's "
             f"name, so its rows are keyed '{model}'")
    return PredictionSet(model=model, splits=splits, meta=meta, source=str(path))


def _read_csv(path: Path) -> PredictionSet:
    # ids stay text as written ("00001" is not 1); an empty id cell is read as "" and refused
    frame = safe_io.read_table(path, "prediction file", dtype={"split": str, "sample_id": str},
                               keep_default_na=False, na_values={"label": [""], "split": [""]}, low_memory=False)
    missing = [c for c in ("split", "sample_id", "label") if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: CSV lacks column(s) {missing}; expected header split,sample_id,label,0,1,...")
    meta = _csv_kind(frame, path)
    class_columns = [c for c in frame.columns if c not in ("split", "sample_id", "label", "kind")]
    if [str(c) for c in class_columns] != [str(k) for k in range(len(class_columns))]:
        raise UserError(f"{path}: class columns must be 0..K-1 in order after split,sample_id,label")
    logits = _numeric_block(frame[class_columns], path)
    labels = _numeric_block(frame[["label"]], path)[:, 0]
    splits = {}
    if frame.empty:
        raise UserError(f"{path}: no data rows (only a header)")
    for name in frame["split"].unique():
        if not is_split_name(name):
            raise UserError(f"{path}: unknown split '{name}' (expected one of {', '.join(SPLITS)}, or a corruption "
                            f"split c_<corruption>_<severity 1-5>)")
        rows = (frame["split"] == name).to_numpy()
        splits[name] = Split(logits[rows], labels[rows], _csv_ids(frame.loc[rows, "sample_id"].to_numpy()))
    return PredictionSet(model=_model_name_of(path), splits=splits, meta=meta, source=str(path))


def _csv_kind(frame: pd.DataFrame, path: Path) -> dict:
    """A CSV's declared kind: its optional `kind` column, one value for every row ({} when absent: logits)."""
    if "kind" not in frame.columns:
        return {}
    values = set(frame["kind"].astype(str))
    if len(values) != 1 or next(iter(values)) not in KINDS:
        raise UserError(f"{path}: the kind column must hold one of {', '.join(KINDS)} on every row, got "
                        f"{sorted(values)[:3]}")
    return {"kind": values.pop()}


_CANONICAL_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,17})")      # fits int64


def _csv_ids(ids: np.ndarray) -> np.ndarray:
    """Ids read as text become integers only when every one is written as an integer would be, so
    `00017` or `img_3` keep their spelling and `17` pairs with an NPZ's integer id 17."""
    if len(ids) and all(isinstance(v, str) and _CANONICAL_INTEGER.fullmatch(v) for v in ids):
        return ids.astype(np.int64)
    return ids


def _numeric_block(frame: pd.DataFrame, source: Path) -> np.ndarray:
    """The frame's cells as floats; the first cell that is not a number (text, empty, True/False) is
    an error naming its column and row."""
    if all(dtype.kind in "fiu" for dtype in frame.dtypes):
        return frame.to_numpy(dtype=np.float64 if frame.shape[1] == 1 else np.float32)
    as_text = frame.astype(str)
    coerced = frame.apply(lambda column: pd.to_numeric(column, errors="coerce") if column.dtype.kind in "fiuO"
                          else pd.Series(np.nan, index=column.index))
    bad = (coerced.isna() & ~as_text.isin(["nan", "NaN", "inf", "-inf"])).to_numpy()
    if not bad.any():
        return coerced.to_numpy(dtype=np.float64 if frame.shape[1] == 1 else np.float32)
    row, col = np.argwhere(bad)[0]
    value = frame.iat[row, col]
    value = value.item() if isinstance(value, np.generic) else value
    raise UserError(f"{source}: non-numeric value {value!r} in column '{frame.columns[col]}' "
                    f"at data row {row + 1}")


# ----------------------------------------------------------------------------- official layout

def _official_root_of(path: Path) -> Path | None:
    """`root` if `path` is `root/<split>/raw/<model>.csv` in the official layout, else None."""
    if path.suffix != ".csv" or path.parent.name != "raw" or path.parent.parent.name not in SPLITS:
        return None
    root = path.parent.parent.parent
    return root if is_official_root(root) else None


def is_official_root(folder: Path) -> bool:
    folder = Path(folder)
    return any((folder / split / "raw").is_dir() for split in SPLITS)


def normalise_predictions_dir(folder: str | Path) -> Path:
    """Accept the official stage-2 form `y-prediction/<ds>/val/raw` as well as `y-prediction/<ds>`."""
    folder = Path(folder)
    if folder.name == "raw" and folder.parent.name in SPLITS and is_official_root(folder.parent.parent):
        return folder.parent.parent
    return folder


def _official_labels(split_dir: Path, num_rows: int, source: str) -> np.ndarray:
    """The `target` column of an official split folder's point_prediction.csv."""
    targets_path = split_dir / "point_prediction.csv"
    targets = safe_io.read_table(targets_path, "labels file of the official layout (column 'target')")
    if "target" not in targets.columns:
        raise UserError(f"{targets_path}: no 'target' column")
    labels = _numeric_block(targets[["target"]], targets_path)[:, 0]
    if len(labels) != num_rows:
        raise UserError(f"{source}: {num_rows} rows but {targets_path} has {len(labels)} labels")
    return labels


def read_official_ensemble(path: str | Path) -> Split:
    """An official pre-averaged ensemble file, `y-prediction/<ds>/<split>/deep_ensemble/<model>_<m>.csv`
    (logits without a header row), with labels from the split folder's point_prediction.csv."""
    path = Path(path)
    frame = safe_io.read_table(path, "official ensemble file", header=None)
    first = pd.to_numeric(frame.iloc[0], errors="coerce")
    if np.array_equal(first.to_numpy(), np.arange(frame.shape[1])):        # a header row 0..K-1 after all
        frame = frame.iloc[1:].reset_index(drop=True)
    logits = _numeric_block(frame, path)
    labels = _official_labels(path.parent.parent, len(logits), str(path))
    split = path.parent.parent.name
    return _validate_split(Split(logits, labels, np.arange(len(logits), dtype=np.int64)), str(path), split)


def read_official(root: Path, model: str) -> PredictionSet:
    root = Path(root)
    splits, kinds = {}, set()
    for name in SPLITS:
        raw = find_file(root / name / "raw", f"{model}.csv")
        if raw is None:
            continue
        model = raw.stem
        source = str(raw)
        frame = safe_io.read_table(raw, "prediction file")
        frame = frame.loc[:, [not str(c).startswith("Unnamed") for c in frame.columns]]
        kinds.add(_csv_kind(frame, raw).get("kind", "logits"))
        logits = _numeric_block(frame.drop(columns=["kind"], errors="ignore"), raw)
        labels = _official_labels(root / name, len(logits), source)
        splits[name] = Split(logits, labels, np.arange(len(logits), dtype=np.int64))
    if not splits:
        raise UserError(f"{root}: no '{model}.csv' under any of {', '.join(s + '/raw' for s in SPLITS)}")
    if len(kinds) > 1:
        raise UserError(f"{root}: the splits of {model} declare different kinds {sorted(kinds)}; give each the same")
    meta = {"dataset": root.name, "model": model, "kind": kinds.pop()}
    return _validate(PredictionSet(model=model, splits=splits, meta=meta, source=f"{root}/*/raw/{model}.csv"))


# ----------------------------------------------------------------------------- folders

def list_prediction_files(folder: str | Path) -> NameMap:
    """Model name -> prediction file in a predictions folder (NPZ preferred over CSV of the same
    name; `*.features.npz` and hidden files are never prediction files). Names match
    case-insensitively; two files whose names differ only by case are an error."""
    folder = normalise_predictions_dir(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: predictions folder not found")
    if is_official_root(folder):
        candidates = [raw for split in SPLITS for raw in sorted((folder / split / "raw").glob("*.csv"))]
    else:
        candidates = [p for p in sorted(folder.iterdir()) if p.suffix in (".npz", ".csv") and p.is_file()
                      and not is_features_file(p) and not p.name.startswith(".")]
    found = NameMap()
    for path in candidates:
        name = _model_name_of(path)
        if name in found:
            spelt = found.spelling(name)
            if spelt != name:
                raise UserError(f"{folder}: '{found[name].name}' and '{path.name}' differ only by case, so they name "
                                f"the same model; remove or rename one of them")
            if path.suffix == ".npz" and found[name].suffix == ".csv":
                found[name] = path
            continue
        found[name] = path
    return found


def select_prediction_files(folder: str | Path, models: list[str] | None = None) -> NameMap:
    """The folder's prediction files, only `models` when given (`--models`, any case); an error when
    none remain."""
    found = list_prediction_files(folder)
    if models:
        missing = [m for m in models if m not in found]
        if missing:
            raise UserError(f"--models: no prediction file for {missing} in {folder}")
        unique_by_case(models, "--models")
        found = NameMap((found.spelling(m), found[m]) for m in models)
    if not found:
        raise UserError(f"--predictions_dir: no prediction files in {folder}")
    return found


def find_prediction_file(folder: str | Path, model: str) -> Path | None:
    """The prediction file of `model` (any case) in a predictions folder or official tree, else None."""
    return list_prediction_files(folder).get(model) if Path(normalise_predictions_dir(folder)).is_dir() else None


def resolve_prediction_path(path: str | Path) -> Path:
    """An explicit prediction file argument: the file itself when it exists, else the file of the same
    model in the same folder (any case, .npz or .csv), so `predictions/convnext_base.csv` finds the
    `predictions/ConvNeXt_Base.npz` that stage 1 wrote. A missing file is reported by the reader."""
    path = Path(path)
    if path.exists() or _official_root_of(path) is not None or is_features_file(path):
        return path
    if path.suffix not in (".npz", ".csv") or not path.parent.is_dir():
        return existing_path(path)
    found = list_prediction_files(path.parent).get(_model_name_of(path))
    if found is None:
        return path
    print(f"{path}: reading {found}, the same model's prediction file")
    return found


def prediction_paths(entries: list[str], flag: str) -> list[Path]:
    """Prediction files given on the command line (often a shell glob): each resolved as in
    `resolve_prediction_path`; features files that a glob also matched are left out with a note."""
    paths, features = [], []
    for entry in entries:
        (features if is_features_file(entry) else paths).append(entry)
    if features:
        print(f"{flag}: left out {len(features)} features file(s) (*{FEATURES_SUFFIX}), which are not prediction files")
    if not paths:
        raise UserError(f"{flag}: only features files given ({len(features)}, e.g. {features[0]}); give the "
                        f"prediction files")
    resolved = [resolve_prediction_path(p) for p in paths]
    real = {}
    for path in resolved:               # a symlink or a second spelling of one file is that file again
        target = Path(path).resolve()
        if target in real:
            raise UserError(f"{flag}: {real[target]} and {path} are the same file ({target}); give it once")
        real[target] = path
    seen = NameMap()
    for path in resolved:                 # two files of one model would fit one row twice, the last one winning
        name = _model_name_of(Path(path))
        if name in seen:
            raise UserError(f"{flag}: {seen[name]} and {path} are both model '{name}' (a model is its file's name, in "
                            f"any case); give one of them")
        seen[name] = path
    return resolved


def check_output_folder(folder: str | Path, prediction_folders, flag: str) -> None:
    """An output folder must not be a predictions folder: the tables written there would be listed as
    prediction files by every later stage."""
    target = Path(folder).resolve()
    for source in prediction_folders:
        if target == normalise_predictions_dir(source).resolve():
            raise UserError(f"{flag}: {folder} is the predictions folder; the CSVs written there would be read as "
                            f"prediction files, so choose another folder")


# ----------------------------------------------------------------------------- writing

def write_predictions(pset: PredictionSet, path: str | Path, outputs: safe_io.Outputs | None = None) -> Path:
    """Write `pset` atomically as NPZ or CSV (chosen by the suffix of `path`); with `outputs`, queue it there to be
    committed with the run's other files."""
    path = Path(path)
    commit = outputs is None
    outputs = safe_io.Outputs() if outputs is None else outputs
    meta = {"dataset": pset.meta.get("dataset"), "model": pset.model, "num_classes": pset.num_classes,
            "kind": pset.meta.get("kind", "logits"), "source_checkpoint": pset.meta.get("source_checkpoint"),
            "created": pset.meta.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    meta.update({k: v for k, v in pset.meta.items() if k not in meta and k != "stored_kind"})
    if path.suffix == ".npz":
        arrays = {"meta": np.array(json.dumps(meta))}
        for name, split in pset.splits.items():
            arrays[f"logits_{name}"] = np.asarray(split.logits, dtype=np.float32)
            arrays[f"labels_{name}"] = np.asarray(split.labels, dtype=np.int64)
            ids = np.asarray(split.ids)
            arrays[f"ids_{name}"] = ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)
        outputs.write_npz(path, arrays, "prediction file")
    elif path.suffix == ".csv":
        frames = []
        for name, split in pset.splits.items():
            frame = pd.DataFrame(np.asarray(split.logits, dtype=np.float32),
                                 columns=[str(k) for k in range(split.logits.shape[1])])
            if meta["kind"] != "logits":                   # a CSV declares its kind in a column
                frame.insert(0, "kind", meta["kind"])
            frame.insert(0, "label", np.asarray(split.labels, dtype=np.int64))
            frame.insert(0, "sample_id", np.asarray(split.ids))
            frame.insert(0, "split", name)
            frames.append(frame)
        outputs.write_csv(path, pd.concat(frames, ignore_index=True), "prediction file")
    else:
        raise UserError(f"{path}: prediction files must end in .npz or .csv")
    if commit:
        outputs.commit()
    return path


# ----------------------------------------------------------------------------- alignment

def positions_of(reference_ids: np.ndarray, other_ids: np.ndarray, reference_source: str, other_source: str,
                 split_name: str) -> np.ndarray | None:
    """Row positions in `other_ids` of each reference id (None when already in the same order);
    an error naming both sources when the ids differ as sets."""
    original_reference, original_other = reference_ids, other_ids
    if reference_ids.dtype.kind != other_ids.dtype.kind:
        reference_ids, other_ids = reference_ids.astype(str), other_ids.astype(str)
    if len(reference_ids) == len(other_ids) and np.array_equal(reference_ids, other_ids):
        return None
    positions = pd.Index(other_ids).get_indexer(reference_ids)
    n_missing = int((positions < 0).sum())
    n_extra = len(other_ids) - (len(reference_ids) - n_missing)
    if n_missing or n_extra:
        only_first = reference_ids[positions < 0]
        only_second = np.setdiff1d(other_ids, reference_ids)
        raise UserError(f"split '{split_name}': sample ids of {reference_source} and {other_source} differ "
                        f"({n_missing} only in the first{_examples(only_first, original_reference)}, {n_extra} only in "
                        f"the second{_examples(only_second, original_other)}); predict both models on the same data "
                        f"(ids are compared as written: 45 and 0045 differ)")
    return positions


def _examples(ids: np.ndarray, original: np.ndarray) -> str:
    """', e.g. '45' (text), ...' for an error message: a few ids as written, with their type."""
    if not len(ids):
        return ""
    if original.dtype.kind in "iu":
        return ", e.g. " + ", ".join(f"{v} (whole number)" for v in ids[:3].tolist())
    return ", e.g. " + ", ".join(f"{v!r} (text)" for v in ids[:3].tolist())


def align(reference: Split, other: Split, reference_source: str, other_source: str, split_name: str) -> Split:
    """Return `other` reordered to `reference`'s sample order; error if ids differ as sets."""
    if reference.logits.shape[1] != other.logits.shape[1]:
        raise UserError(f"{reference_source} has {reference.logits.shape[1]} classes but {other_source} has "
                        f"{other.logits.shape[1]}; they must predict the same label set")
    positions = positions_of(reference.ids, other.ids, reference_source, other_source, split_name)
    aligned = other if positions is None else Split(other.logits[positions], other.labels[positions],
                                                    other.ids[positions])
    differ = np.flatnonzero(aligned.labels != reference.labels)
    if len(differ):
        first = differ[0]
        raise UserError(f"split '{split_name}': {reference_source} and {other_source} disagree on the label of "
                        f"{len(differ)} sample(s) with the same id (e.g. id {reference.ids[first].item()!r}: label "
                        f"{int(reference.labels[first])} in the first, {int(aligned.labels[first])} in the second)")
    return aligned


def check_same_dataset(reference: PredictionSet, other: PredictionSet) -> None:
    """Two prediction sets combined (a duo, an ensemble, a baseline and its backbone) must come from one dataset:
    an error naming both files when both record a dataset and they differ."""
    if reference.dataset and other.dataset and reference.dataset != other.dataset:
        raise UserError(f"{reference.source} records dataset '{reference.dataset}' but {other.source} records "
                        f"'{other.dataset}'; combine predictions of one dataset (keep one predictions folder per dataset)")


def aligned(reference: PredictionSet, other: PredictionSet, split: str, purpose: str = "") -> Split:
    """`other`'s split in `reference`'s sample order, after checking that the two sets belong together: one
    dataset, the same classes, the same sample ids (as sets) and labels."""
    check_same_dataset(reference, other)
    return align(reference.split(split, purpose), other.split(split, purpose), reference.source, other.source, split)


def read_features(prediction_path: str | Path, reference: PredictionSet) -> dict[str, np.ndarray]:
    """The `<model>.features.npz` beside a prediction file, each split aligned to `reference`'s ids."""
    path = Path(prediction_path)
    features_path = path.with_name(_model_name_of(path) + FEATURES_SUFFIX)
    if not features_path.exists():
        raise UserError(f"{features_path}: features file not found; run stage 1 with --features")
    safe_io.readable(features_path, "features file")
    try:
        with np.load(features_path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise UserError(f"{features_path}: cannot read NPZ ({_npz_problem(exc)})") from None
    out = {}
    for split, ref in reference.splits.items():
        for key in (f"features_{split}", f"ids_{split}"):
            if key not in data:
                raise UserError(f"{features_path}: no '{key}' (split '{split}'); rerun stage 1 with --features")
        features = _number_array(data[f"features_{split}"], str(features_path), split, "features")
        if features.ndim != 2 or not np.isfinite(features).all():
            raise UserError(f"{features_path}: split '{split}' features must be a finite [N, D] array, got shape "
                            f"{features.shape}{'' if np.isfinite(features).all() else ' with NaN or inf'}")
        ids = _sample_ids(data[f"ids_{split}"], str(features_path), split, len(features))
        positions = positions_of(ref.ids, ids, reference.source, str(features_path), split)
        out[split] = features if positions is None else features[positions]
    return out

"""The results files: one schema per results table, the one writer and the one reader.

`evaluation_<table>_<dataset>.csv` holds a table's test rows and `evaluation_<table>_<dataset>_ood.csv` its
ood_test rows. Each table declares its key (unique within a file), its columns, which columns are numbers,
its group (a rerun replaces every row of a group it writes, in both split files, so a model re-predicted
without ood_test loses its old ood rows) and its provenance: the prediction digests and the temperatures its
rows were computed from, which the report compares across files (`facts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils.errors import UserError
from utils.files import safe_io
from utils.files.model_names import check_plain_name
from utils.files.prediction_io import CORRUPTION_SPLIT, split_order
from utils.maths.shift_detection import DETECTION_COLUMNS
from utils.maths.uncertainty_metrics import METRIC_COLUMNS

EVAL_SPLITS = ("test", "ood_test")
OOD_SUFFIX = "_ood"
CORRUPT_SUFFIX = "_corrupt"          # every corruption split's rows (c_<corruption>_<severity>), in one file
FILE_GROUPS = ("test", "ood_test", "corrupt")        # a table's files: evaluation_<table>_<dataset>[_ood|_corrupt].csv
DELTA_VALUE_COLUMNS = ("delta", "ci_low", "ci_high", "significant", "B", "seed")
ALWAYS_DEFINED = ("Acc", "Brier", "NLL", "ECE")      # CP_AUROC alone may be NaN (all or no prediction correct)
DUO_MODE_NAMES = ("uqonly", "asymmetric", "asymmetric_code")     # the modes that use stage 3's duo weights


@dataclass(frozen=True)
class ResultTable:
    """One results table (its test and ood files)."""
    name: str
    keys: tuple[str, ...]             # unique within one file
    descriptive: tuple[str, ...]      # after the value columns, in this order
    numbers: tuple[str, ...]          # descriptive columns that hold numbers
    group: tuple[str, ...]            # what one rerun replaces whole
    values: tuple[str, ...] = tuple(METRIC_COLUMNS)
    digests: dict = field(default_factory=dict)     # name column -> the digest column of that model's predictions
    stage: str = ""                   # the script that writes it

    @property
    def columns(self) -> list[str]:
        return [*self.values, *self.descriptive]

    @property
    def is_delta(self) -> bool:
        return self.name.endswith("_delta")

    @property
    def always_defined(self) -> tuple[str, ...]:
        return () if self.is_delta else tuple(c for c in ALWAYS_DEFINED if c in self.values)


_PAIR = ("model_large", "model_small")
_PAIR_DIGESTS = {"model_large": "digest_large", "model_small": "digest_small"}
_DUO = (*_PAIR, "mode", "uncertainty_type", "gflops_large", "gflops_small", "gflops_balance", "split")
_SCALES = ("digest_large", "digest_small", "scale_large", "scale_small")
_S4, _S5 = "evaluate/4_evaluate_predictions.py", "evaluate/5_evaluate_duo_predictions.py"
_S7, _S8, _S3DY = ("evaluate/7_evaluate_cascades.py", "evaluate/8_evaluate_deep_ensemble.py",
                   "evaluate/3dy_duo_temp_scale.py")

_TABLES = [
    ResultTable("single_model", ("model", "wrapper", "uncertainty_type", "split"),
         ("model", "wrapper", "uncertainty_type", "gflops", "params", "split", "digest", "temperature"),
         ("gflops", "params", "temperature"), ("model",), digests={"model": "digest"}, stage=_S4),
    ResultTable("duo", (*_PAIR, "mode", "uncertainty_type", "split"), (*_DUO, *_SCALES),
         ("gflops_large", "gflops_small", "gflops_balance", "scale_large", "scale_small"), _PAIR,
         digests=_PAIR_DIGESTS, stage=_S5),
    ResultTable("dynamic_duo", (*_PAIR, "mode", "uncertainty_type", "split"), (*_DUO, "digest_large", "digest_small"),
         ("gflops_large", "gflops_small", "gflops_balance"), (*_PAIR, "mode"), digests=_PAIR_DIGESTS, stage=_S3DY),
    ResultTable("deep_ensemble", ("model", "m", "subset", "uncertainty_type", "split"),
         ("model", "m", "subset", "members", "uncertainty_type", "split", "digest", "member_digests"), ("m",),
         ("model", "m"), stage=_S8),
    ResultTable("cascade", (*_PAIR, "order", "uncertainty_type", "selection", "target", "split"),
         (*_PAIR, "order", "uncertainty_type", "selection", "target", "tau", "deferred", "gflops_large",
          "gflops_small", "gflops_expected", "split", *_SCALES, "temperature_large", "temperature_small"),
         ("target", "tau", "deferred", "gflops_large", "gflops_small", "gflops_expected", "scale_large", "scale_small",
          "temperature_large", "temperature_small"), _PAIR, digests=_PAIR_DIGESTS, stage=_S7),
    ResultTable("duo_delta", (*_PAIR, "mode", "uncertainty_type", "split", "metric"),
         (*_DUO, "metric", *_SCALES, "temperature"), ("gflops_large", "gflops_small", "gflops_balance", "B", "seed",
                                                     "scale_large", "scale_small", "temperature"),
         _PAIR, DELTA_VALUE_COLUMNS, _PAIR_DIGESTS, _S5),
    ResultTable("single_model_delta", ("model", "wrapper", "uncertainty_type", "split", "metric"),
         ("model", "base", "wrapper", "uncertainty_type", "split", "metric", "digest", "digest_base", "temperature",
          "temperature_base"), ("B", "seed", "temperature", "temperature_base"), ("model",), DELTA_VALUE_COLUMNS,
         {"model": "digest", "base": "digest_base"}, _S4),
    ResultTable("deep_ensemble_delta", ("model", "m", "uncertainty_type", "split", "metric"),
         ("model", "m", "base", "subsets", "uncertainty_type", "split", "metric", "digest", "digest_base",
          "temperature_base"), ("m", "subsets", "B", "seed", "temperature_base"), ("model", "m"), DELTA_VALUE_COLUMNS,
         {"base": "digest_base"}, _S8),
]
# shift detection (utils/maths/shift_detection.py): test (in) against each shifted split (out), per uncertainty type
_TABLES += [
    ResultTable("shift_detection", ("model", "wrapper", "uncertainty_type", "split"),
         ("model", "wrapper", "uncertainty_type", "split", "digest", "temperature"), ("temperature",), ("model",),
         DETECTION_COLUMNS, {"model": "digest"}, _S4),
    ResultTable("duo_shift_detection", (*_PAIR, "mode", "uncertainty_type", "split"),
         (*_PAIR, "mode", "uncertainty_type", "split", *_SCALES), ("scale_large", "scale_small"), _PAIR,
         DETECTION_COLUMNS, _PAIR_DIGESTS, _S5),
    ResultTable("duo_shift_detection_delta", (*_PAIR, "mode", "uncertainty_type", "split", "metric"),
         (*_PAIR, "mode", "uncertainty_type", "split", "metric", *_SCALES, "temperature"),
         ("B", "seed", "scale_large", "scale_small", "temperature"), _PAIR, DELTA_VALUE_COLUMNS, _PAIR_DIGESTS, _S5),
]
TABLES: dict[str, ResultTable] = {table.name: table for table in _TABLES}
# --combine probs writes the same tables under the names duo_probs, duo_probs_delta, deep_ensemble_probs, ...
for _base in ("duo", "deep_ensemble", "duo_delta", "deep_ensemble_delta"):
    _name = _base.replace("_delta", "_probs_delta") if _base.endswith("_delta") else f"{_base}_probs"
    TABLES[_name] = ResultTable(_name, **{k: v for k, v in TABLES[_base].__dict__.items() if k != "name"})
NAME_COLUMNS = ("model", "model_large", "model_small", "base")


# ----------------------------------------------------------------------------- names

# evaluation_<table>_<dataset>[_ood]: a dataset named probs_x or delta_x would share its files with another table's
# (evaluation_duo_probs_x.csv is table duo_probs of x and table duo of probs_x), one named x_ood its test file with
# the ood file of x
RESERVED_DATASET_PREFIXES = ("probs_", "delta_", "shift_detection_")


def check_dataset_name(name: str, what: str) -> str:
    """A dataset name that can be part of result file names: plain, not starting with a reserved prefix and not
    ending in the ood suffix."""
    check_plain_name(name, what)
    folded = name.casefold()
    if folded.startswith(RESERVED_DATASET_PREFIXES) or folded.endswith((OOD_SUFFIX, CORRUPT_SUFFIX)):
        clash = (f"ends in {OOD_SUFFIX} or {CORRUPT_SUFFIX}" if folded.endswith((OOD_SUFFIX, CORRUPT_SUFFIX))
                 else f"starts with {' or '.join(RESERVED_DATASET_PREFIXES)}")
        raise UserError(f"{what}: '{name}' {clash}"
                        f", which result file names use (for ood_test, --combine probs and --bootstrap files); pass "
                        f"--dataset with another name")
    return name


def file_group(split: str) -> str:
    """Which of a table's files holds a split's rows: test, ood_test, or corrupt (every corruption split)."""
    return split if split in EVAL_SPLITS else "corrupt" if CORRUPTION_SPLIT.fullmatch(str(split)) else "unknown"


def eval_splits(names) -> list[str]:
    """The evaluation splits among `names`: test, ood_test, then the corruption splits (stage 1's --corruptions)."""
    return [s for s in split_order(names) if file_group(s) != "unknown"]


_SUFFIX = {"test": "", "ood_test": OOD_SUFFIX, "corrupt": CORRUPT_SUFFIX}


def results_path(output_dir: str | Path, table: str, dataset: str, split: str) -> Path:
    """The file of a split's rows (`split` may also be a file group)."""
    group = split if split in _SUFFIX else file_group(split)
    return Path(output_dir) / f"evaluation_{table}_{dataset}{_SUFFIX[group]}.csv"


def _file_split(path: Path) -> str:
    return "ood_test" if path.stem.endswith(OOD_SUFFIX) else "corrupt" if path.stem.endswith(CORRUPT_SUFFIX) else "test"


# ----------------------------------------------------------------------------- writing

def queue_results(outputs: safe_io.Outputs, output_dir: str | Path, table: str, dataset: str,
                  rows: list[dict], splits=FILE_GROUPS) -> list[Path]:
    """Queue `rows` for the table's test and ood files in `outputs`: each group (a model, a pair, ...) written
    replaces all of that group's rows in the files of `splits` (the splits this run speaks for: both, unless it
    evaluates one split by design), so a split the rerun no longer has loses its old rows. A row with a
    non-finite Acc, Brier, NLL or ECE is an error (nothing is queued)."""
    spec = TABLES[table]
    check_dataset_name(dataset, "the dataset of the result files")
    frame = pd.DataFrame(rows, columns=spec.columns)
    if len(frame) and spec.always_defined:
        defined = frame[list(spec.always_defined)].to_numpy(dtype=np.float64)
        if not np.isfinite(defined).all():          # the last guard: a NaN never reaches a results table
            row = frame.iloc[int(np.flatnonzero(~np.isfinite(defined).all(axis=1))[0])]
            raise UserError(f"non-finite {', '.join(spec.always_defined)} for {row[list(spec.keys)].tolist()}; nothing "
                            f"was written to {output_dir}: check the prediction files and temperatures")
    groups = frame[list(spec.group)].drop_duplicates()
    queued = []
    groups_of_rows = frame["split"].map(file_group)
    for group in dict.fromkeys(file_group(s) if s not in _SUFFIX else s for s in splits):
        path = results_path(output_dir, table, dataset, group)
        part = frame[(groups_of_rows == group).to_numpy()]
        covered = part[list(spec.group)].drop_duplicates()
        absent = groups.merge(covered, how="left", indicator=True)
        absent = absent[absent["_merge"] == "left_only"][list(spec.group)]
        if part.empty and (absent.empty or not path.exists()):
            continue
        queued.append(outputs.upsert(path, part, spec.keys, spec.columns, replace_groups=spec.group,
                                     drop_groups=absent, validate=lambda table, p: check_rows(table, p, spec)))
    return queued


# ----------------------------------------------------------------------------- reading

def empty(table: str) -> pd.DataFrame:
    """A table's frame with no rows but every column (and `dataset`, `source`), typed as read_results types them."""
    spec = TABLES[table]
    frame = pd.DataFrame({c: pd.Series(dtype=float if c in (*spec.values, *spec.numbers) and c != "significant"
                                       else object) for c in spec.columns})
    return frame.assign(dataset=pd.Series(dtype=object), source=pd.Series(dtype=object), row=pd.Series(dtype=int))


def read_results(results_dir: str | Path, table: str) -> pd.DataFrame:
    """Every split of evaluation_<table>_<dataset>[_ood].csv in a folder, checked (`check_rows`), with the columns
    `dataset` (from the file name), `source` (the file) and `row` (its data row); a frame with every column and no
    rows when there is none."""
    spec = TABLES[table]
    frames = []
    # evaluation_duo_* also matches the files of the tables duo_delta, duo_probs, ...: those are not this table's
    others = [other[len(table) + 1:] + "_" for other in TABLES if other.startswith(f"{table}_")]
    for path in sorted(Path(results_dir).glob(f"evaluation_{table}_*.csv")):
        dataset = path.stem[len(f"evaluation_{table}_"):].removesuffix(OOD_SUFFIX).removesuffix(CORRUPT_SUFFIX)
        if any(dataset.startswith(prefix) for prefix in others):
            continue
        frame = safe_io.read_table(path, "results file", keep_default_na=False, na_values=[""], dtype=str)
        frame = check_rows(frame, path, spec)
        frames.append(frame.assign(dataset=dataset, source=str(path), row=np.arange(1, len(frame) + 1)))
    if not frames:
        return empty(table)
    return pd.concat(frames, ignore_index=True)


def check_rows(frame: pd.DataFrame, path: Path, spec: ResultTable) -> pd.DataFrame:
    """The rows of one results file as the report and the writers rely on them: every key and number column
    present (provenance columns of older files may be absent: unknown), no empty key, numbers that are numbers
    and in range, each key once, plain model names, and every row's split the one its file name says. Returns
    the frame with number columns as floats."""
    frame = frame.copy()
    numbers = [*spec.numbers, *([] if spec.is_delta else spec.values)]
    if spec.is_delta:
        numbers += [c for c in ("delta", "ci_low", "ci_high") if c not in numbers]
    required = [c for c in dict.fromkeys([*spec.keys, *numbers]) if c not in _PROVENANCE]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: lacks column(s) {missing}; rerun the stage that writes it ({spec.stage})")
    for column in spec.columns:
        if column not in frame.columns:
            frame[column] = np.nan
    blank = frame[list(spec.keys)].isna().any(axis=1).to_numpy()
    if blank.any():
        raise UserError(f"{path}: data row {int(blank.argmax()) + 1} has an empty {', '.join(spec.keys)} cell; rerun "
                        f"the stage that writes it ({spec.stage})")
    expected_split = _file_split(path)
    wrong = (frame["split"].astype(str).map(file_group) != expected_split).to_numpy()
    if wrong.any():
        row = int(wrong.argmax())
        holds = ("corruption split (c_<corruption>_<severity>)" if expected_split == "corrupt"
                 else f"'{expected_split}'")
        raise UserError(f"{path}: data row {row + 1} is a '{frame['split'].iloc[row]}' row, but this file holds "
                        f"{holds} rows (its name ends in {_SUFFIX[expected_split] or 'the dataset'}); rerun the stage "
                        f"that writes it ({spec.stage})")
    for column in numbers:
        text = frame[column]
        if text.dtype.kind in "fiu":
            continue
        text = text.astype(object).where(text.notna(), None)
        as_text = text.astype(str).str.strip()
        values = pd.to_numeric(text.where(as_text.str.casefold() != "nan"), errors="coerce")
        bad = (values.isna() & text.notna() & (as_text.str.casefold() != "nan")).to_numpy()
        if bad.any():
            row = int(bad.argmax())
            raise UserError(f"{path}: data row {row + 1}, column {column}: {text.iloc[row]!r} is not a number; "
                            f"rerun the stage that writes it ({spec.stage})")
        frame[column] = values.astype(float)
    if not spec.is_delta:
        _check_ranges(frame, path, spec)
    else:
        unset = frame[["B", "seed"]].isna().any(axis=1).to_numpy()
        swapped = (frame["ci_low"] > frame["ci_high"]).to_numpy()
        for bad, what in ((unset, "an empty B or seed cell"), (swapped, "ci_low above ci_high")):
            if bad.any():
                raise UserError(f"{path}: data row {int(bad.argmax()) + 1} has {what}; rerun the stage that wrote it "
                                f"with --bootstrap ({spec.stage})")
    if spec.name.startswith("deep_ensemble"):
        if not (np.isfinite(frame["m"]) & (frame["m"] >= 1) & (frame["m"] % 1 == 0)).all():
            raise UserError(f"{path}: column m must hold whole ensemble sizes >= 1; rerun stage 8")
        frame["m"] = frame["m"].astype(int)
    twice = frame.duplicated(list(spec.keys)).to_numpy()
    if twice.any():
        row = int(twice.argmax())
        key = ", ".join(f"{k}={frame[k].iloc[row]}" for k in spec.keys)
        raise UserError(f"{path}: data row {row + 1} repeats the key ({key}) of an earlier row; remove one (the "
                        f"stages never write a key twice)")
    for column in (c for c in NAME_COLUMNS if c in frame.columns):
        for name in frame[column].dropna().unique():
            check_plain_name(name, f"{path}: {column}")
    return frame


_PROVENANCE = {"digest", "member_digests", "digest_large", "digest_small", "digest_base", "temperature", "temperature_base",
               "temperature_large", "temperature_small", "scale_large", "scale_small"}


def _check_ranges(frame: pd.DataFrame, path: Path, spec: ResultTable) -> None:
    """Metrics are fractions (NLL: >= 0), a cascade's order and selection are the stage's words, its deferred share
    a fraction: a hand-edited 7 for 0.7 is an error, never a 700 % in a table or on a Pareto front."""
    from utils.maths.cascades import ORDERS
    slack = 1e-9                                  # E-AURC = AURC - oracle may round a hair below 0
    checks = [(m, -slack, 1 + slack) for m in spec.values if m != "NLL"] + \
        ([("NLL", 0.0, np.inf)] if "NLL" in spec.values else [])
    if spec.name == "cascade":
        checks.append(("deferred", 0.0, 1.0))
    for column, low, high in checks:
        values = frame[column].astype(float)
        bad = (values < low) | (values > high)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: data row {row + 1}, column {column}: {values.iloc[row]:g} is outside "
                            f"[{low if low >= 0 else 0:g}, {high:g}] (metrics are fractions, not percent); rerun the "
                            f"stage that writes it ({spec.stage})")
    if spec.name == "cascade":
        for column, allowed in (("order", ORDERS), ("selection", ("sweep", "val_budget"))):
            bad = ~frame[column].isin(allowed)
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise UserError(f"{path}: data row {row + 1}, column {column}: {frame[column].iloc[row]!r} is not one "
                                f"of {', '.join(allowed)}; rerun stage 7")


# ----------------------------------------------------------------------------- provenance across files

_TOLERANCE = 1e-9       # relative: a temperature written to CSV and read back, or 1 / (1 / T)


def facts(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """What the rows of one table say about their inputs, one fact per row and input: the digest of a model's
    predictions (`predictions`), a model's single temperature (`temperature`) and a pair's duo weights
    (`duo weights`). Columns: about, subject (folded name or pair), value (a tuple), source, row. Unknown
    (empty) provenance cells state nothing."""
    spec = TABLES[table]
    records = []
    columns = ["about", "subject", "value", "source", "row", "position"]
    if frame.empty:
        return pd.DataFrame(records, columns=columns)
    rows = frame.reset_index(drop=True)
    sources = rows["source"] if "source" in rows.columns else pd.Series([""] * len(rows))
    file_rows = rows["row"] if "row" in rows.columns else pd.Series(rows.index + 1)
    where = list(zip(sources, file_rows, rows.index))

    def add(about, subjects, values, mask=None):
        for i, (subject, value) in enumerate(zip(subjects, values)):
            if (mask is None or mask[i]) and all(v is not None and not (isinstance(v, float) and np.isnan(v))
                                                 for v in value):
                records.append((about, subject, value, *where[i]))

    def names(column):
        return [str(v).casefold() for v in rows[column]]

    def floats(*columns):
        return list(zip(*(pd.to_numeric(rows[c], errors="coerce").astype(float) for c in columns)))

    for name_column, digest_column in spec.digests.items():
        if digest_column in rows.columns:
            add("predictions", names(name_column), [(None if pd.isna(d) else str(d),) for d in rows[digest_column]])
    base = spec.name.replace("_probs", "")
    for name_column, cost_column in (("model", "gflops"), ("model_large", "gflops_large"), ("model_small", "gflops_small")):
        if base in ("single_model", "duo", "cascade") and cost_column in rows.columns:
            add("GFLOPs", names(name_column), floats(cost_column))
    if base == "deep_ensemble" and "member_digests" in rows.columns:     # "name:digest|name:digest" of the pool
        for i, cell in enumerate(rows["member_digests"]):
            if isinstance(cell, str) and cell:
                for entry in cell.split("|"):
                    name, _, digest = entry.rpartition(":")
                    records.append(("predictions", name.casefold(), (digest,), *where[i]))
    if base in ("single_model", "single_model_delta") and "temperature" in rows.columns:
        add("temperature", names("model"), floats("temperature"), (rows["wrapper"] == "TempScaleWrapper").to_numpy())
    if base in ("single_model_delta", "deep_ensemble_delta") and "temperature_base" in rows.columns:
        add("temperature", names("base"), floats("temperature_base"))
    pairs = list(zip(names("model_large"), names("model_small"))) if "model_large" in rows.columns else []
    if base in ("duo", "duo_delta", "cascade") and "scale_large" in rows.columns:
        modes = rows["mode"].to_numpy() if "mode" in rows.columns else np.full(len(rows), "asymmetric")
        scales = floats("scale_large", "scale_small")
        add("duo weights", pairs, [(a / 2, b / 2) for a, b in scales], np.isin(modes, DUO_MODE_NAMES))
        ts = modes == "unweighted_ts"
        inverse = [(1 / a if a else np.inf, 1 / b if b else np.inf) for a, b in scales]
        add("temperature", names("model_large"), [(a,) for a, _ in inverse], ts)
        add("temperature", names("model_small"), [(b,) for _, b in inverse], ts)
    if base == "cascade" and "temperature_large" in rows.columns:
        add("temperature", names("model_large"), floats("temperature_large"))
        add("temperature", names("model_small"), floats("temperature_small"))
    if base == "duo_delta" and "temperature" in rows.columns:
        add("temperature", names("model_large"), floats("temperature"))
    return pd.DataFrame(records, columns=columns)


def _same(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, str) or isinstance(y, str):
            if x != y:
                return False
        elif not (x == y or np.isclose(x, y, rtol=_TOLERANCE, atol=0)):
            return False
    return True


def _conflicts(found: pd.DataFrame):
    """(first fact, disagreeing fact) for each subject whose facts disagree."""
    for _, group in found.groupby(["about", "subject"], sort=False):
        distinct = group.drop_duplicates("value")
        first = distinct.iloc[0]
        for _, other in distinct.iloc[1:].iterrows():
            if not _same(first["value"], other["value"]):
                yield first, other
                break


def _shown(about: str, value: tuple) -> str:
    if about.endswith("predictions"):
        return f"digest {value[0]}"
    if about == "GFLOPs":          # a cost is no input: say where the stages take it from
        return f"{value[0]:.6g}"
    return ", ".join(f"{v:.6g}" for v in value)


def check_agreement(found: pd.DataFrame, stages: dict[str, str]) -> None:
    """Refuse facts (`facts`, several files concatenated) that disagree: two files computed from different
    predictions or temperatures of one model must never be combined. The error names both files and the
    stage to rerun for the older one (`stages`: file -> the script that writes it)."""
    for first, other in _conflicts(found):
        older, newer = sorted((first, other), key=lambda f: Path(f["source"]).stat().st_mtime
                              if Path(f["source"]).exists() else 0)
        subject = " + ".join(first["subject"]) if isinstance(first["subject"], tuple) else first["subject"]
        fixes = [f"{stages.get(f['source'], 'the stage that wrote it')} for {f['source']}" for f in (older, newer)]
        raise UserError(f"{first['source']} (data row {first['row']}) and {other['source']} (data row {other['row']}) "
                        f"were computed from different {first['about']} of {subject} ({_shown(first['about'], first['value'])} "
                        f"vs {_shown(other['about'], other['value'])}); rerun {fixes[0]} (the older), or {fixes[1]} if it is "
                        f"the one from other inputs (another dataset's files?), so that both come from the same inputs"
                        + ("; a model's cost comes from the duos CSV (--config), else the backbone CSV (--backbone_csv), "
                           "else stage 1's measurement: give stages 4, 5 and 7 the same ones"
                           if first["about"] == "GFLOPs" else ""))


def agreeing(frame: pd.DataFrame, table: str, reference: pd.DataFrame) -> np.ndarray:
    """Which rows of `frame` state nothing that disagrees with the `reference` facts (for the bootstrap files, whose
    stale rows are left out rather than refused)."""
    mine = facts(frame, table)
    if mine.empty or reference.empty:
        return np.ones(len(frame), dtype=bool)
    known = {}
    for about, subject, value in zip(reference["about"], reference["subject"], reference["value"]):
        known.setdefault((about, subject), value)
    stale = np.zeros(len(frame), dtype=bool)
    for about, subject, value, position in zip(mine["about"], mine["subject"], mine["value"], mine["position"]):
        expected = known.get((about, subject))
        if expected is not None and not _same(expected, value):
            stale[int(position)] = True
    return ~stale


def stage_of(table: str) -> str:
    return TABLES[table].stage


def known_costs(found: pd.DataFrame) -> dict[str, float]:
    """folded model name -> its GFLOPs per image, as any results file states it (`check_agreement` has made sure
    they agree)."""
    costs = found[found["about"] == "GFLOPs"]
    return {subject: value[0] for subject, value in zip(costs["subject"], costs["value"])}


def check_predictions_against(found: pd.DataFrame, pset, what: str) -> None:
    """The prediction set a reader draws from directly (the report's curves) must be the one the result rows were
    computed from (`found`: their facts): an error naming the file and a results file when its digest differs."""
    stated = found[(found["about"] == "predictions") & (found["subject"] == pset.model.casefold())]
    for value, source in zip(stated["value"], stated["source"]):
        if value[0] != pset.digest:
            raise UserError(f"{pset.source}: {what} would be drawn from predictions (digest {pset.digest}) other than "
                            f"those {source} was computed from (digest {value[0]}); point --predictions_dir at the files "
                            f"the results came from, or rerun the stages that wrote the results")

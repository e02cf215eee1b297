"""The CSV tables stages share: duo lists, backbone lists and fitted temperatures.

Readers validate and accept the official code's column sets; writers upsert under a file lock so
concurrent array jobs lose nothing. A temperature row records what it was fitted on (the dataset and the
digest of the predictions, `PredictionSet.digest`), so that a stage applying it can check it belongs to the
predictions at hand (utils/stages/calibration.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.errors import UserError, warn
from utils.files import safe_io
from utils.files.model_names import SAME_COST_SUFFIXES, NameMap, backbone_row, canonical_name, check_plain_name
from utils.maths.duo_modes import temperature_to_weight, weight_to_temperature
from utils.paths import DEFAULT_BACKBONES, resolve_config_path

SINGLE_TEMPERATURE_FILE = "temperature_single_model.csv"
DUO_TEMPERATURE_FILE = "temperature_duo.csv"
SINGLE_TEMPERATURE_COLUMNS = ["full_name", "temperature", "nll_before", "nll_after", "ece_before", "ece_after", "n_val",
                              "dataset", "digest"]
DUO_TEMPERATURE_COLUMNS = ["model_large", "model_small", "temperature_large", "temperature_small",
                           "weight_large", "weight_small", "val_nll", "n_val", "dataset", "digest_large", "digest_small"]
DUO_COLUMNS = ["model_large", "model_small", "source_large", "source_small",
               "gflops_large", "gflops_small", "gflops_balance"]


_NAME_COLUMNS = ("model_large", "model_small", "full_name", "model_name", "source_large", "source_small", "source",
                 "tv_weights", "dataset", "digest", "digest_large", "digest_small")


def _read_table(path: Path, what: str) -> pd.DataFrame:
    """A table whose names stay text as written (`050` is not 50, `NA` is a name); only empty cells are missing."""
    frame = safe_io.read_table(path, what, skipinitialspace=True, keep_default_na=False, na_values=[""],
                               dtype={column: str for column in _NAME_COLUMNS})
    for column in set(_NAME_COLUMNS) & set(frame.columns):
        frame[column] = frame[column].str.strip().replace("", np.nan)
    return frame


def _numeric_column(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna() & (frame[column].astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{path}: non-numeric value {frame[column].iloc[row]!r} in column '{column}' at data row {row + 1}")
    return values


# ----------------------------------------------------------------------------- duo and backbone lists

def duos_from_backbones(backbones: pd.DataFrame, large_models: list[str], soups: bool = False) -> pd.DataFrame:
    """Duos CSV rows pairing each large model with every backbone of strictly fewer GFLOPs (docs/files.md,
    "Adding a pair"), cheapest sidekick first; with `soups`, the same sidekicks again for each large model's greedy soup
    `<large>_greedy` (paper Fig. 7; a soup costs what its backbone costs)."""
    rows = []
    backbones = backbone_costs(backbones)
    by_name = backbones.set_index("model_name")
    for large in large_models:
        if large not in by_name.index:
            raise UserError(f"{large} is not in the backbone CSV")
        big = by_name.loc[large]
        smaller = backbones[backbones["GFLOPS"] < big["GFLOPS"]].sort_values("GFLOPS", kind="stable")
        for name in [large, f"{large}_greedy"] if soups else [large]:
            for small in smaller.itertuples(index=False):
                rows.append({"model_large": name, "model_small": small.model_name, "source_large": big["source"],
                             "source_small": small.source, "gflops_large": big["GFLOPS"],
                             "gflops_small": small.GFLOPS, "gflops_balance": round(small.GFLOPS / big["GFLOPS"], 5)})
    return pd.DataFrame(rows, columns=DUO_COLUMNS)


def backbone_costs(backbones: pd.DataFrame) -> pd.DataFrame:
    """The backbone rows with their GFLOPS as numbers (finite, > 0): the rows pairing by cost needs; a missing
    column or a cell that is not such a number is an error naming the file and row (read_backbones refuses a
    name listed twice)."""
    path = backbones.attrs.get("path", "the backbone CSV")
    if "GFLOPS" not in backbones.columns:
        raise UserError(f"{path}: no GFLOPS column; pairing by cost needs each backbone's GFLOPs (header "
                        f"model_name,GFLOPS,...)")
    costs = _numeric_column(backbones, "GFLOPS", path)
    bad = ~((costs > 0) & np.isfinite(costs))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{path}: data row {row + 1} ({backbones['model_name'].iloc[row]}): GFLOPS must be a finite "
                        f"number > 0, got {float(costs.iloc[row]):g}")
    return backbones.assign(GFLOPS=costs.astype(float))


def read_duos(path: str | Path, backbones: pd.DataFrame | None = None) -> pd.DataFrame:
    """The duos to evaluate: official columns, optional sources; gflops_balance computed when absent.
    A relative `path` that is not in the working folder is looked up in the repository."""
    path = resolve_config_path(path, "--config")
    frame = _read_table(path, "duos CSV")
    missing = [c for c in ("model_large", "model_small") if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: duos CSV lacks column(s) {missing}; header must include model_large,model_small")
    incomplete = frame[["model_large", "model_small"]].isna().any(axis=1).to_numpy()
    if incomplete.any():
        raise UserError(f"{path}: data row {int(incomplete.argmax()) + 1} lacks model_large or model_small")
    frame = frame.copy()
    if frame.empty:
        raise UserError(f"{path}: duos CSV has no rows")
    for column in ("model_large", "model_small"):
        frame[column] = frame[column].astype(str).str.strip()
        for row, name in enumerate(frame[column]):
            check_plain_name(name, f"{path}: data row {row + 1}, {column}")
    for side in ("large", "small"):
        column = f"gflops_{side}"
        if column in frame.columns:
            frame[column] = _numeric_column(frame, column, path)
        else:
            frame[column] = np.nan
        if backbones is not None:
            looked_up = frame[f"model_{side}"].map(lambda name: backbone_value(backbones, name, "GFLOPS"))
            frame[column] = frame[column].fillna(looked_up)
    if "gflops_balance" in frame.columns:
        frame["gflops_balance"] = _numeric_column(frame, "gflops_balance", path)
    else:
        frame["gflops_balance"] = np.nan
    for column in ("gflops_large", "gflops_small", "gflops_balance"):      # empty = unknown; else a real cost
        values = frame[column]
        bad = values.notna() & ~((values > 0) & np.isfinite(values))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: {column} must be a finite number > 0 (or empty when unknown), got "
                            f"{float(values.iloc[row]):g} at data row {row + 1}")
    computed = frame["gflops_small"] / frame["gflops_large"]
    # a balance given beside both costs must be their ratio (as make_duos.py writes it, rounded to 5 decimals)
    contradicts = (frame["gflops_balance"].notna() & computed.notna()
                   & ~np.isclose(frame["gflops_balance"], computed, rtol=1e-3, atol=1e-5))
    if contradicts.any():
        row = int(np.flatnonzero(contradicts.to_numpy())[0])
        raise UserError(f"{path}: data row {row + 1}: gflops_balance {frame['gflops_balance'].iloc[row]:g} is not "
                        f"gflops_small / gflops_large = {computed.iloc[row]:.5g}; correct or empty one of them")
    frame["gflops_balance"] = frame["gflops_balance"].fillna(computed)
    folded = frame[["model_large", "model_small"]].apply(lambda column: column.str.casefold())
    same = np.flatnonzero((folded["model_large"] == folded["model_small"]).to_numpy())
    if len(same):
        raise UserError(f"{path}: data row {same[0] + 1} pairs {frame['model_large'].iloc[same[0]]} with itself; "
                        f"a duo needs two different models")
    first_cost: dict = {}                  # one cost per model, whichever column and row gives it
    for row, duo in enumerate(frame.itertuples(index=False)):
        for name, cost in ((duo.model_large, duo.gflops_large), (duo.model_small, duo.gflops_small)):
            if not math.isfinite(cost):
                continue
            seen = first_cost.setdefault(name.casefold(), (cost, row))
            if not math.isclose(seen[0], cost, rel_tol=1e-9):
                raise UserError(f"{path}: {name} costs {seen[0]:g} GFLOPs at data row {seen[1] + 1} but {cost:g} at data "
                                f"row {row + 1}; a model has one cost")
    inverted = frame[frame["gflops_balance"] > 1]
    if len(inverted):
        pairs = [f"{a} + {b}" for a, b in zip(inverted["model_large"], inverted["model_small"])]
        warn(f"{path}: {len(pairs)} duo(s) with a sidekick costlier than the large model (FLOPs balance > 1): "
             f"{', '.join(pairs[:3])}{', ...' if len(pairs) > 3 else ''}; check which column is which")
    return frame[~folded.duplicated()].reset_index(drop=True)        # one row per pair, names in any case


def read_backbones(path: str | Path | None = None, flag: str = "--backbone_csv") -> pd.DataFrame:
    """backbones.csv: `path` (relative to the working folder, else to the repository), by default the
    repository's configs/backbones.csv whatever the working folder."""
    path = DEFAULT_BACKBONES if path is None else resolve_config_path(path, flag)
    frame = _read_table(Path(path), "backbone CSV")
    if "model_name" not in frame.columns:
        raise UserError(f"{path}: backbone CSV lacks column 'model_name'")
    empty = frame["model_name"].isna().to_numpy()
    if empty.any():
        raise UserError(f"{path}: data row {int(empty.argmax()) + 1} has no model_name")
    for row, name in enumerate(frame["model_name"]):
        check_plain_name(name, f"{path}: data row {row + 1}, model_name")
    # two rows, one model's files (two array tasks would train it twice): refused for every use of the CSV
    _check_unique(path, frame["model_name"].astype(str).tolist(), "backbone", "names in any case are one model")
    frame.attrs["path"] = str(path)
    return frame


def backbone_names(backbones: pd.DataFrame | None) -> list[str]:
    return [] if backbones is None else backbones["model_name"].dropna().astype(str).tolist()


def model_identity(name: str, what: str, backbones: pd.DataFrame | None) -> str:
    """The name the files of a model given as `name` carry: a plain name, spelt as its backbones.csv row."""
    return canonical_name(check_plain_name(name, what), backbone_names(backbones))


def _backbone_cell(backbones: pd.DataFrame | None, model: str, column: str):
    """The raw cell of backbones.csv for `model` (any case; seeds, soups and IVON's mean weights map
    to their backbone, which costs the same), or None when unknown."""
    if backbones is None or column not in backbones.columns:
        return None
    match = backbone_row(model, backbone_names(backbones), SAME_COST_SUFFIXES)
    if match is None:
        return None
    return backbones.loc[backbones["model_name"].astype(str) == match[0], column].iloc[0]


def duo_costs(duos: pd.DataFrame | None) -> NameMap:
    """model -> GFLOPs per image as a duos CSV (read by `read_duos`) gives them: its own columns, or the backbone
    CSV's where they were empty."""
    costs = NameMap()
    if duos is not None:
        for duo in duos.itertuples(index=False):
            for name, cost in ((duo.model_large, duo.gflops_large), (duo.model_small, duo.gflops_small)):
                if math.isfinite(cost):
                    costs[name] = float(cost)
    return costs


def cost_of(name: str, costs: NameMap, backbones: pd.DataFrame | None, meta: dict | None = None) -> float:
    """A model's GFLOPs per image, from one order of sources every stage follows: the duos CSV (`costs`, see
    `duo_costs`), else the backbone CSV's GFLOPS, else what stage 1 measured (the prediction file's meta "gflops"),
    else NaN (unknown: the report names such models)."""
    if name in costs:
        return costs[name]
    value = backbone_value(backbones, name, "GFLOPS")
    if math.isfinite(value):
        return value
    measured = (meta or {}).get("gflops")
    if isinstance(measured, (int, float)) and not isinstance(measured, bool) and math.isfinite(measured) and measured > 0:
        return float(measured)
    return math.nan


def backbone_value(backbones: pd.DataFrame | None, model: str, column: str) -> float:
    """A numeric column of backbones.csv for `model`, NaN when unknown."""
    value = pd.to_numeric(_backbone_cell(backbones, model, column), errors="coerce")
    return float(value) if pd.notna(value) else math.nan


def backbone_text(backbones: pd.DataFrame | None, model: str, column: str) -> str | None:
    """A text column of backbones.csv for `model` (e.g. source, tv_weights), None when unknown or empty."""
    value = _backbone_cell(backbones, model, column)
    return None if value is None or pd.isna(value) or str(value) == "" else str(value)


# ----------------------------------------------------------------------------- temperatures

def _check_unique(path: Path, keys: list, what: str, advice: str = "rerun the stage that fits it to rewrite the row") -> None:
    """One row per model (or pair), names compared case-insensitively: a duplicate would make the
    last row win silently."""
    seen = NameMap()
    for key in keys:
        if key in seen:
            shown = " + ".join(key) if isinstance(key, tuple) else key
            raise UserError(f"{path}: two rows for {what} {shown}; keep one ({advice})")
        seen[key] = True


@dataclass(frozen=True)
class Recorded:
    """A temperature (or a pair of duo weights) as a calibration table records it, with what it was fitted on:
    the dataset and the digests of the predictions (None where the row does not say: the official layout, or
    a file of an older version)."""
    value: float | tuple[float, float]
    dataset: str | None
    digests: tuple[str | None, ...]
    path: Path
    row: int


def _text_cells(frame: pd.DataFrame, column: str) -> list[str | None]:
    if column not in frame.columns:
        return [None] * len(frame)
    return [None if pd.isna(v) else str(v) for v in frame[column]]


def read_single_temperatures(path: str | Path) -> NameMap:
    """model -> Recorded temperature from temperature_single_model.csv (empty when the file does not exist);
    model names match case-insensitively."""
    path = Path(path)
    if not path.exists():
        return NameMap()
    frame = _read_table(path, "temperature CSV")
    for column in ("full_name", "temperature"):
        if column not in frame.columns:
            raise UserError(f"{path}: temperature CSV lacks column '{column}'")
    _check_names(path, frame, ["full_name"])
    temperatures = _numeric_column(frame, "temperature", path)
    _check_positive(path, frame["full_name"], temperatures, "temperature")
    names = frame["full_name"].astype(str).tolist()
    _check_unique(path, names, "model")
    return NameMap((name, Recorded(float(t), dataset, (digest,), path, row + 1)) for row, (name, t, dataset, digest) in
                   enumerate(zip(names, temperatures, _text_cells(frame, "dataset"), _text_cells(frame, "digest"))))


def read_duo_weights(path: str | Path) -> NameMap:
    """(large, small) -> Recorded (w_large, w_small) from temperature_duo.csv (names match case-insensitively);
    the official file's temperatures-only columns are converted with w = 1 / (2T). Weights and temperatures
    given together must agree (T = 1 / (2w))."""
    path = Path(path)
    if not path.exists():
        return NameMap()
    frame = _read_table(path, "duo temperature CSV")
    for column in ("model_large", "model_small", "temperature_large", "temperature_small"):
        if column not in frame.columns:
            raise UserError(f"{path}: duo temperature CSV lacks column '{column}'")
    _check_names(path, frame, ["model_large", "model_small"])
    names = frame["model_large"].astype(str) + " + " + frame["model_small"].astype(str)
    _check_unique(path, list(zip(frame["model_large"].astype(str), frame["model_small"].astype(str))), "duo")
    weights = NameMap()
    t_large = _numeric_column(frame, "temperature_large", path)
    t_small = _numeric_column(frame, "temperature_small", path)
    _check_positive(path, names, t_large, "temperature_large")
    _check_positive(path, names, t_small, "temperature_small")
    has_weights = {"weight_large", "weight_small"} <= set(frame.columns)
    w_large = _numeric_column(frame, "weight_large", path) if has_weights else None
    w_small = _numeric_column(frame, "weight_small", path) if has_weights else None
    datasets = _text_cells(frame, "dataset")
    digests = list(zip(_text_cells(frame, "digest_large"), _text_cells(frame, "digest_small")))
    for i, (large, small) in enumerate(zip(frame["model_large"].astype(str), frame["model_small"].astype(str))):
        from_temperatures = (temperature_to_weight(float(t_large.iloc[i])), temperature_to_weight(float(t_small.iloc[i])))
        if has_weights and pd.notna(w_large.iloc[i]) and pd.notna(w_small.iloc[i]):
            pair = (float(w_large.iloc[i]), float(w_small.iloc[i]))
            if min(pair) < 0:
                raise UserError(f"{path}: negative duo weight for {large} + {small}")
            if not all(map(math.isfinite, pair)):
                raise UserError(f"{path}: duo weights of {large} + {small} must be finite, got {pair}; refit them "
                                f"with evaluate/3_duo_temp_scale.py")
            for side, weight, implied in zip(("large", "small"), pair, from_temperatures):
                if not (weight == implied or math.isclose(weight, implied, rel_tol=1e-6)):
                    raise UserError(f"{path}: data row {i + 1} ({large} + {small}): weight_{side} {weight:g} disagrees "
                                    f"with temperature_{side} (T = 1/(2w) gives w = {implied:g}); it was left as it is: "
                                    f"delete the row (then rerun evaluate/3_duo_temp_scale.py) or empty one of the two "
                                    f"columns")
        else:
            pair = from_temperatures
        weights[(large, small)] = Recorded(pair, datasets[i], digests[i], path, i + 1)
    return weights


def _check_names(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
    missing = frame[columns].isna().any(axis=1).to_numpy()
    if missing.any():
        raise UserError(f"{path}: data row {int(missing.argmax()) + 1} has no model name in {', '.join(columns)}")


def _check_positive(path: Path, names: pd.Series, values: pd.Series, column: str) -> None:
    """Temperatures are > 0 (NaN, zero and negatives refused); inf is allowed: weight 0."""
    bad = ~(values > 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{path}: {column} must be > 0, got {float(values.iloc[i]):g} for {names.iloc[i]}; "
                        f"refit it with the temperature stage")


def _one_dataset(rows: list[dict], read):
    """A temperature table's check before new rows join it: it reads (`read`), and it holds one dataset's fits — a
    row fitted on another dataset than the new ones is an error (one --calibrated_dir per dataset), never replaced."""
    new = {row.get("dataset") for row in rows} - {None}

    def validate(frame: pd.DataFrame, path: Path) -> None:
        recorded = read(path)
        other = sorted({r.dataset for r in recorded.values() if r.dataset} - new) if new else []
        if other:
            raise UserError(f"{path}: holds temperatures fitted on dataset {', '.join(map(repr, other))}, and these are "
                            f"fitted on {', '.join(map(repr, sorted(new)))}; it was left as it is: keep one "
                            f"--calibrated_dir per dataset")
    return validate


def queue_single_temperatures(outputs: safe_io.Outputs, folder: str | Path, rows: list[dict]) -> Path:
    """Queue stage-2 rows (one per model, replacing that model's row) for <folder>/temperature_single_model.csv."""
    return outputs.upsert(Path(folder) / SINGLE_TEMPERATURE_FILE, pd.DataFrame(rows, columns=SINGLE_TEMPERATURE_COLUMNS),
                          ["full_name"], SINGLE_TEMPERATURE_COLUMNS, required=["temperature"],
                          validate=_one_dataset(rows, read_single_temperatures))


def queue_duo_temperatures(outputs: safe_io.Outputs, folder: str | Path, rows: list[dict]) -> Path:
    """Queue stage-3 rows (one per pair, replacing that pair's row) for <folder>/temperature_duo.csv."""
    return outputs.upsert(Path(folder) / DUO_TEMPERATURE_FILE, pd.DataFrame(rows, columns=DUO_TEMPERATURE_COLUMNS),
                          ["model_large", "model_small"], DUO_TEMPERATURE_COLUMNS,
                          required=["temperature_large", "temperature_small"],
                          validate=_one_dataset(rows, read_duo_weights))


def duo_temperature_row(large: str, small: str, weight_large: float, weight_small: float, val_nll: float,
                        n_val: int, dataset: str | None = None, digests: tuple = (None, None)) -> dict:
    return {"model_large": large, "model_small": small,
            "temperature_large": weight_to_temperature(weight_large),
            "temperature_small": weight_to_temperature(weight_small),
            "weight_large": weight_large, "weight_small": weight_small, "val_nll": val_nll, "n_val": n_val,
            "dataset": dataset, "digest_large": digests[0], "digest_small": digests[1]}

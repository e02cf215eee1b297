"""Reading the results CSVs, and drawing the paper's kind of figures (numbers from paper_tables)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from utils.report import paper_tables  # noqa: E402

SPLIT_LABEL = {"test": "in-distribution (test)", "ood_test": "shifted (ood_test)"}
MODE_STYLE = {"asymmetric": ("tab:red", "Duo: Ours (asymmetric)"), "uqonly": ("tab:blue", "Duo: UQ only"),
              "unweighted": ("tab:gray", "Duo: unweighted"), "unweighted_ts": ("tab:olive", "Duo: unweighted (TS, code)"),
              "asymmetric_code": ("tab:purple", "Duo: asymmetric (code's uncertainty)")}
SERIES_COLORS = {label: color for color, label in MODE_STYLE.values()}
FIGURE_METRICS = ("Acc", "F1", "NLL", "ECE", "CP_AUROC", "AURC", "SAC@98")     # Figs. 3-6 and more


def save_figure(fig, path: Path, dpi: int) -> None:
    """PNG written atomically (a killed report never leaves a half-written figure)."""
    from utils.files import safe_io
    with safe_io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


RESULT_KEYS = {"single_model": ["model", "wrapper", "uncertainty_type", "split"],
               "duo": ["model_large", "model_small", "mode", "uncertainty_type", "split"],
               "deep_ensemble": ["model", "m", "subset", "uncertainty_type", "split"],
               "duo_delta": ["model_large", "model_small", "mode", "uncertainty_type", "split", "metric"],
               "cascade": ["model_large", "model_small", "order", "uncertainty_type", "selection", "target", "split"],
               "single_model_delta": ["model", "wrapper", "uncertainty_type", "split", "metric"],
               "deep_ensemble_delta": ["model", "m", "uncertainty_type", "split", "metric"]}
NAME_COLUMNS = ("model", "model_large", "model_small", "base")
NUMBER_COLUMNS = {"single_model": ["gflops"], "duo": ["gflops_large", "gflops_small", "gflops_balance"],
                  "deep_ensemble": ["m"], "duo_delta": ["gflops_balance", "delta", "ci_low", "ci_high", "B", "seed"],
                  "cascade": ["target", "tau", "deferred", "gflops_large", "gflops_small", "gflops_expected"],
                  "single_model_delta": ["delta", "ci_low", "ci_high", "B", "seed"],
                  "deep_ensemble_delta": ["m", "subsets", "delta", "ci_low", "ci_high", "B", "seed"]}
# --combine probs writes the same tables under kinds <kind>_probs
for _kind in ("duo", "deep_ensemble", "duo_delta", "deep_ensemble_delta"):
    _probs = _kind.replace("_delta", "_probs_delta") if _kind.endswith("_delta") else f"{_kind}_probs"
    RESULT_KEYS[_probs], NUMBER_COLUMNS[_probs] = RESULT_KEYS[_kind], NUMBER_COLUMNS[_kind]


def read_results(results_dir: Path, kind: str) -> pd.DataFrame:
    """All splits of evaluation_<kind>_<dataset>[_ood].csv in a folder, with a 'dataset' column. A file
    that cannot be read, lacks a column the report uses, has a row without its key, a key twice, a model
    name that is not a plain name or a number column that holds text is an error naming file, row and
    column (an empty cell, or nan, is a missing value)."""
    from utils.cli.parsing import UserError
    from utils.files import safe_io
    from utils.files.model_names import check_plain_name
    from utils.maths.uncertainty_metrics import METRIC_COLUMNS
    frames = []
    # evaluation_duo_* also matches the files of the kinds duo_delta, duo_probs, ...: those are not this kind's
    others = [other[len(kind) + 1:] + "_" for other in RESULT_KEYS if other.startswith(f"{kind}_")]
    for path in sorted(Path(results_dir).glob(f"evaluation_{kind}_*.csv")):
        dataset = path.stem[len(f"evaluation_{kind}_"):].removesuffix("_ood")
        if any(dataset.startswith(prefix) for prefix in others):
            continue
        keys = RESULT_KEYS[kind]
        frame = safe_io.read_table(path, "results file", keep_default_na=False, na_values=[""], dtype=str)
        numbers = NUMBER_COLUMNS[kind] + ([] if kind.endswith("_delta") else list(METRIC_COLUMNS))
        missing = [c for c in dict.fromkeys([*keys, *numbers]) if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: lacks column(s) {missing}; rerun the stage that writes it")
        blank = frame[keys].isna().any(axis=1).to_numpy()
        if blank.any():
            raise UserError(f"{path}: data row {int(blank.argmax()) + 1} has an empty {', '.join(keys)} cell; rerun "
                            f"the stage that writes it")
        for column in numbers:
            text = frame[column]
            values = pd.to_numeric(text.where(text.str.casefold() != "nan"), errors="coerce")
            bad = (values.isna() & text.notna() & (text.str.casefold() != "nan")).to_numpy()
            if bad.any():
                row = int(bad.argmax())
                raise UserError(f"{path}: data row {row + 1}, column {column}: {text.iloc[row]!r} is not a number; "
                                f"rerun the stage that writes it")
            frame[column] = values.astype(float)
        if not kind.endswith("_delta"):
            _check_ranges(frame, path, kind)
        if kind.endswith("_delta"):
            unset = frame[["B", "seed"]].isna().any(axis=1).to_numpy()
            swapped = (frame["ci_low"] > frame["ci_high"]).to_numpy()
            for bad, what in ((unset, "an empty B or seed cell"), (swapped, "ci_low above ci_high")):
                if bad.any():
                    raise UserError(f"{path}: data row {int(bad.argmax()) + 1} has {what}; rerun the stage that wrote it "
                                    f"with --bootstrap")
        if kind.startswith("deep_ensemble"):
            if not (np.isfinite(frame["m"]) & (frame["m"] >= 1) & (frame["m"] % 1 == 0)).all():
                raise UserError(f"{path}: column m must hold whole ensemble sizes >= 1; rerun stage 8")
            frame["m"] = frame["m"].astype(int)
        twice = frame.duplicated(keys).to_numpy()
        if twice.any():
            row = int(twice.argmax())
            key = ", ".join(f"{k}={frame[k].iloc[row]}" for k in keys)
            raise UserError(f"{path}: data row {row + 1} repeats the key ({key}) of an earlier "
                            f"row; remove one (the stages never write a key twice)")
        for column in (c for c in NAME_COLUMNS if c in frame.columns):
            for name in frame[column].unique():
                check_plain_name(name, f"{path}: {column}")
        frame["dataset"] = dataset
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _check_ranges(frame: pd.DataFrame, path: Path, kind: str) -> None:
    """Metrics are fractions (NLL: >= 0), a cascade's order and selection are the stage's words, its deferred share
    a fraction: a hand-edited 7 for 0.7 is an error, never a 700 % in a table or on a Pareto front."""
    from utils.cli.parsing import UserError
    from utils.maths.cascades import ORDERS
    from utils.maths.uncertainty_metrics import METRIC_COLUMNS
    slack = 1e-9                                  # E-AURC = AURC - oracle may round a hair below 0
    checks = [(m, -slack, 1 + slack) for m in METRIC_COLUMNS if m != "NLL"] + [("NLL", 0.0, np.inf)]
    if kind == "cascade":
        checks.append(("deferred", 0.0, 1.0))
    for column, low, high in checks:
        values = frame[column].astype(float)
        bad = (values < low) | (values > high)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: data row {row + 1}, column {column}: {values.iloc[row]:g} is outside "
                            f"[{low if low >= 0 else 0:g}, {high:g}] (metrics are fractions, not percent); rerun the "
                            f"stage that writes it")
    if kind == "cascade":
        for column, allowed in (("order", ORDERS), ("selection", ("sweep", "val_budget"))):
            bad = ~frame[column].isin(allowed)
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise UserError(f"{path}: data row {row + 1}, column {column}: {frame[column].iloc[row]!r} is not one "
                                f"of {', '.join(allowed)}; rerun stage 7")


def radar_figure(polygons: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str,
                 metrics=paper_tables.RADAR_METRICS) -> None:
    """One polygon per label (dataset and split): mean relative improvement per axis, shaded ± std."""
    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False)
    closed = np.r_[angles, angles[:1]]
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"polar": True})
    for label, (mean, std) in polygons.items():
        line, = ax.plot(closed, np.r_[mean, mean[:1]], marker="o", label=label)
        ax.fill_between(closed, np.r_[mean - std, mean[0] - std[0]], np.r_[mean + std, mean[0] + std[0]],
                        color=line.get_color(), alpha=0.15)
    ax.plot(np.linspace(0, 2 * np.pi, 100), np.zeros(100), color="black", lw=0.8, ls="--")
    ax.set_xticks(angles, [paper_tables.COLUMN_LABEL.get(m, m) for m in metrics])
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.22), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)


def _axis_label(metric: str) -> str:
    scale = paper_tables.PAPER_SCALE.get(metric, 1)
    unit = {1: "", 100: " (%)" if metric in paper_tables.HIGHER_BETTER or metric == "ECE" else " ×100",
            1e4: " ×10⁴"}[scale]
    return paper_tables.COLUMN_LABEL.get(metric, metric) + unit


def metric_vs_balance_figure(series: dict[str, pd.DataFrame], baselines: dict[str, pd.DataFrame], path: Path,
                             title: str, metrics=FIGURE_METRICS) -> None:
    """Each metric (paper units) against FLOPs balance: one line per series (a frame of duo rows of one
    split each, or both splits), one dashed line per baseline (single-model rows); rows = splits."""
    frames = [f for f in series.values() if len(f)]
    splits = [s for s in ("test", "ood_test") if any(s in set(f["split"]) for f in frames)]
    fig, axes = plt.subplots(len(splits), len(metrics), figsize=(3.0 * len(metrics), 2.8 * len(splits)), squeeze=False)
    for i, split in enumerate(splits):
        for j, metric in enumerate(metrics):
            ax, plotted = axes[i, j], False
            for k, (label, frame) in enumerate(series.items()):
                color = SERIES_COLORS.get(label) or f"C{k}"
                part = frame[(frame["split"] == split)].copy()
                part = part[np.isfinite(part[metric].astype(float))].sort_values("gflops_balance")
                if len(part):             # e.g. CP_AUROC is undefined when no prediction is correct
                    x = part["gflops_balance"].astype(float)
                    y = part[metric].astype(float) * paper_tables.PAPER_SCALE.get(metric, 1)
                    ax.plot(x, y, marker="o", ms=3, color=color, label=label, lw=1)
                    if f"sig:{metric}" in part:       # hollow: the bootstrap interval of the gain includes 0
                        hollow = (part[f"sig:{metric}"] == False).to_numpy()  # noqa: E712 (NaN: no interval)
                        ax.scatter(x[hollow], y[hollow], s=14, facecolors="white", edgecolors=color, zorder=3)
                    plotted = True
            for k, (label, rows) in enumerate(baselines.items()):
                row = rows[rows["split"] == split]
                if len(row):
                    ax.axhline(paper_tables.in_paper_units(row.iloc[0][metric], metric), color="black",
                               ls=["--", ":", "-."][k % 3], lw=1, label=label)
            if plotted:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{_axis_label(metric)} — {split}", fontsize=9)
            ax.set_xlabel("FLOPs balance", fontsize=8)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def single_models_figure(rows: pd.DataFrame, large_models, path: Path, title: str, metric: str = "Acc") -> None:
    """Every single model's metric (temperature-scaled) against its GFLOPs, one panel per split; the
    large models are marked."""
    splits = [s for s in ("test", "ood_test") if s in set(rows["split"])]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    for j, split in enumerate(splits):
        ax, part = axes[0, j], rows[rows["split"] == split]
        large = part["model"].isin(set(large_models))
        for mask, style in ((~large, {"color": "tab:blue", "label": "sidekick candidates"}),
                            (large, {"color": "tab:red", "marker": "*", "s": 90, "label": "large models"})):
            ax.scatter(part.loc[mask, "gflops"].astype(float),
                       part.loc[mask, metric].astype(float) * paper_tables.PAPER_SCALE.get(metric, 1), **style)
        for _, row in part.iterrows():
            ax.annotate(row["model"], (float(row["gflops"]), paper_tables.in_paper_units(row[metric], metric)),
                        fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set(xlabel="GFLOPs", ylabel=_axis_label(metric), title=split)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


FAMILY_STYLE = {"single (raw)": ("tab:gray", "o"), "single (TS)": ("tab:blue", "o"), "soup (raw)": ("tab:cyan", "P"),
                "soup (TS)": ("tab:cyan", "P"), "IVON": ("tab:brown", "v"), "Laplace": ("tab:pink", "^"),
                "deep ensemble (TS)": ("tab:green", "s"), "duo (asymmetric)": ("tab:red", "D"),
                "cascade (large first)": ("tab:orange", "."), "cascade (small first)": ("tab:purple", ".")}


def pareto_figure(points: dict[str, pd.DataFrame], path: Path, title: str, metrics) -> None:
    """Metric against GFLOPs per image (log scale) for every option, one row per split and one column per metric;
    cascades as curves, the Pareto front as a black step line."""
    from matplotlib.lines import Line2D

    from utils.report.pareto import front
    splits = list(points)
    fig, axes = plt.subplots(len(splits), len(metrics), figsize=(3.6 * len(metrics), 3.3 * len(splits)), squeeze=False)
    legend: dict[str, Line2D] = {}
    for i, split in enumerate(splits):
        for j, metric in enumerate(metrics):
            ax, scale = axes[i, j], paper_tables.PAPER_SCALE.get(metric, 1)
            frame = points[split][np.isfinite(points[split][metric].astype(float))]
            ax.set(title=f"{_axis_label(metric)} — {split}", xlabel="GFLOPs per image", ylabel=_axis_label(metric))
            if frame.empty:                        # e.g. AUROC when every prediction is right or every one wrong
                ax.text(0.5, 0.5, "undefined", ha="center", va="center", transform=ax.transAxes)
                continue
            for family, part in frame.groupby("family", sort=False):
                color, marker = FAMILY_STYLE.get(family, ("black", "x"))
                if family.startswith("cascade"):
                    for _, curve in part.groupby(part["label"].str.replace(r" \(\d+% deferred\)$", "", regex=True)):
                        curve = curve.sort_values("gflops")
                        ax.plot(curve["gflops"], curve[metric] * scale, color=color, lw=0.8, alpha=0.7)
                    legend[family] = Line2D([], [], color=color, lw=1.2, label=family)
                else:
                    ax.scatter(part["gflops"], part[metric] * scale, color=color, marker=marker, s=18)
                    legend[family] = Line2D([], [], color=color, marker=marker, ls="", label=family)
            best = front(frame, metric)
            ax.step(best["gflops"], best[metric] * scale, where="post", color="black", lw=1)
            ax.set_xscale("log")
    legend["Pareto front"] = Line2D([], [], color="black", lw=1, label="Pareto front")
    fig.legend(handles=list(legend.values()), loc="lower center", ncol=min(len(legend), 6), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def curves_figure(curves: dict[str, dict], path: Path, title: str) -> None:
    """Risk-coverage curves and reliability diagrams, one column per split.

    `curves[split][label] = (coverage, risk, (edges, conf, acc, counts))`.
    """
    splits = list(curves)
    fig, axes = plt.subplots(2, len(splits), figsize=(5 * len(splits), 8), squeeze=False)
    for j, split in enumerate(splits):
        for label, (coverage, risk, bins) in curves[split].items():
            axes[0, j].plot(coverage, risk, label=label, lw=1.2)
            edges, conf, acc, counts = bins
            centers = (edges[:-1] + edges[1:]) / 2
            axes[1, j].plot(centers[counts > 0], acc[counts > 0], marker="o", label=label, lw=1)
        axes[0, j].set(title=f"risk-coverage — {split}", xlabel="coverage", ylabel="selective risk")
        axes[1, j].plot([0, 1], [0, 1], color="black", ls="--", lw=0.8)
        axes[1, j].set(title=f"reliability (15 bins) — {split}", xlabel="confidence", ylabel="accuracy",
                       xlim=(0, 1), ylim=(0, 1))
        axes[0, j].legend(fontsize=8)
        axes[1, j].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def temperature_ratio_figure(points: pd.DataFrame, path: Path) -> None:
    """Fig. 10: (T_l^single / T_l^duo) / (T_s^single / T_s^duo) against FLOPs balance, one colour per
    large model; duos that reverted to the large model (w_small = 0, ratio inf) are named in the title."""
    finite = points[np.isfinite(points["ratio"])]
    reverted = points.loc[~np.isfinite(points["ratio"]), "model_small"].tolist()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for large, group in finite.groupby("model_large"):
        ax.scatter(group["gflops_balance"], group["ratio"], label=large, s=18)
        for _, row in group.iterrows():
            ax.annotate(row["model_small"], (row["gflops_balance"], row["ratio"]), fontsize=6, xytext=(2, 2),
                        textcoords="offset points")
    if len(finite):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
    ax.axhline(1.0, color="black", ls="--", lw=0.8)
    title = "Temperature ratio of the duo's members (Fig. 10)"
    if reverted:
        title += f"\n(reverted to the large model, w_small = 0: {', '.join(reverted)})"
    ax.set(xlabel="FLOPs balance", ylabel="(T_l^single/T_l^duo) / (T_s^single/T_s^duo)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for _, row in frame.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) and not pd.isna(v) else
                 ("" if pd.isna(v) else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

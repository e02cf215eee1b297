"""Tables and figures of the paper's kind from the results CSVs (and prediction files for curves)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from utils.stages.scoring import SPREAD_DDOF  # noqa: E402

HIGHER_BETTER = {"Acc", "F1", "CP_AUROC", "SAC@98", "SAC@99", "F1_present"}
RADAR_METRICS = ["Acc", "F1", "CP_AUROC", "AURC", "Brier", "NLL"]        # the paper's Fig. 1
TABLE_METRICS = ["Acc", "F1", "NLL", "ECE", "Brier", "CP_AUROC", "AURC", "SAC@98"]
SPLIT_LABEL = {"test": "in-distribution (test)", "ood_test": "shifted (ood_test)"}
MODE_STYLE = {"asymmetric": ("tab:red", "Duo: Ours (asymmetric)"), "uqonly": ("tab:blue", "Duo: UQ only"),
              "unweighted": ("tab:gray", "Duo: unweighted"), "unweighted_ts": ("tab:olive", "Duo: unweighted (TS, code)"),
              "asymmetric_code": ("tab:purple", "Duo: asymmetric (code's uncertainty)")}


def save_figure(fig, path: Path, dpi: int) -> None:
    """PNG written atomically (a killed report never leaves a half-written figure)."""
    from utils.files import safe_io
    with safe_io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def relative_improvement(value: float, base: float, metric: str) -> float:
    """Improvement toward the perfect score, in percent (paper-notes §5)."""
    if metric in HIGHER_BETTER:
        return 100.0 * (value - base) / (1.0 - base) if base != 1 else math.nan
    return -100.0 * (value - base) / base if base != 0 else math.nan


RESULT_KEYS = {"single_model": ["model", "wrapper", "uncertainty_type", "split"],
               "duo": ["model_large", "model_small", "mode", "uncertainty_type", "split", "gflops_balance"],
               "deep_ensemble": ["model", "m", "subset", "uncertainty_type", "split"]}


def read_results(results_dir: Path, kind: str) -> pd.DataFrame:
    """All splits of evaluation_<kind>_<dataset>[_ood].csv in a folder, with a 'dataset' column; a file
    that cannot be read, lacks a column the report uses or has a row without its key is an error."""
    from utils.cli.parsing import UserError
    from utils.files import safe_io
    from utils.maths.uncertainty_metrics import METRIC_COLUMNS
    frames = []
    for path in sorted(Path(results_dir).glob(f"evaluation_{kind}_*.csv")):
        dataset = path.stem[len(f"evaluation_{kind}_"):].removesuffix("_ood")
        frame = safe_io.read_table(path, "results file", keep_default_na=False, na_values=[""],
                                   dtype={k: str for k in RESULT_KEYS[kind] if k not in ("m", "gflops_balance")})
        missing = [c for c in [*RESULT_KEYS[kind], *METRIC_COLUMNS] if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: lacks column(s) {missing}; rerun the stage that writes it")
        keys = [k for k in RESULT_KEYS[kind] if k != "gflops_balance"]
        blank = frame[keys].isna().any(axis=1).to_numpy()
        if blank.any():
            raise UserError(f"{path}: data row {int(blank.argmax()) + 1} has an empty {', '.join(keys)} cell; rerun "
                            f"the stage that writes it")
        frame["dataset"] = dataset
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def with_known_flops(duos: pd.DataFrame) -> pd.DataFrame:
    """The duos whose FLOPs balance is known (models outside backbones.csv have none): the FLOPs figures
    and buckets are about them only."""
    return duos[np.isfinite(pd.to_numeric(duos["gflops_balance"], errors="coerce"))] if len(duos) else duos


def baseline_rows(single: pd.DataFrame, large: str, uncertainty: str = "softmax_response") -> pd.DataFrame:
    """The temperature-scaled large model, one row per (dataset, split) (the paper's baseline)."""
    rows = single[(single["model"] == large) & (single["wrapper"] == "TempScaleWrapper")
                  & (single["uncertainty_type"] == uncertainty)]
    return rows.set_index(["dataset", "split"])


def radar_figure(duos: pd.DataFrame, single: pd.DataFrame, large: str, path: Path,
                 balance: tuple[float, float] = (0.1, 0.2), metrics=RADAR_METRICS) -> str:
    """Mean (± std) relative improvement of asymmetric duos with FLOPs balance in `balance` over
    the temperature-scaled large model, one polygon per dataset split. Returns a caption."""
    base = baseline_rows(single, large)
    chosen = duos[(duos["model_large"] == large) & (duos["mode"] == "asymmetric")
                  & (duos["uncertainty_type"] == "softmax_response")]
    in_range = chosen[(chosen["gflops_balance"] >= balance[0]) & (chosen["gflops_balance"] <= balance[1])]
    note = f"FLOPs balance in [{balance[0]}, {balance[1]}]"
    if in_range.empty:
        in_range, note = chosen, f"no duo in [{balance[0]}, {balance[1]}]: all {len(chosen['model_small'].unique())} sidekicks"
    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False)
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"polar": True})
    for (dataset, split), group in in_range.groupby(["dataset", "split"]):
        if (dataset, split) not in base.index:
            continue
        b = base.loc[(dataset, split)]
        values = np.array([[relative_improvement(r[m], b[m], m) for m in metrics] for _, r in group.iterrows()])
        mean = np.nanmean(values, 0)
        std = np.nanstd(values, 0, ddof=SPREAD_DDOF) if len(values) > SPREAD_DDOF else np.zeros_like(mean)
        closed = np.r_[angles, angles[:1]]
        line, = ax.plot(closed, np.r_[mean, mean[:1]], marker="o", label=f"{dataset} {SPLIT_LABEL.get(split, split)}")
        ax.fill_between(closed, np.r_[mean - std, mean[0] - std[0]], np.r_[mean + std, mean[0] + std[0]],
                        color=line.get_color(), alpha=0.15)
    ax.plot(np.linspace(0, 2 * np.pi, 100), np.zeros(100), color="black", lw=0.8, ls="--")
    ax.set_xticks(angles, [m.replace("CP_AUROC", "AUROC") for m in metrics])
    ax.set_title(f"Relative improvement toward perfect (%) of asymmetric duos\nover the temperature-scaled {large} "
                 f"({note})", fontsize=10)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.22), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)
    return note


def metric_vs_balance_figure(duos: pd.DataFrame, single: pd.DataFrame, large: str, path: Path,
                             metrics=("Acc", "F1", "NLL", "ECE", "CP_AUROC", "AURC", "SAC@98")) -> None:
    """Each metric against FLOPs balance per mode (the paper's Figs. 2-6), the TS large model dashed."""
    base = baseline_rows(single, large)
    rows = duos[(duos["model_large"] == large) & (duos["uncertainty_type"] == "softmax_response")]
    splits = [s for s in ("test", "ood_test") if s in set(rows["split"])]
    fig, axes = plt.subplots(len(splits), len(metrics), figsize=(3.0 * len(metrics), 2.8 * len(splits)), squeeze=False)
    for i, split in enumerate(splits):
        part = rows[rows["split"] == split]
        for j, metric in enumerate(metrics):
            ax, plotted = axes[i, j], False
            for mode, group in part.groupby("mode"):
                color, label = MODE_STYLE.get(mode, ("black", mode))
                group = group[np.isfinite(group[metric].astype(float))].sort_values("gflops_balance")
                if len(group):             # e.g. CP_AUROC is undefined when no prediction is correct
                    ax.plot(group["gflops_balance"], group[metric], marker="o", color=color, label=label, lw=1)
                    plotted = True
            key = (part["dataset"].iloc[0], split) if len(part) else None
            if key in base.index:
                ax.axhline(base.loc[key][metric], color="black", ls="--", lw=1, label=f"{large} (TS)")
            if plotted:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{metric} — {split}", fontsize=9)
            ax.set_xlabel("FLOPs balance", fontsize=8)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
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


def weight_ratio_figure(weights: dict, single: dict, balances: pd.Series, path: Path) -> None:
    """(T_l^single / T_l^duo) / (T_s^single / T_s^duo) = (w_l T_l^single) / (w_s T_s^single) against
    FLOPs balance (the paper's Fig. 10); duos that reverted to the large model (w_s = 0) are listed."""
    points, reverted = [], []
    for (large, small), (w_large, w_small) in weights.items():
        if (large, small) not in balances.index or large not in single or small not in single:
            continue
        if w_small == 0:
            reverted.append(small)
            continue
        points.append((balances.loc[(large, small)], (w_large * single[large]) / (w_small * single[small]), small))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if points:
        xs, ys, _ = zip(*points)
        ax.scatter(xs, ys)
        for x, y, name in points:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axhline(1.0, color="black", ls="--", lw=0.8)
    title = "How much more the duo trusts the large model"
    if reverted:
        title += f"\n(reverted to the large model, w_small = 0: {', '.join(reverted)})"
    ax.set(xlabel="FLOPs balance", ylabel="weight ratio large / small (TS-normalised)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def mean_and_spread(values: pd.Series, digits: int = 4) -> str:
    """'mean ± sample std' of the values (the mean alone for a single value, which has no spread)."""
    if len(values) <= SPREAD_DDOF:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=SPREAD_DDOF):.{digits}f}"


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for _, row in frame.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) and not pd.isna(v) else
                 ("" if pd.isna(v) else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flops_buckets(duos: pd.DataFrame, large: str) -> pd.DataFrame:
    """AD[m, m+1): asymmetric duos whose total FLOPs are in [m, m+1) x the large model's (paper Table 2)."""
    rows = duos[(duos["model_large"] == large) & (duos["mode"] == "asymmetric")
                & (duos["uncertainty_type"] == "softmax_response")].copy()
    rows["bucket"] = np.floor(1.0 + rows["gflops_balance"]).astype(int)
    return rows

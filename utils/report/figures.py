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
OURS = MODE_STYLE["asymmetric"][1]
FIGURE_METRICS = ("Acc", "F1", "NLL", "ECE", "CP_AUROC", "AURC", "SAC@98")     # Figs. 3-6 and more


def save_figure(fig, path, dpi: int) -> None:
    """The figure as PNG bytes, handed to `path` when it is a callable (the report queues them with its other
    outputs), else written atomically to that file."""
    import io

    from utils.files import safe_io
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    if callable(path):
        path(buffer.getvalue())
    else:
        safe_io.write_bytes(path, buffer.getvalue())


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
            # the paper's method last and on top: coinciding modes (uqonly, asymmetric_code) must not hide it
            ordered = sorted(enumerate(series.items()), key=lambda item: item[1][0] == OURS)
            for k, (label, frame) in ordered:
                color = SERIES_COLORS.get(label) or f"C{k}"
                ours = label == OURS
                part = frame[(frame["split"] == split)].copy()
                part = part[np.isfinite(part[metric].astype(float))].sort_values("gflops_balance")
                if len(part):             # e.g. CP_AUROC is undefined when no prediction is correct
                    x = part["gflops_balance"].astype(float)
                    y = part[metric].astype(float) * paper_tables.PAPER_SCALE.get(metric, 1)
                    ax.plot(x, y, marker="o", ms=5 if ours else 3, color=color, label=label, lw=1.6 if ours else 1,
                            zorder=4 if ours else 2)
                    if f"sig:{metric}" in part:       # hollow: the bootstrap interval of the gain includes 0
                        hollow = (part[f"sig:{metric}"] == False).to_numpy()  # noqa: E712 (NaN: no interval)
                        ax.scatter(x[hollow], y[hollow], s=14, facecolors="white", edgecolors=color,
                                   zorder=5 if ours else 3)
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


def severity_figure(curves: dict[str, dict[str, pd.DataFrame]], large: str, path) -> None:
    """The asymmetric duo's gain over the TS large model against corruption severity, one panel per metric, one line
    per sidekick (utils/report/shift.py's severity_curve)."""
    metrics = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for small, found in curves.items():
            curve = found[metric]
            if len(curve):
                ax.errorbar(curve["severity"], curve["delta"], yerr=[curve["delta"] - curve["ci_low"],
                                                                     curve["ci_high"] - curve["delta"]],
                            marker="o", ms=4, capsize=3, label=small)
        ax.axhline(0.0, color="black", lw=0.8, ls="--")
        ax.set(xlabel="severity", ylabel=f"Δ {metric} (duo − TS large)", xticks=range(1, 6))
    axes[0][0].legend(fontsize=7, title="sidekick", title_fontsize=7)
    fig.suptitle(f"{large}: asymmetric duo − TS large, mean over corruptions", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)

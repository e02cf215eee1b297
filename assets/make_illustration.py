"""Draw assets/duo_illustration.png: the asymmetric duo as a diagram (run from the repository root).

    python assets/make_illustration.py
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402


def box(ax, x, y, w, h, text, color, size=10):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.03", fc=color, ec="black", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, start, end):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, lw=1.2, color="black"))


def main() -> None:
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4.2)
    ax.axis("off")
    box(ax, 0.2, 1.6, 1.3, 1.0, "image x", "#eeeeee")
    box(ax, 1.9, 2.6, 2.7, 1.1, "large model\n(e.g. ConvNeXt-B, 15.4 GFLOPs)", "#9ecae1", 9)
    box(ax, 1.9, 0.5, 2.7, 0.9, "sidekick\n(e.g. EfficientNet-B0, 0.4 GFLOPs)", "#fdd0a2", 9)
    box(ax, 5.0, 2.75, 1.4, 0.8, "w_large · l(x)", "#deebf7")
    box(ax, 5.0, 0.55, 1.4, 0.8, "w_small · s(x)", "#feedde")
    box(ax, 7.0, 1.65, 1.0, 0.9, "Σ\nz(x)", "#e5f5e0")
    box(ax, 8.5, 1.45, 1.35, 1.3, "softmax\nprediction\n+ uncertainty\n1 − max p", "#c7e9c0")
    for start, end in (((1.5, 2.2), (1.9, 3.1)), ((1.5, 2.0), (1.9, 0.95)), ((4.6, 3.15), (5.0, 3.15)),
                       ((4.6, 0.95), (5.0, 0.95)), ((6.4, 3.15), (7.0, 2.3)), ((6.4, 0.95), (7.0, 1.9)),
                       ((8.0, 2.1), (8.5, 2.1))):
        arrow(ax, start, end)
    ax.text(5.0, 4.0, "w_large, w_small ≥ 0 fitted on validation NLL (two parameters, seconds)", fontsize=10)
    ax.text(5.0, 0.15, "≈ 10–20% more compute than the large model alone", fontsize=10)
    fig.tight_layout()
    out = Path(__file__).resolve().parent / "duo_illustration.png"
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

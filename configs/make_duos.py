"""Regenerate configs/duos.csv and configs/duos_rn50.csv from configs/backbones.csv.

A duo pairs a large model with every backbone of strictly fewer GFLOPs (paper-notes §3.4).
Rows added by hand to a duos CSV (pairs this rule would not produce) are kept.

    python configs/make_duos.py [--backbone_csv configs/backbones.csv]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from utils import safe_io
from utils.tables import DUO_COLUMNS

HERE = Path(__file__).resolve().parent
PAPER_LARGE = ["ConvNeXt_Base", "Swin_V2_B", "tf_efficientnetv2_l.in21k_ft_in1k",
               "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k"]
RN50_LARGE = ["ResNet50"]


def duos_for(backbones: pd.DataFrame, large_models: list[str]) -> pd.DataFrame:
    rows = []
    by_name = backbones.set_index("model_name")
    for large in large_models:
        if large not in by_name.index:
            raise SystemExit(f"error: {large} is not in the backbone CSV")
        big = by_name.loc[large]
        smaller = backbones[backbones["GFLOPS"] < big["GFLOPS"]].sort_values("GFLOPS")
        for small in smaller.itertuples(index=False):
            rows.append({"model_large": large, "model_small": small.model_name, "source_large": big["source"],
                         "source_small": small.source, "gflops_large": big["GFLOPS"], "gflops_small": small.GFLOPS,
                         "gflops_balance": round(small.GFLOPS / big["GFLOPS"], 5)})
    return pd.DataFrame(rows, columns=DUO_COLUMNS)


def write_keeping_hand_rows(path: Path, generated: pd.DataFrame) -> int:
    if path.exists():
        existing = pd.read_csv(path)
        key = existing["model_large"] + "|" + existing["model_small"]
        extra = existing[~key.isin(generated["model_large"] + "|" + generated["model_small"])]
        generated = pd.concat([generated, extra.reindex(columns=DUO_COLUMNS)], ignore_index=True)
    safe_io.write_csv(path, generated)
    return len(generated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone_csv", default=str(HERE / "backbones.csv"))
    parser.add_argument("--output_dir", default=str(HERE))
    args = parser.parse_args()
    backbones = pd.read_csv(args.backbone_csv)
    for name, large in (("duos.csv", PAPER_LARGE), ("duos_rn50.csv", RN50_LARGE)):
        path = Path(args.output_dir) / name
        count = write_keeping_hand_rows(path, duos_for(backbones, large))
        print(f"wrote {count} duos to {path}")


if __name__ == "__main__":
    main()

"""Regenerate configs/duos.csv and configs/duos_rn50.csv from configs/backbones.csv.

A duo pairs a large model with every backbone of strictly fewer GFLOPs (paper-notes §3.4).
Rows added by hand to a duos CSV (pairs this rule would not produce) are kept.

    python configs/make_duos.py [--backbone_csv configs/backbones.csv] [--soups --output_dir my_configs]
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from utils.cli.parsing import ArgumentParser, run_main
from utils.files import safe_io, tables
from utils.files.tables import DUO_COLUMNS, duos_from_backbones

HERE = Path(__file__).resolve().parent
PAPER_LARGE = ["ConvNeXt_Base", "Swin_V2_B", "tf_efficientnetv2_l.in21k_ft_in1k",
               "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k"]
RN50_LARGE = ["ResNet50"]


def write_keeping_hand_rows(path: Path, generated: pd.DataFrame) -> int:
    if path.exists():
        existing = pd.read_csv(path)
        key = existing["model_large"] + "|" + existing["model_small"]
        extra = existing[~key.isin(generated["model_large"] + "|" + generated["model_small"])]
        generated = pd.concat([generated, extra.reindex(columns=DUO_COLUMNS)], ignore_index=True)
    safe_io.write_csv(path, generated)
    return len(generated)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone_csv", default=str(HERE / "backbones.csv"), help="the backbones and their GFLOPS")
    parser.add_argument("--output_dir", default=str(HERE), help="where duos.csv and duos_rn50.csv go")
    parser.add_argument("--soups", action="store_true",
                        help="also pair each large model's greedy soup (<large>_greedy, paper Fig. 7) with the same "
                             "sidekicks")
    return parser


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    backbones = tables.read_backbones(args.backbone_csv)
    for name, large in (("duos.csv", PAPER_LARGE), ("duos_rn50.csv", RN50_LARGE)):
        path = Path(args.output_dir) / name
        count = write_keeping_hand_rows(path, duos_from_backbones(backbones, large, soups=args.soups))
        print(f"wrote {count} duos to {path}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

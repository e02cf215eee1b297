"""Regenerate configs/duos.csv and configs/duos_rn50.csv from configs/backbones.csv.

A duo pairs a large model with every backbone of strictly fewer GFLOPs (docs/files.md, "Adding a pair").
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
from utils.paths import resolve_config_path

HERE = Path(__file__).resolve().parent
PAPER_LARGE = ["ConvNeXt_Base", "Swin_V2_B", "tf_efficientnetv2_l.in21k_ft_in1k",
               "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k"]
RN50_LARGE = ["ResNet50"]


def with_hand_rows(path: Path, generated: pd.DataFrame) -> pd.DataFrame:
    """`generated`, followed by the rows of the existing duos CSV at `path` that the rule does not produce (pairs
    added by hand, names kept as written), read and checked as every stage reads a duos CSV."""
    if not path.exists():
        return generated
    existing = tables.read_duos(path)
    made = {(a.casefold(), b.casefold()) for a, b in zip(generated["model_large"], generated["model_small"])}
    extra = existing[[(a.casefold(), b.casefold()) not in made
                      for a, b in zip(existing["model_large"], existing["model_small"])]]
    return pd.concat([generated, extra.reindex(columns=DUO_COLUMNS)], ignore_index=True)


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
    outputs = safe_io.Outputs([resolve_config_path(args.backbone_csv, "--backbone_csv")])
    counts = {}
    for name, large in (("duos.csv", PAPER_LARGE), ("duos_rn50.csv", RN50_LARGE)):
        path = Path(args.output_dir) / name
        frame = with_hand_rows(path, duos_from_backbones(backbones, large, soups=args.soups))
        outputs.write_csv(path, frame, "duos CSV")
        counts[path] = len(frame)
    outputs.commit()                       # both files, or neither
    for path, count in counts.items():
        print(f"wrote {count} duos to {path}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

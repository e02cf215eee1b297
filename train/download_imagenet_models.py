"""Stage every backbone's pretrained weights into the local caches (run on a machine with internet),
or check offline that they are all there (`--check`, e.g. on a compute node).

    python train/download_imagenet_models.py --backbone_csv configs/backbones.csv
    python train/download_imagenet_models.py --backbone_csv configs/backbones.csv --check
    python train/download_imagenet_models.py --save_checkpoints ./checkpoints/imagenet   # ImageNet-head checkpoints
    python train/download_imagenet_models.py --backbone_csv configs/imagenet_rn50_ensemble.csv \
        --save_checkpoints ./checkpoints/imagenet_rn50          # the ten ResNet-50s of the deep ensembles

torchvision weights go to $TORCH_HOME/hub/checkpoints, timm weights to the Hugging Face cache
($HF_HOME/hub); point both variables at a shared folder to serve a cluster.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.cli.parsing import plain_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone_csv", help="models to stage (model_name, source, tv_weights columns; default: "
                        "the repository's configs/backbones.csv)")
    parser.add_argument("--models", nargs="+", type=plain_name, metavar="NAME",
                        help="only these rows of the CSV (a torchvision or timm "
                        "name that is not in it is staged as well, e.g. resnet50.a1_in1k)")
    parser.add_argument("--check", action="store_true", help="offline: verify every model's weights are staged and load")
    parser.add_argument("--save_checkpoints", metavar="DIR", help="also save ImageNet-head checkpoints <DIR>/<model>.pth "
                        "(the ImageNet experiments predict these)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.check:
        os.environ["HF_HUB_OFFLINE"] = "0"      # must precede the first import of huggingface_hub / timm
    import pandas as pd

    from load_models import model_loader
    from utils.cli.parsing import UserError, run_main
    from utils.files import tables
    from utils.files.model_names import check_plain_name

    def body(_argv) -> int:
        backbones = tables.read_backbones(args.backbone_csv)
        rows = backbones
        if args.models:                           # names in any case; a name outside the CSV is staged by its
            known = {name.casefold(): name for name in backbones["model_name"].astype(str)}   # torchvision/timm name
            extra = [check_plain_name(m, "--models") for m in args.models if m.casefold() not in known]
            wanted = {m.casefold() for m in args.models}
            rows = backbones[backbones["model_name"].astype(str).str.casefold().isin(wanted)]
            if extra:
                rows = pd.concat([rows, pd.DataFrame({"model_name": extra, "source": [model_loader.guess_source(m)
                                                                                      for m in extra]})], ignore_index=True)
        failures = []
        for row in rows.itertuples(index=False):
            name, source = str(row.model_name), str(row.source)
            tv_weights = None if str(getattr(row, "tv_weights", "nan")) in ("nan", "") else str(row.tv_weights)
            try:
                model = model_loader.get_model_with_head(name, source=source, tv_weights=tv_weights,
                                                         keep_imagenet_head=True, weights="default",
                                                         allow_download=not args.check)
            except UserError as exc:
                failures.append(name)
                print(f"MISSING {name}: {exc}")
                continue
            if args.save_checkpoints:
                model_loader.save_checkpoint(os.path.join(args.save_checkpoints, f"{name}.pth"), model, model_name=name,
                                             source=source, tv_weights=tv_weights, num_classes=1000, dataset="imagenet")
            print(f"OK      {name} ({source})")
        if failures:
            raise UserError(f"{len(failures)} of {len(rows)} model(s) not staged: {', '.join(failures)}")
        print(f"all {len(rows)} model(s) {'present' if args.check else 'staged'}")
        return 0

    return run_main(body, argv)


if __name__ == "__main__":
    sys.exit(main())

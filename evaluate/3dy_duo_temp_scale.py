"""Dynamic duos (an EXTENSION, not in the paper; the official code's 3dy script): per-sample duo
temperatures from the members' penultimate features (load_models/dynamic_duo.py), fitted on val,
evaluated on test and ood_test with the standard metrics.

    python evaluate/3dy_duo_temp_scale.py --large_model_pred ./predictions/convnext_base.npz \
        --small_model_pred ./predictions/efficientnet_b0.npz --output_dir ./results
    python evaluate/3dy_duo_temp_scale.py --config configs/duos.csv --predictions_dir ./predictions

Needs stage 1's --features files. Writes evaluation_dynamic_duo_<dataset>[_ood].csv (mode
"dynamic_<concat|separate>") and the fitted temperature models to <calibrated_dir>/dynamic_duo/.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch

from load_models import dynamic_duo
from utils.cli import flags
from utils.cli.parsing import ArgumentParser, UserError, add_backbone_csv, non_negative_int, positive_int, run_main
from utils.files import safe_io, tables
from utils.files.prediction_io import aligned, check_output_folder, read_features, resolve_prediction_path
from utils.files.results import EVAL_SPLITS, queue_results
from utils.stages.calibration import checked_duo_weights
from utils.stages.inputs import PredictionCache, find_duo_files, resolve_dataset
from utils.stages.scoring import single_model_metrics


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], parents=[
        flags.evaluation_folders(calibrated_help="where the fitted models are saved (default ./calibrated)"),
        flags.result_dataset()])
    parser.add_argument("--large_model_pred", metavar="FILE", help="prediction file of the large model")
    parser.add_argument("--small_model_pred", metavar="FILE", help="prediction file of the sidekick")
    add_backbone_csv(parser, "fills the gflops a duos CSV lacks (a given gflops_balance must agree with them)")
    parser.add_argument("--config", "--duo_csv_path", metavar="CSV", help="every (model_large, model_small) row")
    parser.add_argument("--mode", choices=dynamic_duo.MODES, default="concat", help="which features feed each temperature")
    parser.add_argument("--optimizer", choices=dynamic_duo.OPTIMIZERS, default="lbfgs",
                        help="full-batch L-BFGS (strong Wolfe) or mini-batch Adam")
    parser.add_argument("--num_epochs", type=positive_int, default=32, help="epochs of the Adam optimizer (the official flag)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    return parser


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.large_model_pred and args.small_model_pred) == bool(args.config):
        raise UserError("give --large_model_pred and --small_model_pred, or --config DUOS_CSV")
    if args.config:
        duos = tables.read_duos(args.config, tables.read_backbones(args.backbone_csv))
        found, _ = find_duo_files(duos, args.predictions_dir, strict=False)
        pairs = [(large, small, duo) for duo, large, small in found]
        if not pairs:
            raise UserError(f"--config: none of the duos in {args.config} has prediction files in {args.predictions_dir}")
    else:
        pairs = [(resolve_prediction_path(args.large_model_pred), resolve_prediction_path(args.small_model_pred), None)]
    for flag in ("--output_dir", "--calibrated_dir"):
        check_output_folder(getattr(args, flag[2:]), {Path(p).parent for pair in pairs for p in pair[:2]}, flag)
    outputs = safe_io.Outputs([p for pair in pairs for p in pair[:2]] + ([args.config] if args.config else []))
    cache, rows, names, fitted = PredictionCache(), [], [], {}
    torch.manual_seed(args.seed)
    for large_path, small_path, duo in pairs:
        large, small = cache.get(large_path), cache.get(small_path)
        names += [large.dataset, small.dataset]
        paired = {s: aligned(large, small, s, "like the large model") for s in large.splits}
        # both members' features, row-aligned to the large model's sample ids
        feats_large, feats_small = read_features(large_path, large), read_features(small_path, large)
        val = large.split("val", "to fit the dynamic temperatures")
        model = dynamic_duo.DynamicTemperatures(feats_large["val"].shape[1], feats_small["val"].shape[1], args.mode)
        history = dynamic_duo.fit(model, val.logits, paired["val"].logits, feats_large["val"], feats_small["val"],
                                  val.labels, optimizer=args.optimizer, epochs=args.num_epochs, seed=args.seed)
        static = checked_duo_weights(val.logits, paired["val"].logits, val.labels, f"{large.source} + {small.source}",
                                     f"{large.model} + {small.model}")
        print(f"{large.model} + {small.model}: val NLL constant T (init) {history[0]:.4f} -> dynamic {history[-1]:.4f} "
              f"(static duo optimum {static.nll:.4f})")
        buffer = io.BytesIO()
        torch.save({"state_dict": model.state_dict(), "mode": args.mode, "optimizer": args.optimizer,
                    "val_nll": history[-1]}, buffer)
        # one file per duo, mode and optimizer (concat/separate, L-BFGS/Adam runs keep theirs), written at the end
        fitted[f"{large.model}+{small.model}_{args.mode}_{args.optimizer}.pt"] = buffer.getvalue()
        descriptive = {"model_large": large.model, "model_small": small.model,
                       "gflops_large": getattr(duo, "gflops_large", np.nan), "gflops_small": getattr(duo, "gflops_small", np.nan),
                       "gflops_balance": getattr(duo, "gflops_balance", np.nan), "digest_large": large.digest,
                       "digest_small": small.digest}
        for split in EVAL_SPLITS:
            if split not in large.splits:
                continue
            with torch.no_grad():
                z = model(*(torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in
                            (large.splits[split].logits, paired[split].logits, feats_large[split], feats_small[split])))
            for uncertainty, metrics in single_model_metrics(z.numpy(), large.splits[split].labels).items():
                rows.append({**metrics, **descriptive, "mode": f"dynamic_{args.mode}_{args.optimizer}",
                             "uncertainty_type": uncertainty, "split": split})
    if not rows:
        raise UserError("nothing evaluated: no duo has prediction files")
    written = queue_results(outputs, args.output_dir, "dynamic_duo",
                            resolve_dataset(args.dataset, names, args.predictions_dir), rows)
    for name, data in fitted.items():
        outputs.write_bytes(Path(args.calibrated_dir) / "dynamic_duo" / name, data, "fitted dynamic duo")
    outputs.commit()
    print(f"wrote {len(rows)} row(s) to {', '.join(map(str, written))} and {len(fitted)} fitted model(s) to "
          f"{Path(args.calibrated_dir) / 'dynamic_duo'}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

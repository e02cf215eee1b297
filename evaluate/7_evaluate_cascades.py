"""Stage 7: cascades of each duo's members, a compute-matched rival of the duo, from the same files.

f_large runs on every input and the sidekick only where f_large's uncertainty exceeds a threshold tau
(`large_first`), or the reverse (`small_first`); where both ran the answer is the duo's (asymmetric mode).
Each threshold gives one operating point: every metric, the fraction deferred and the expected GFLOPs
(gflops_first + fraction * gflops_second). Two kinds of threshold (`selection` column):
- `sweep`: --steps + 1 thresholds deferring 0, 1/steps, ..., all of the test inputs (a curve from the
  first model alone, tau = +inf, to the duo, tau = -inf);
- `val_budget`: for each --budgets B, tau fitted on the val split so that the expected cost is about
  B x gflops_large, then applied to test and ood_test (an honest held-out choice of operating point).
Pure post-processing of stage-1 prediction files and stage-2/3 temperatures. Writes
`evaluation_cascade_<dataset>[_ood].csv` under --output_dir.

    python evaluate/7_evaluate_cascades.py --config configs/duos.csv --predictions_dir ./predictions \
        --calibrated_dir ./calibrated --output_dir ./results [--budgets 1.1 1.2]
"""
from __future__ import annotations

import math
import sys

from utils.cli import flags
from utils.cli.parsing import (
    MOST_CASCADE_STEPS,
    ArgumentParser,
    UserError,
    add_backbone_csv,
    cascade_steps,
    positive_float,
    run_main,
)
from utils.files import safe_io, tables
from utils.files.prediction_io import check_output_folder
from utils.files.results import queue_results
from utils.maths import cascades
from utils.maths.duo_modes import member_scales
from utils.stages.calibration import Calibration
from utils.stages.cascade_points import CascadePlan, budget_thresholds, cascade_rows, split_terms
from utils.stages.inputs import PredictionCache, find_duo_files, pair_costs, paired_splits, resolve_dataset
from utils.stages.scoring import SINGLE_UNCERTAINTY_TYPES, check_scaled_logits, largest_magnitude


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            parents=[flags.evaluation_folders(), flags.result_dataset()])
    parser.add_argument("--config", "--duo_csv_path", default="configs/duos.csv", metavar="CSV",
                        help="duos CSV with model_large,model_small[,gflops_*] (default configs/duos.csv; a relative "
                             "path not found in the working folder is read from the repository)")
    add_backbone_csv(parser, "fills gflops columns the duos CSV lacks")
    parser.add_argument("--orders", nargs="+", default=list(cascades.ORDERS), choices=cascades.ORDERS,
                        help="which model runs first (default: both)")
    parser.add_argument("--uncertainty_types", nargs="+", default=["softmax_response"],
                        choices=SINGLE_UNCERTAINTY_TYPES,
                        help="what decides the deferral and ranks the answers (default softmax_response)")
    parser.add_argument("--steps", type=cascade_steps, default=20,
                        help=f"sweep points: deferring 0, 1/steps, ..., all test inputs (default 20, at most "
                             f"{MOST_CASCADE_STEPS})")
    parser.add_argument("--budgets", nargs="+", type=positive_float, metavar="B",
                        help="expected costs as multiples of f_large's GFLOPs (e.g. 1.1); tau fitted on val for each "
                             "(default: none)")
    parser.add_argument("--strict", action="store_true", help="fail on the first duo with a missing prediction file")
    parser.add_argument("--fit_missing", action="store_true",
                        help="fit missing temperatures/weights on the val split and record them (else: error)")
    return parser


def check_inputs(jobs, calibration: Calibration) -> None:
    """Fail before any work on a duo without its temperatures (unless --fit_missing)."""
    for duo, _, _ in jobs:
        pair = (duo.model_large, duo.model_small)
        calibration.require(pair, [pair], what=" + ".join(pair))


def pair_gflops(duo, large, small, costs, backbones, args) -> dict:
    """{"large", "small"}: the members' GFLOPs (scoring.pair_costs: duos CSV, backbone CSV, stage 1's measurement); a
    cascade's cost needs both."""
    found = pair_costs(duo, large, small, costs, backbones)
    if not (math.isfinite(found["gflops_large"]) and math.isfinite(found["gflops_small"])):
        raise UserError(f"{args.config}: {large.model} + {small.model} has no GFLOPs: a cascade's cost needs them; fill "
                        f"gflops_large and gflops_small, give --backbone_csv with both models (model_name,GFLOPS), or "
                        f"predict them with stage 1, which records their cost")
    return {"large": float(found["gflops_large"]), "small": float(found["gflops_small"])}


def main_impl(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.budgets = list(dict.fromkeys(args.budgets or []))         # 1.1 twice is one budget
    backbones = tables.read_backbones(args.backbone_csv)
    duos = tables.read_duos(args.config, backbones)
    costs = tables.duo_costs(duos)
    calibration = Calibration(args.calibrated_dir, args.fit_missing, args.predictions_dir, args.config)
    jobs, _ = find_duo_files(duos, args.predictions_dir, args.strict)
    for flag in ("--output_dir", "--calibrated_dir"):
        check_output_folder(getattr(args, flag[2:]), [args.predictions_dir], flag)
    check_inputs(jobs, calibration)
    outputs = safe_io.Outputs([p for _, large, small in jobs for p in (large, small)])
    calibration.expect(outputs)

    cache = PredictionCache()
    plan = CascadePlan(args.orders, args.uncertainty_types, args.steps, args.budgets)
    rows, dataset_names = [], []
    for duo, large_path, small_path in jobs:
        large, small = cache.get(large_path), cache.get(small_path)
        dataset_names += [large.dataset, small.dataset]
        temps = calibration.pair(large, small, (large, small))
        gflops = pair_gflops(duo, large, small, costs, backbones, args)
        taus = budget_thresholds(large, small, temps, gflops, plan)
        scale_large, scale_small = member_scales("asymmetric", temps)
        descriptive = {"model_large": large.model, "model_small": small.model, "gflops_large": gflops["large"],
                       "gflops_small": gflops["small"], "digest_large": large.digest, "digest_small": small.digest,
                       "scale_large": scale_large, "scale_small": scale_small,
                       "temperature_large": temps.single_large, "temperature_small": temps.single_small}
        for split, data_large, data_small in paired_splits(large, small):
            magnitudes = (largest_magnitude(data_large.logits), largest_magnitude(data_small.logits))
            for weights_used in ([1 / temps.single_large, 0.0], [0.0, 1 / temps.single_small],
                                 [scale_large / 2, scale_small / 2]):
                check_scaled_logits(magnitudes, weights_used, f"{args.calibrated_dir}: {large.model} + {small.model}")
            terms = split_terms(data_large.logits, data_small.logits, data_large.labels, temps, args.uncertainty_types)
            rows += [{**row, **descriptive, "split": split} for row in cascade_rows(terms, taus, gflops, plan)]
        print(f"{large.model} + {small.model}: {len(args.orders)} cascade order(s) evaluated")

    if not rows:
        raise UserError(f"nothing evaluated: no duo of {args.config} has prediction files in {args.predictions_dir}")
    dataset = resolve_dataset(args.dataset, dataset_names, args.predictions_dir)
    calibration.queue(outputs)
    # a rerun replaces each duo's curves and budgets whole: points of an earlier run (other --steps, --budgets,
    # orders or temperatures) never mix with this one's
    written = queue_results(outputs, args.output_dir, "cascade", dataset, rows)
    outputs.commit()
    print(f"wrote {len(rows)} cascade point(s) for {len(jobs)} duo(s) to {', '.join(map(str, written))}")
    return 0


def main(argv=None) -> int:
    return run_main(main_impl, argv)


if __name__ == "__main__":
    sys.exit(main())

"""The report's risk-coverage and reliability curves: drawn from the prediction files the result rows were computed
from, for each large model temperature-scaled and its best asymmetric duo."""
from __future__ import annotations

from utils.errors import UserError
from utils.files import results as results_schema
from utils.files.prediction_io import aligned, find_prediction_file, read_predictions
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import DuoTemperatures, duo_outputs
from utils.report import figures
from utils.report.sections import SPLITS, Report
from utils.stages.calibration import Calibration


def curves_for(predictions_dir, calibration: Calibration, large: str, small: str | None, found):
    """Risk-coverage and reliability data of the TS large model and its asymmetric duo, from the prediction files
    the result rows were computed from (`found`: their facts)."""
    large_path = find_prediction_file(predictions_dir, large)
    if large_path is None:
        return None
    large_set = read_predictions(large_path)
    small_path = find_prediction_file(predictions_dir, small) if small else None
    small_set = read_predictions(small_path) if small_path else None
    for pset in (large_set, small_set):
        if pset is not None:
            results_schema.check_predictions_against(found, pset, "the report's curves")
    curves = {}
    for split in SPLITS:
        if split not in large_set.splits:
            continue
        data = large_set.splits[split]
        entries = {}
        if large not in calibration.singles:
            raise UserError(f"{calibration.single_path}: no temperature for {large} (its curves are temperature-scaled); "
                            f"run evaluate/2_temp_scale.py")
        scaled = um.WeightedLogits([data.logits], [1.0 / calibration.temperature(large_set)])
        stats = um.softmax_stats(scaled, with_entropy=False)
        correct = stats.argmax == data.labels
        entries[f"{large} (TS)"] = (*um.risk_coverage_curve(correct, um.softmax_response(scaled, stats)),
                                    um.reliability_bins(stats.confidence, correct))
        if small_set is not None and (large, small) in calibration.duos and split in small_set.splits:
            other = aligned(large_set, small_set, split)
            out = duo_outputs(data.logits, other.logits, DuoTemperatures(1, 1, *calibration.weights(large_set, small_set)),
                              modes=["asymmetric"], uncertainty_types=["softmax_response"])["asymmetric"]
            correct_duo = out.predictions == data.labels
            entries[f"duo + {small}"] = (*um.risk_coverage_curve(correct_duo, out.uncertainty["softmax_response"]),
                                         um.reliability_bins(out.stats.confidence, correct_duo))
        curves[split] = entries
    return curves


def add_curves(report: Report, args, duos, large_models, calibration: Calibration, found) -> None:
    if not args.predictions_dir:
        report.skip("Risk-coverage and reliability curves", "no --predictions_dir")
        return
    for large in large_models:
        test_duos = duos[(duos["model_large"] == large) & (duos["mode"] == "asymmetric")
                         & (duos["uncertainty_type"] == "softmax_response") & (duos["split"] == "test")]
        best = test_duos.sort_values("NLL")["model_small"].iloc[0] if len(test_duos) else None
        curves = curves_for(args.predictions_dir, calibration, large, best, found)
        if not curves:
            report.skip(f"Curves ({large})", f"no prediction file of {large} in {args.predictions_dir}")
            continue
        drawn = best is not None and any(f"duo + {best}" in entries for entries in curves.values())
        why = ("" if drawn or best is None else f" Its best duo (+ {best}, by test NLL) is not drawn: its prediction file "
               f"or stage 3's weights for it are missing.")
        report.figure(f"Risk-coverage and reliability ({large})", f"Selective risk against coverage, and reliability "
                      f"(15 equal-width bins), of the temperature-scaled {large}"
                      + (f" and its best asymmetric duo (+ {best}, by test NLL)." if drawn else ".") + why,
                      f"curves_{large}", lambda path, curves=curves, large=large, best=best, drawn=drawn:
                      figures.curves_figure(curves, path, f"{large} (TS)" + (f" and its best duo (+ {best})" if drawn else "")))

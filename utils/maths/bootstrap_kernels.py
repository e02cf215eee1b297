"""The paired bootstrap's compiled passes (numba), every resample at once, spread over the cores.

The ranking pass (`selective_sums`) gives the selective metrics' sums (AURC, AUGRC, CP_AUROC's loss, SAC@t) of every
resample from one walk over the samples in uncertainty order. The numbers are `bootstrap._weighted_selective`'s
(tests/test_bootstrap.py compares the two): the counting terms are integers, so they are exact, and AURC's sum agrees
to rounding (~1e-13).

How the walk is laid out, and why:
- A thread walks a group of resamples together (`lanes` of them): at each sample it reads the sample's row of counts
  (the (samples, resamples) layout) and updates every resample of the group in a loop the compiler vectorises. A
  branch on the sample (right or wrong, a tie run starting) is the same for the whole group, so it is cheap; one
  resample walked alone would branch on every sample, or do every sum for every sample.
- A right sample only adds its count to the running total: AURC's sum telescopes. With H the harmonic numbers,
  sum_k errors_k / k = n_errors (H(N) + 1) - sum over wrong blocks of (a H(a) - b H(b)), a block of wrong copies
  taking the ranks b + 1 .. a; so a wrong block costs two lookups in the table `ramp` (k H(k)) and right ones none.
  AUGRC's sum of errors before each copy is n_errors N - sum over wrong blocks of c a (integers). CP_AUROC's loss
  without ties is that sum less the pairs of errors, with ties it is counted where each run of equal uncertainty starts.
- SAC's levels are tracked as "how many levels the prefix allows", which changes rarely: a wrong block costs two
  comparisons (did the prefix rise into a higher range before it, does it fall below its range after it), and only a
  crossing (`_cross`) records prefixes and looks inside the block for points that still allow the levels lost. A
  prefix only grows, so what a rise would record is always outdone by a later record.
- The rows are read in an order no hardware prefetcher can guess: the walk asks for the row a few samples ahead."""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

MOST_LANES = 1024            # resamples a thread walks together: their running sums (~300 bytes each) stay in cache
PREFETCH_AHEAD = 8           # samples: enough to hide a row's trip from memory (measured: 4 to 32 alike)


@intrinsic
def _prefetch(typingctx, array, index):
    """A hint that array[index] (1-D, C-ordered) is needed soon: no effect on any result."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.gep(data, [args[1]])
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]),
                                              "llvm.prefetch.p0")
        builder.call(hint, [pointer, i32(0), i32(3), i32(1)])      # read, keep in all cache levels, data
        return context.get_dummy_value()
    return types.none(array, types.intp), codegen


@njit(cache=True, inline="always")
def _prefetch_row(flat, start, width):
    """Ask for flat[start:start + width] (a group's slice of a row of counts), one cache line at a time."""
    for offset in range(0, width, max(1, 64 // flat.itemsize)):
        _prefetch(flat, start + offset)


def lanes_for(resamples: int) -> int:
    """Resamples per group: every numba thread gets a group, none more than MOST_LANES."""
    groups = max(numba.get_num_threads(), -(-resamples // MOST_LANES))
    return max(1, -(-resamples // groups))


@njit(parallel=True, cache=True)
def selective_sums(counts_by_sample, order, wrong, run_start, ramp, levels, lanes):
    """counts_by_sample (N, B) integer draws, each resample's summing to N; order (N,) samples by uncertainty; wrong
    (N,) bool and run_start (N,) bool (a run of equal uncertainty starts here), both in `order`; ramp (N + 1,) k H(k);
    levels ascending whole percentages; lanes: resamples walked together (`lanes_for`). Returns, per resample:
    n_errors, the sum over wrong blocks of ramp[a] - ramp[b] (AURC's), AUGRC's two sums, CP_AUROC's loss term S
    (wins = n_correct n_errors - S) and SAC's best k per level."""
    n, resamples = counts_by_sample.shape
    n_levels = levels.shape[0]
    ties = not np.all(run_start)
    positions = order.astype(np.int64)
    flat = counts_by_sample.reshape(-1)
    bounds = np.empty(n_levels + 2, np.int64)     # the levels between two sentinels: "no level" and "every level"
    bounds[0], bounds[1:n_levels + 1], bounds[n_levels + 1] = -1, levels, 101
    out = np.zeros((5, resamples))
    best = np.zeros((n_levels, resamples))
    for group in prange((resamples + lanes - 1) // lanes):
        first = group * lanes
        width = min(lanes, resamples - first)
        total, errors = np.zeros(width, np.int64), np.zeros(width, np.int64)
        wrong_after = np.zeros(width, np.int64)         # sum over wrong blocks of c a
        squares, lost2 = np.zeros(width, np.int64), np.zeros(width, np.int64)
        run_right, run_errors = np.zeros(width, np.int64), np.zeros(width, np.int64)
        ramp_sum = np.zeros(width)
        # SAC: the prefix allows the `allowed` lowest levels while down * total <= 100 right < up * total
        allowed = np.zeros(width, np.int64)
        down, up = np.full(width, bounds[0]), np.full(width, bounds[1])
        crossed = np.zeros(width, np.uint8)
        plain_best = np.zeros((width, n_levels + 1), np.int64)
        inner_best = np.zeros((width, n_levels), np.int64)
        for j in range(n):
            _prefetch_row(flat, positions[min(j + PREFETCH_AHEAD, n - 1)] * resamples + first, width)
            row = counts_by_sample[positions[j], first:first + width]
            if ties and run_start[j]:      # close the run before: its right answers lose to the errors before it
                for q in range(width):     # and to half of the run's own
                    right = total[q] - errors[q]
                    lost2[q] += (right - run_right[q]) * (errors[q] + run_errors[q])
                    run_right[q], run_errors[q] = right, errors[q]
            if not wrong[j]:
                _add(total, row)
                continue
            any_crossed = np.uint8(0)
            for q in range(width):
                b, c = total[q], np.int64(row[q])
                a = b + c
                right100 = (b - errors[q]) * 100
                crossed[q] = np.uint8((right100 >= up[q] * b) | (right100 < down[q] * a))
                any_crossed |= crossed[q]
                wrong_after[q] += c * a
                squares[q] += c * c
                errors[q] += c
                total[q] = a
            for q in range(width):         # apart from the loop above, which vectorises: table lookups do not
                a = total[q]
                ramp_sum[q] += ramp[a] - ramp[a - np.int64(row[q])]
            if any_crossed:
                for q in range(width):
                    if crossed[q]:
                        a, c = total[q], np.int64(row[q])
                        b, errors_before = a - c, errors[q] - c
                        level = _cross(allowed[q], b, errors_before, b, errors_before, bounds, plain_best[q],
                                       inner_best[q])                          # a rise before the block
                        level = _cross(level, b, errors_before, a, errors[q], bounds, plain_best[q], inner_best[q])
                        allowed[q], down[q], up[q] = level, bounds[level], bounds[level + 1]
        for q in range(width):
            r = first + q
            last, wrong_total = total[q], errors[q]
            level = _cross(allowed[q], last, wrong_total, last, wrong_total, bounds, plain_best[q], inner_best[q])
            plain_best[q, level] = last
            before_each = wrong_total * last - wrong_after[q]        # sum over copies of the errors ranked before
            if ties:
                right = last - wrong_total
                lost2[q] += (right - run_right[q]) * (wrong_total + run_errors[q])
            else:   # each right copy loses to the errors before it: all pairs less the pairs of errors
                lost2[q] = 2 * before_each - wrong_total * wrong_total + squares[q]
            out[0, r], out[1, r], out[2, r], out[3, r], out[4, r] = (wrong_total, ramp_sum[q], before_each, squares[q],
                                                                     lost2[q] / 2.0)
            running = 0                    # a prefix that allows level l allows every lower one
            for level in range(n_levels - 1, -1, -1):
                running = max(running, plain_best[q, level + 1])
                best[level, r] = max(running, inner_best[q, level])
    return out[0], out[1], out[2], out[3], out[4], best


@njit(cache=True, inline="never")
def _cross(allowed, total_before, errors_before, total, errors, bounds, plain_best, inner_best):
    """The prefix left its range of allowed levels: record the range's largest prefix, find the new range, and
    for a fall (a block of wrong copies) the points inside the block that still allow the levels lost."""
    n_levels = bounds.shape[0] - 2
    plain_best[allowed] = total_before
    before = allowed
    right100 = (total - errors) * 100
    while allowed < n_levels and right100 >= bounds[allowed + 1] * total:
        allowed += 1
    while allowed > 0 and right100 < bounds[allowed] * total:
        allowed -= 1
    if allowed < before and total - total_before >= 2:
        # inside the block the right answers stay, so point k allows t while 100 right >= t k; the levels still
        # allowed at the block's end have a larger prefix there
        slack, first = 100 * (total_before - errors_before), total_before + 1
        for level in range(allowed, before):
            t = bounds[level + 1]
            if slack < t * first:
                break
            inner = min(total - 1, np.int64(np.floor(slack / t)))
            if inner > inner_best[level]:
                inner_best[level] = inner
    return allowed


RESAMPLES_PER_PASS = 128          # additive_sums: a group's class counts stay in cache (measured fastest)


@njit(parallel=True, cache=True)
def additive_sums(counts_by_sample, labels, predictions, correct, bins, gaps, nll, brier, num_classes, n_bins):
    """The count-weighted sums of the additive metrics, for M predictors scored on the same N samples, every resample
    at once. counts_by_sample (N, B) integer draws; labels (N,); predictions, correct (bool), bins (the ECE bin,
    n_bins for outside every bin), gaps (confidence - calibration_correct), nll and brier (N, M). Returns per member
    and resample: right answers (M, B), NLL's and Brier's sums (M, B), F1 and F1 over the classes present (M, B),
    each ECE bin's sum of gaps (M, n_bins, B); and each resample's size (B,).

    A group of resamples is one pass over the samples that adds each sample's row of counts to its classes' rows and
    to the members' sums: the additions run along the resamples, in vector registers. F1 then comes from the group's
    class counts (macro average over the classes in class order, as `bootstrap._macro_f1` adds them), so no
    (classes x resamples) array leaves the pass. The sums are integers where the terms are (exact); NLL's and Brier's are
    compensated, and the gaps' are added in sample order (as the sparse products of `weighted_metrics`)."""
    n, resamples = counts_by_sample.shape
    members = predictions.shape[1]
    right = np.zeros((members, resamples), np.int64)
    nll_sums, brier_sums = np.zeros((members, resamples)), np.zeros((members, resamples))
    f1, f1_present = np.zeros((members, resamples)), np.zeros((members, resamples))
    bin_gaps = np.zeros((members, n_bins, resamples))
    sizes = np.zeros(resamples, np.int64)
    for group in prange((resamples + RESAMPLES_PER_PASS - 1) // RESAMPLES_PER_PASS):
        first = group * RESAMPLES_PER_PASS
        width = min(RESAMPLES_PER_PASS, resamples - first)
        true_g = np.zeros((num_classes, width), np.int32)        # sums of at most n draws
        hits_g = np.zeros((members, num_classes, width), np.int32)
        predicted_g = np.zeros((members, num_classes, width), np.int32)
        gaps_g = np.zeros((members, n_bins + 1, width))
        right_g = np.zeros((members, width), np.int64)
        nll_g, brier_g = np.zeros((members, width)), np.zeros((members, width))
        nll_lost, brier_lost = np.zeros((members, width)), np.zeros((members, width))     # Kahan's compensations
        size_g = np.zeros(width, np.int64)
        for i in range(n):
            drawn = counts_by_sample[i, first:first + width]
            _add(true_g[labels[i]], drawn)
            _add(size_g, drawn)
            for m in range(members):
                k = predictions[i, m]
                _add(predicted_g[m, k], drawn)
                if correct[i, m]:
                    _add(hits_g[m, k], drawn)
                    _add(right_g[m], drawn)
                _add_scaled(gaps_g[m, bins[i, m]], drawn, gaps[i, m])
                _add_compensated(nll_g[m], nll_lost[m], drawn, nll[i, m])
                _add_compensated(brier_g[m], brier_lost[m], drawn, brier[i, m])
        for m in range(members):
            for q in range(width):
                everywhere, present, used, seen = 0.0, 0.0, 0, 0
                for k in range(num_classes):
                    true_k = np.float64(true_g[k, q])
                    denom = true_k + np.float64(predicted_g[m, k, q])
                    score = 2.0 * np.float64(hits_g[m, k, q]) / denom if denom > 0 else 0.0
                    everywhere += score * (denom > 0)
                    present += score * (true_k > 0)
                    used += denom > 0
                    seen += true_k > 0
                f1[m, first + q], f1_present[m, first + q] = everywhere / used, present / seen
        right[:, first:first + width] = right_g
        nll_sums[:, first:first + width] = nll_g
        brier_sums[:, first:first + width] = brier_g
        bin_gaps[:, :, first:first + width] = gaps_g[:, :n_bins]
        sizes[first:first + width] = size_g
    return right, nll_sums, brier_sums, f1, f1_present, bin_gaps, sizes


@njit(cache=True, inline="always")
def _add_compensated(into, lost, drawn, value):
    """Kahan's summation: N terms of one sign added one by one would lose ~sqrt(N) roundings."""
    for q in range(drawn.shape[0]):
        term = drawn[q] * value - lost[q]
        total = into[q] + term
        lost[q] = (total - into[q]) - term
        into[q] = total


@njit(cache=True, inline="always")
def _add_scaled(into, drawn, value):
    for q in range(drawn.shape[0]):
        into[q] += drawn[q] * value


@njit(cache=True, inline="always")
def _add(into, drawn):
    for q in range(drawn.shape[0]):
        into[q] += drawn[q]


@njit(parallel=True, cache=True)
def count_draws(draws, counts):
    """counts[r, i] += how often sample i is among draws[r] (a row of sample indices), rows spread over the cores."""
    for r in prange(draws.shape[0]):
        row = counts[r]
        for i in draws[r]:
            row[i] += 1


@njit(parallel=True, cache=True)
def detection_sums(counts_in, counts_out, order, shifted, group_end, full_group, tpr_level, lanes):
    """Shift detection (utils/maths/shift_detection.py) on every resample: counts_in (n_in, B) and counts_out
    (n_out, B) integer draws of the test split and of the shifted one (same dtype); order (n_in + n_out,) both
    splits' samples by descending score, shifted ones numbered after the test split's; shifted (n,) bool, group_end
    (n,) bool (the last of a run of tied scores) and full_group (n,) bool (a group's end where the group holds a
    shifted sample, or the first group), in `order`; lanes: resamples walked together (`lanes_for`). Returns AUROC,
    AUPR and FPR95 per resample, `weighted_detection`'s numbers: AUROC's sum is exact, AUPR's compensated.

    Laid out as the ranking pass: a group of resamples walks together over the (samples, resamples) counts. The
    counts are summed as float64 (whole numbers, exact below 2**53). A group of test-split samples only adds to the
    false positives: its recall gain, so its AUPR term, is 0, and it cannot be the first to reach the TPR level
    (the true positives did not change since the group before); so only `full_group`s do the division and the
    compensated sum."""
    n_in, resamples = counts_in.shape
    n = n_in + counts_out.shape[0]
    positions = order.astype(np.int64)
    flat_in, flat_out = counts_in.reshape(-1), counts_out.reshape(-1)
    auroc, aupr, fpr95 = np.empty(resamples), np.empty(resamples), np.empty(resamples)
    for group in prange((resamples + lanes - 1) // lanes):
        first = group * lanes
        width = min(lanes, resamples - first)
        negatives, positives = np.zeros(width, np.int64), np.zeros(width, np.int64)
        for i in range(n_in):
            _add(negatives, counts_in[i, first:first + width])
        for i in range(n - n_in):
            _add(positives, counts_out[i, first:first + width])
        threshold = tpr_level * positives - 1e-9 * positives      # as weighted_detection computes it
        tp, fp, tp_run, fp_run = np.zeros(width), np.zeros(width), np.zeros(width), np.zeros(width)
        doubled_wins = np.zeros(width)   # 2 x AUROC's numerator: shifted copies ranked above, tied ones counting half
        precision_sum, compensation = np.zeros(width), np.zeros(width)
        fpr = np.full(width, -1.0)
        for j in range(n):
            ahead = positions[min(j + PREFETCH_AHEAD, n - 1)]
            if ahead < n_in:
                _prefetch_row(flat_in, ahead * resamples + first, width)
            else:
                _prefetch_row(flat_out, (ahead - n_in) * resamples + first, width)
            if shifted[j]:
                _add(tp_run, counts_out[positions[j] - n_in, first:first + width])
            else:
                _add(fp_run, counts_in[positions[j], first:first + width])
            if not group_end[j]:
                continue
            if not full_group[j]:
                for q in range(width):
                    doubled_wins[q] += fp_run[q] * (2 * tp[q])
                    fp[q] += fp_run[q]
                    fp_run[q] = 0.0
                continue
            for q in range(width):
                doubled_wins[q] += fp_run[q] * (2 * tp[q] + tp_run[q])
                t, f = tp[q] + tp_run[q], fp[q] + fp_run[q]
                tp[q], fp[q] = t, f
                term = tp_run[q] * (t / max(t + f, 1.0))
                before = precision_sum[q]
                total = before + term        # Neumaier's sum: the rounding of the many terms does not add up
                compensation[q] += ((before - total) + term) if abs(before) >= abs(term) else ((term - total) + before)
                precision_sum[q] = total
                if fpr[q] < 0.0 and t >= threshold[q]:
                    fpr[q] = f / negatives[q]
                tp_run[q], fp_run[q] = 0.0, 0.0
        for q in range(width):
            auroc[first + q] = doubled_wins[q] * 0.5 / (positives[q] * negatives[q])
            aupr[first + q] = (precision_sum[q] + compensation[q]) / positives[q]
            fpr95[first + q] = fpr[q]
    return auroc, aupr, fpr95

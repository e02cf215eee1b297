"""The ranking pass of the paired bootstrap, compiled (numba): for every resample, one walk over the samples in
uncertainty order gives the selective metrics' sums (AURC, AUGRC, CP_AUROC's wins, SAC@t) at once, resamples
spread over the cores. The numbers are `bootstrap._weighted_selective`'s (tests/test_bootstrap.py compares the
two): the counting terms are kept as integers, so they are exact, and the harmonic terms are added in the same
order, so they agree to rounding.

Why the walk has no data-dependent branch on a sample: about a third of the counts are zero and a sample's
correctness looks random in uncertainty order, so a branch on either is mispredicted often; a zero count adds
zero to every sum instead. SAC's levels are tracked as "how many levels the prefix allows", which moves now and
then: a sample costs one comparison against the present range, and only a crossing (`_cross`) records prefixes
and looks inside the block for points that still allow the levels lost."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def selective_sums(counts, order, err, run_start, harmonic, levels):
    """counts (B, N) integer draws; order (N,) samples by uncertainty; err (N,) 1.0 where wrong, in `order`;
    run_start (N,) bool, a run of equal uncertainty starts here, in `order`; levels ascending whole percentages.
    Returns, per resample: n_errors, AURC's and AUGRC's sums, CP_AUROC's tie-aware loss term S
    (wins = n_correct n_errors - S) and SAC's best k per level."""
    resamples, n_levels = counts.shape[0], levels.shape[0]
    wrong = -(err > 0).astype(np.int64)           # -1 where wrong: an AND instead of a multiply (see _one_resample)
    positions = order.astype(np.uint64)           # unsigned: no negative-index handling in the inner loop
    bounds = np.empty(n_levels + 2, np.int64)     # the levels between two sentinels (see _one_resample)
    bounds[0], bounds[1:n_levels + 1], bounds[n_levels + 1] = -1, levels, 101
    out = np.zeros((6, resamples))
    best = np.zeros((n_levels, resamples))
    for r in prange(resamples):
        plain_best = np.zeros(n_levels + 1, np.int64)
        inner_best = np.zeros(n_levels, np.int64)
        n_errors, s1, s2, a1, a2, loss = _one_resample(counts[r], positions, wrong, run_start, harmonic,
                                                       bounds, plain_best, inner_best)
        out[0, r], out[1, r], out[2, r], out[3, r], out[4, r], out[5, r] = n_errors, s1, s2, a1, a2, loss
        running = 0                                # a prefix that allows level l allows every lower one
        for level in range(n_levels - 1, -1, -1):
            running = max(running, plain_best[level + 1])
            best[level, r] = max(running, inner_best[level])
    return out[0], out[1], out[2], out[3], out[4], out[5], best


@njit(cache=True, inline="never")
def _one_resample(row, positions, wrong, run_start, harmonic, bounds, plain_best, inner_best):
    """One resample's walk (sample j a block of c = row[positions[j]] equal copies). Fills plain_best[a]: the
    largest prefix (in copies, at a block's end) that allows exactly the a lowest levels; inner_best[l]: the
    largest point inside a block of wrong copies that allows level l where the block's end does not."""
    total, errors = 0, 0
    s1, s2 = 0.0, 0.0                              # AURC's sums: errors_k / k and the in-block ramp
    a1, a2 = 0, 0                                  # AUGRC's sums
    lost2 = 0                                      # 2 x CP_AUROC's loss term, an integer
    run_errors, run_right = 0, 0                   # errors and right answers before the present run
    h_before = 0.0
    # SAC: the prefix allows the `allowed` lowest levels while bounds[allowed] * total <= 100 right <
    # bounds[allowed + 1] * total (bounds[0] = -1 and a last bound of 101 stand for "no level" and "every
    # level"). One unsigned comparison per sample tests both; only a crossing (rare) does more.
    allowed = 0
    down, up = bounds[0], bounds[1]
    for j in range(positions.shape[0]):
        if run_start[j]:                           # close the run before: each of its right answers loses to
            right = total - errors                 # the errors ranked before it and to half of its run's errors
            lost2 += (right - run_right) * (errors + run_errors)
            run_errors, run_right = errors, right
        c = np.int64(row[positions[j]])
        w = wrong[j]                               # all bits set where wrong, else 0
        total_before, errors_before = total, errors
        total += c
        errors += c & w
        h_total = harmonic[np.uint64(total)]
        h_gap = h_total - h_before                 # sum of 1/k over the copies of this block
        h_before = h_total
        s1 += errors_before * h_gap
        s2 += (total_before & w) * h_gap
        a1 += errors_before * c
        a2 += (c * c) & w
        above = (total - errors) * 100 - down * total
        if np.uint64(above) >= np.uint64((up - down) * total):
            allowed = _cross(allowed, total_before, errors_before, total, errors, bounds, plain_best, inner_best)
            down, up = bounds[allowed], bounds[allowed + 1]
    plain_best[allowed] = total
    right = total - errors
    lost2 += (right - run_right) * (errors + run_errors)
    return errors, s1, s2, a1, a2, lost2 / 2.0


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


RESAMPLES_PER_PASS = 128          # class_and_bin_sums: a group's class counts stay in cache (measured fastest)


@njit(parallel=True, cache=True)
def class_and_bin_sums(counts_by_sample, labels, predictions, correct, bins, gaps, num_classes, n_bins):
    """The count-weighted sums behind F1 and ECE, for M predictors scored on the same N samples, every resample
    at once. counts_by_sample (N, B) integer draws; labels (N,); predictions, correct (bool) and bins (the ECE
    bin, n_bins for outside every bin) (N, M); gaps (N, M) confidence - calibration_correct. Returns the
    per-class counts of the labels (K, B), of the correct predictions and of the predictions (M, K, B), and
    each ECE bin's sum of gaps (M, n_bins, B), added in sample order as the sparse products do. A group of
    resamples is one pass over the samples that adds each sample's row of counts to its classes' rows: the
    additions run along the resamples, in vector registers."""
    n, resamples = counts_by_sample.shape
    members = predictions.shape[1]
    true = np.zeros((num_classes, resamples), np.int64)
    hits = np.zeros((members, num_classes, resamples), np.int64)
    predicted = np.zeros((members, num_classes, resamples), np.int64)
    bin_gaps = np.zeros((members, n_bins, resamples))
    for group in prange((resamples + RESAMPLES_PER_PASS - 1) // RESAMPLES_PER_PASS):
        first = group * RESAMPLES_PER_PASS
        width = min(RESAMPLES_PER_PASS, resamples - first)
        true_g = np.zeros((num_classes, width), np.int32)        # sums of at most n draws
        hits_g = np.zeros((members, num_classes, width), np.int32)
        predicted_g = np.zeros((members, num_classes, width), np.int32)
        gaps_g = np.zeros((members, n_bins + 1, width))
        for i in range(n):
            drawn = counts_by_sample[i, first:first + width]
            _add(true_g[labels[i]], drawn)
            for m in range(members):
                k = predictions[i, m]
                _add(predicted_g[m, k], drawn)
                if correct[i, m]:
                    _add(hits_g[m, k], drawn)
                gap, into = gaps[i, m], gaps_g[m, bins[i, m]]
                for q in range(width):
                    into[q] += drawn[q] * gap
        true[:, first:first + width] = true_g
        hits[:, :, first:first + width] = hits_g
        predicted[:, :, first:first + width] = predicted_g
        bin_gaps[:, :, first:first + width] = gaps_g[:, :n_bins]
    return true, hits, predicted, bin_gaps


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
def detection_sums(counts_in, counts_out, order, shifted, group_end, tpr_level):
    """Shift detection (utils/maths/shift_detection.py) on every resample: counts_in (B, n_in) and counts_out
    (B, n_out) integer draws of the test split and of the shifted one (same dtype); order (n_in + n_out,) both
    splits' samples by descending score, shifted ones numbered after the test split's; shifted (n,) bool and
    group_end (n,) bool (the last of a run of tied scores), in `order`. Returns AUROC, AUPR and FPR95 per resample,
    `weighted_detection`'s numbers: AUROC's sum is an integer (exact), AUPR's is compensated."""
    resamples, n_in = counts_in.shape[0], counts_in.shape[1]
    n = n_in + counts_out.shape[1]
    positions = order.astype(np.uint64)
    is_out = shifted.astype(np.int64)
    auroc, aupr, fpr95 = np.empty(resamples), np.empty(resamples), np.empty(resamples)
    for r in prange(resamples):
        row = np.empty(n, counts_in.dtype)       # both splits' draws in one row: no branch on the split
        row[:n_in] = counts_in[r]
        row[n_in:] = counts_out[r]
        auroc[r], aupr[r], fpr95[r] = _one_detection(row, n_in, positions, is_out, group_end, tpr_level)
    return auroc, aupr, fpr95


@njit(cache=True, inline="never")
def _one_detection(row, n_in, positions, is_out, group_end, tpr_level):
    negatives, positives = 0, 0
    for i in range(n_in):
        negatives += np.int64(row[i])
    for i in range(n_in, row.shape[0]):
        positives += np.int64(row[i])
    threshold = tpr_level * positives - 1e-9 * positives    # as weighted_detection computes it
    tp, fp, tp_run, fp_run = 0, 0, 0, 0
    doubled_wins = 0                # 2 x AUROC's numerator: shifted copies ranked above, tied ones counting half
    precision_sum, compensation = 0.0, 0.0
    fpr = -1.0
    for j in range(positions.shape[0]):
        c = np.int64(row[positions[j]])
        tp_run += c * is_out[j]
        fp_run += c * (1 - is_out[j])
        if group_end[j]:
            doubled_wins += fp_run * (2 * tp + tp_run)
            tp += tp_run
            fp += fp_run
            term = tp_run * (tp / max(tp + fp, 1))
            total = precision_sum + term            # Neumaier's sum: the rounding of the many terms does not add up
            if abs(precision_sum) >= abs(term):
                compensation += (precision_sum - total) + term
            else:
                compensation += (term - total) + precision_sum
            precision_sum = total
            if fpr < 0.0 and tp >= threshold:
                fpr = fp / negatives
            tp_run, fp_run = 0, 0
    return doubled_wins * 0.5 / (positives * negatives), (precision_sum + compensation) / positives, fpr

"""The ranking pass of the paired bootstrap, compiled (numba): for every resample, one walk over the samples in
uncertainty order gives the selective metrics' sums (AURC, AUGRC, CP_AUROC's wins, SAC@t) at once, resamples
spread over the cores. The arithmetic is `bootstrap._weighted_selective`'s, term for term: sums of integers stay
exact, and the harmonic terms agree to rounding (tests/test_bootstrap.py compares the two)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def selective_sums(counts, order, err, run_start, harmonic, levels):
    """counts (B, N) integer draws; order (N,) samples by uncertainty; err (N,) 1.0 where wrong, in `order`;
    run_start (N,) bool, a run of equal uncertainty starts here, in `order`. Returns, per resample: n_errors,
    AURC's and AUGRC's sums, CP_AUROC's tie-aware loss term S (wins = n_correct n_errors - S) and SAC's best k per
    level."""
    resamples, rows = counts.shape[0], order.shape[0]
    n_levels = levels.shape[0]
    n_errors = np.zeros(resamples)
    aurc_pos, aurc_neg, augrc_a, augrc_b = (np.zeros(resamples), np.zeros(resamples), np.zeros(resamples),
                                            np.zeros(resamples))
    loss = np.zeros(resamples)
    best = np.zeros((n_levels, resamples))
    for r in prange(resamples):
        total, errors = 0, 0
        s1, s2, a1, a2, lost = 0.0, 0.0, 0.0, 0.0, 0.0
        run_pos, run_neg, cum_neg = 0.0, 0.0, 0.0
        h_before = 0.0                        # harmonic[total] before this sample (harmonic[0] = 0)
        for j in range(rows):
            if run_start[j] and j > 0:
                cum_neg += run_neg
                lost += run_pos * (cum_neg - 0.5 * run_neg)
                run_pos, run_neg = 0.0, 0.0
            c = counts[r, order[j]]
            if c == 0:                        # a sample not drawn changes no sum (its run may still start here)
                continue
            e = err[j]
            total_before, errors_before = total, errors
            total += c
            if e > 0:
                errors += c
                run_neg += c
            else:
                run_pos += c
            h_total = harmonic[total]
            h_gap = h_total - h_before
            h_before = h_total
            s1 += errors_before * h_gap
            s2 += e * total_before * h_gap
            a1 += errors_before * c
            a2 += e * c * c
            allowed = (total - errors) * 100.0 / max(total, 1)
            for level in range(n_levels):           # levels ascending: the first one not allowed ends it
                if allowed < levels[level]:
                    break
                best[level, r] = total
            if e > 0 and c >= 2:              # inside a block of one wrong prediction drawn twice or more
                slack = 100.0 * (total - c - (errors - c))
                for level in range(n_levels):
                    inner = min(total - 1.0, np.floor(slack / levels[level]))
                    if inner >= total - c + 1 and inner > best[level, r]:
                        best[level, r] = inner
        cum_neg += run_neg
        lost += run_pos * (cum_neg - 0.5 * run_neg)
        n_errors[r] = errors
        aurc_pos[r], aurc_neg[r], augrc_a[r], augrc_b[r], loss[r] = s1, s2, a1, a2, lost
    return n_errors, aurc_pos, aurc_neg, augrc_a, augrc_b, loss, best

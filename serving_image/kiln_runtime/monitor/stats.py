"""Drift statistics: a window of served values against the baseline profile.

Every statistic here is plain numpy over arrays the window hands over; the only scipy calls are
the tail probabilities (p-values: the Kolmogorov distribution and the chi-square survival
function), which have no closed form. None of this runs per frame: the
evaluator calls it once per interval, so the ingest path never pays for it.

Conventions shared by all functions:
- `expected` are baseline fractions (they sum to 1 over the bins or categories), `counts` are the
  window's observed counts over the same bins, in the same order.
- Missing values are removed before any of these run; the missing rate is reported on its own.
"""

from __future__ import annotations

import math

import numpy as np
# Tail probabilities only. Imported here, at start, rather than on first use: the import takes about
# a second, and inside the first evaluation it would hold the GIL while datagrams queue up.
from scipy.special import chdtrc
from scipy.stats import kstwo

# PSI divides by and takes logs of bin fractions, so an empty bin (in the baseline or the window)
# would make it infinite. Both sides are floored at this fraction: 1e-4 is the value most PSI
# write-ups use, small enough that a bin holding 1 row in 10,000 still counts, large enough that one
# empty bin adds at most about (f - 1e-4) * ln(f / 1e-4) ≈ 0.7 for a 10% decile bin, which is
# "significant shift" territory, as an emptied decile should be.
PSI_EPSILON = 1e-4


def _as_fractions(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def psi(expected: np.ndarray, counts: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population Stability Index: sum over bins of (a - e) * ln(a / e).

    `expected` are baseline fractions, `counts` the window's counts per bin; both are floored at
    `epsilon` (see PSI_EPSILON) after the window counts become fractions.
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(_as_fractions(counts), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_counts(values: np.ndarray, interior_edges: np.ndarray) -> np.ndarray:
    """Counts of `values` in the bins (-inf, e0), [e0, e1), ..., [e_last, +inf).

    Half-open on the right like numpy.histogram's inner bins, so a baseline made with
    numpy.histogram over edges [min, e0, ..., e_last, max] puts every value in the same bin as
    here; values beyond the baseline's min/max land in the outer bins (and in the out-of-range
    rate).
    """
    index = np.searchsorted(interior_edges, values, side="right")
    return np.bincount(index, minlength=len(interior_edges) + 1)


def ks_statistic(window_sorted: np.ndarray, baseline_sorted: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs.

    Both inputs must be sorted. The CDFs are evaluated at every observed value with
    searchsorted(side='right'), which handles ties exactly (a tie moves both CDFs at once).
    """
    both = np.concatenate([window_sorted, baseline_sorted])
    cdf_w = np.searchsorted(window_sorted, both, side="right") / window_sorted.size
    cdf_b = np.searchsorted(baseline_sorted, both, side="right") / baseline_sorted.size
    return float(np.max(np.abs(cdf_w - cdf_b)))


def ks_pvalue(statistic: float, n1: int, n2: int) -> float:
    """Two-sided p-value from Smirnov's asymptotic result: D follows the one-sample Kolmogorov
    distribution with the effective size n1*n2/(n1+n2).

    This is scipy.stats.ks_2samp(method='asymp'). The exact distribution (scipy's default below
    10,000 rows) costs O(n1*n2) per feature and interval; at window sizes worth alerting on the two
    agree to well under the alpha anyone would pick.
    """
    en = n1 * n2 / (n1 + n2)
    return float(np.clip(kstwo.sf(statistic, np.round(en)), 0.0, 1.0))


def ks_2samp(window: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample KS test; unsorted inputs, no NaN."""
    w = np.sort(np.asarray(window, dtype=np.float64))
    b = np.sort(np.asarray(baseline, dtype=np.float64))
    d = ks_statistic(w, b)
    return d, ks_pvalue(d, w.size, b.size)


def chi_square(expected: np.ndarray, counts: np.ndarray,
               epsilon: float = PSI_EPSILON) -> tuple[float, float]:
    """Pearson's chi-square goodness of fit of the window's category counts to the baseline.

    Expected counts are the baseline fractions (floored at `epsilon`, then renormalised, so a
    category the baseline never saw, such as the "other" bucket, expects a sliver rather than zero
    and a new category shows up as a large statistic instead of a division by zero) times the
    window's row count. Degrees of freedom: categories - 1.
    """
    observed = np.asarray(counts, dtype=np.float64)
    n = observed.sum()
    p = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    exp = p / p.sum() * n
    stat = float(np.sum((observed - exp) ** 2 / exp))
    dof = observed.size - 1
    if dof < 1 or n == 0:
        return stat, 1.0
    return stat, float(chdtrc(dof, stat))


def jensen_shannon(expected: np.ndarray, counts: np.ndarray) -> float:
    """Jensen–Shannon distance (square root of the divergence), base 2, so it lies in [0, 1].

    Unlike PSI and KL it is finite with empty categories on either side, so it needs no epsilon.
    Matches scipy.spatial.distance.jensenshannon(p, q, base=2).
    """
    p = _as_fractions(expected)
    q = _as_fractions(counts)
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0  # 0 * log(0) = 0; m > 0 wherever x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    divergence = max((kl(p) + kl(q)) / 2, 0.0)  # rounding can dip a hair below zero
    return math.sqrt(divergence)


def out_of_range_rate(values: np.ndarray, lo: float | None, hi: float | None) -> float:
    """Share of (non-missing) values outside the baseline's [min, max]."""
    if values.size == 0 or lo is None or hi is None:
        return 0.0
    return float(np.count_nonzero((values < lo) | (values > hi)) / values.size)

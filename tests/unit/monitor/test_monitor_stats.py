"""Each drift statistic against scipy's reference implementation or against values computed by hand."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, ks_2samp

from kiln_runtime.monitor import stats


class TestPSI:
    def test_hand_computed(self):
        # fractions a = .4 .3 .2 .1 against e = .25 each:
        # .15*ln(1.6) + .05*ln(1.2) + (-.05)*ln(.8) + (-.15)*ln(.4)
        # = .070501 + .009116 + .011157 + .137444 = .228217
        assert stats.psi(np.full(4, 0.25), np.array([40, 30, 20, 10])) == pytest.approx(0.228217, abs=1e-6)

    def test_identical_distributions_score_zero(self):
        assert stats.psi(np.full(10, 0.1), np.full(10, 37)) == pytest.approx(0.0, abs=1e-12)

    def test_empty_bin_is_floored_at_epsilon(self):
        # a = [1, 0 -> 1e-4], e = [.5, .5]: .5*ln(2) + (1e-4 - .5)*ln(1e-4/.5) = .346574 + 4.257745
        assert stats.PSI_EPSILON == 1e-4
        assert stats.psi(np.array([0.5, 0.5]), np.array([100, 0])) == pytest.approx(4.604318, abs=1e-6)

    def test_symmetric_in_its_terms(self):
        # (a - e) ln(a/e) is symmetric, so swapping baseline and window changes nothing.
        e, a = np.array([0.2, 0.3, 0.5]), np.array([0.1, 0.6, 0.3])
        assert stats.psi(e, a * 1000) == pytest.approx(stats.psi(a, e * 1000))

    def test_one_std_shift_is_far_above_the_usual_threshold(self):
        rng = np.random.default_rng(1)
        base = rng.normal(size=100_000)
        interior = np.quantile(base, np.linspace(0.1, 0.9, 9))
        expected = stats.bin_counts(base, interior) / base.size
        shifted = stats.psi(expected, stats.bin_counts(rng.normal(1.0, size=5000), interior))
        same = stats.psi(expected, stats.bin_counts(rng.normal(size=5000), interior))
        assert shifted > 0.5 and same < 0.02


def test_bin_counts_match_numpy_histogram_inside_the_range():
    rng = np.random.default_rng(2)
    values = rng.integers(0, 7, size=3000).astype(float)  # ties on the edges
    edges = np.unique(np.quantile(values, np.linspace(0, 1, 11)))
    hist, _ = np.histogram(values, bins=edges)
    assert stats.bin_counts(values, edges[1:-1]).tolist() == hist.tolist()


def test_bin_counts_put_values_beyond_the_baseline_in_the_outer_bins():
    assert stats.bin_counts(np.array([-5.0, 0.5, 1.0, 99.0]), np.array([0.0, 1.0])).tolist() == [1, 1, 2]


class TestKS:
    @pytest.mark.parametrize("shift,n1,n2", [(0.0, 5000, 1000), (0.1, 5000, 1000), (0.5, 300, 1000),
                                             (0.0, 20000, 777)])
    def test_matches_scipy_asymptotic(self, shift, n1, n2):
        rng = np.random.default_rng(3)
        window, baseline = rng.normal(shift, size=n1), rng.normal(size=n2)
        d, p = stats.ks_2samp(window, baseline)
        ref = ks_2samp(window, baseline, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)

    def test_close_to_scipy_exact_default(self):
        rng = np.random.default_rng(4)
        window, baseline = rng.normal(0.05, size=4000), rng.normal(size=1000)
        d, p = stats.ks_2samp(window, baseline)
        ref = ks_2samp(window, baseline)  # exact at these sizes
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, abs=0.01)

    def test_ties_in_integer_data(self):
        rng = np.random.default_rng(5)
        window, baseline = rng.integers(0, 5, 3000).astype(float), rng.integers(0, 6, 1000).astype(float)
        d, p = stats.ks_2samp(window, baseline)
        ref = ks_2samp(window, baseline, method="asymp")
        assert (d, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)


class TestChiSquare:
    def test_matches_scipy(self):
        expected = np.array([0.5, 0.3, 0.2, 0.0])  # last: the "other" bucket, unseen at baseline
        counts = np.array([480, 320, 190, 10])
        stat, p = stats.chi_square(expected, counts)
        floored = np.maximum(expected, stats.PSI_EPSILON)
        ref = chisquare(counts, floored / floored.sum() * counts.sum())
        assert stat == pytest.approx(ref.statistic, rel=1e-12)
        assert p == pytest.approx(ref.pvalue, rel=1e-9)

    def test_in_distribution_counts_give_a_high_p_value(self):
        stat, p = stats.chi_square(np.array([0.5, 0.25, 0.25, 0.0]), np.array([500, 250, 250, 0]))
        ref = chisquare([500, 250, 250, 0], np.array([0.5, 0.25, 0.25, 1e-4]) / 1.0001 * 1000)
        assert (stat, p) == pytest.approx((ref.statistic, ref.pvalue))
        assert p > 0.99


class TestJensenShannon:
    @pytest.mark.parametrize("p,q", [
        ([0.5, 0.3, 0.2, 0.0], [480, 320, 190, 10]),
        ([0.1, 0.9], [90, 10]),
        ([1.0, 0.0], [0, 5]),  # disjoint supports: the maximum, 1
        ([0.25, 0.25, 0.5], [25, 25, 50]),
    ])
    def test_matches_scipy_base_2(self, p, q):
        assert stats.jensen_shannon(np.array(p), np.array(q)) == pytest.approx(
            jensenshannon(p, q, base=2), abs=1e-7)

    def test_bounds(self):
        assert stats.jensen_shannon(np.array([1.0, 0.0]), np.array([0, 5])) == pytest.approx(1.0)
        assert stats.jensen_shannon(np.array([0.3, 0.7]), np.array([3, 7])) == pytest.approx(0.0, abs=1e-7)


def test_out_of_range_rate():
    values = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    assert stats.out_of_range_rate(values, 0.0, 1.0) == pytest.approx(2 / 5)  # bounds are inside
    assert stats.out_of_range_rate(np.empty(0), 0.0, 1.0) == 0.0
    assert stats.out_of_range_rate(values, None, None) == 0.0


def test_pvalues_are_probabilities_even_for_huge_shifts():
    d, p = stats.ks_2samp(np.arange(1000.0) + 1e6, np.arange(1000.0))
    assert d == 1.0 and 0.0 <= p < 1e-100
    assert not math.isnan(p)

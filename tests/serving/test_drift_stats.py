"""The statistics of a drift check (serving/drift_stats.py) against known answers: scikit-learn's
Ledoit-Wolf, scipy's KS statistic and Mann-Whitney test, hand-computed T² and normal scores, the Cauchy
combination's defining identities; the calibration on a fixed seed; and the degenerate references the
module documents (constant columns, collinear columns, fewer rows than features, tiny references)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from serving.drift import decide, drift_report
from serving.drift_stats import (
    Columns,
    cauchy_combination,
    hotelling,
    ks_p_value,
    ks_tests,
    ledoit_wolf,
    mann_whitney,
    normal_scores,
    reference_stats,
    score_table,
    window_tests,
)


@pytest.mark.parametrize(("rows", "features"), [(120, 4), (455, 30), (10, 30), (50, 1)])
def test_ledoit_wolf_is_scikit_learns(rows, features):
    rng = np.random.default_rng(rows + features)
    x = rng.normal(size=(rows, features)) @ rng.normal(size=(features, features))
    assert ledoit_wolf(x) == pytest.approx(sklearn_ledoit_wolf(x)[0], rel=1e-9, abs=1e-12)


def test_ks_statistic_is_scipys_and_the_p_value_is_close_to_the_exact_one():
    """The bounds serving/drift_stats.py states: samples of 30 rows or more within 0.03 of scipy's exact
    p-value and within 15 % of it between 1e-4 and 0.05; smaller ones within 0.05."""
    rng = np.random.default_rng(3)
    for n_ref, n_win in [(120, 100), (120, 30), (455, 100), (36, 142), (1000, 1000), (120, 10), (5, 7)]:
        small = min(n_ref, n_win) < 30
        for shift in (0.0, 0.3, 0.8, 1.5):
            ref = rng.normal(size=(n_ref, 2)).round(1)  # ties, as iris' 0.1 cm grid
            win = (rng.normal(size=(n_win, 2)) + shift).round(1)
            d, p = ks_tests(reference_stats(ref), Columns.of(win))
            for i in range(2):
                exact = stats.ks_2samp(ref[:, i], win[:, i])
                assert d[i] == pytest.approx(exact.statistic, abs=1e-12)
                assert abs(p[i] - exact.pvalue) <= (0.05 if small else 0.03), (n_ref, n_win, shift, p[i], exact.pvalue)
                if not small and 1e-4 <= exact.pvalue < 0.05:
                    assert p[i] == pytest.approx(exact.pvalue, rel=0.15), (n_ref, n_win, shift)


def test_ks_p_value_is_the_stephens_corrected_kolmogorov_limit():
    root = np.sqrt(100 * 100 / 200)
    assert ks_p_value(np.array([0.2]), 100, 100)[0] == pytest.approx(
        special.kolmogorov((root + 0.12 + 0.11 / root) * 0.2)
    )
    assert ks_p_value(np.array([0.0]), 10, 10)[0] == 1.0


def test_mann_whitney_is_scipys_asymptotic_test_with_ties():
    rng = np.random.default_rng(4)
    for n1, n2 in [(100, 120), (30, 455), (5, 5), (1000, 50)]:
        x = rng.normal(size=n1).round(1)
        y = np.sort(rng.normal(loc=0.2, size=n2).round(1))
        expected = stats.mannwhitneyu(x, y, method="asymptotic")
        u, p = mann_whitney(x, y)
        assert u == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue, rel=1e-10)
    assert mann_whitney(np.ones(5), np.ones(7)) == (17.5, 1.0)  # all tied: no evidence, not a NaN


def test_hotelling_by_hand_one_feature():
    """Reference 1..5 (mean 3, variance 2), window 4, 5, 6 (mean 5): T² = (2²/2) / (1/3 + 1/5) = 3.75,
    F = T²·(n - k)/(k(n - 1)) = 3.75 on (1, 4) degrees of freedom."""
    ref = reference_stats(np.arange(1.0, 6.0)[:, None])
    t2 = hotelling(ref.white, ref.rows, np.array([[4.0], [5.0], [6.0]]))
    assert t2.statistic == pytest.approx(3.75)
    assert t2.p_value == pytest.approx(stats.f.sf(3.75, 1, 4)) and t2.distribution == "F(1, 4)"


def test_hotelling_by_hand_two_uncorrelated_features():
    """The four corners of a square: means 0, variances 1, covariance 0, so the shrunk covariance is the
    identity whatever the shrinkage. Window mean (1, 0) with 2 rows: T² = 1 / (1/2 + 1/4) = 4/3; the
    reference has 4 rows for 2 dimensions, F = (4/3)·2/(2·3) = 4/9 on (2, 2)."""
    ref = reference_stats(np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]))
    t2 = hotelling(ref.white, ref.rows, np.array([[1.0, 0.5], [1.0, -0.5]]))
    assert t2.statistic == pytest.approx(4 / 3)
    assert t2.p_value == pytest.approx(stats.f.sf(4 / 9, 2, 2)) and t2.dimensions == 2


def test_normal_scores_by_hand():
    """Reference 1, 2, 2, 3: mid-ranks 0.5, 2, 2, 3.5 of 4 → Φ⁻¹((r + ½)/5); a value below every
    reference value scores Φ⁻¹(0.5/5), above every one Φ⁻¹(4.5/5)."""
    ref = np.array([[1.0], [2.0], [2.0], [3.0]])
    sorted_ref = Columns.of(ref).sorted
    window = np.array([[0.0], [2.0], [9.0], [1.0], [2.5]])
    got = normal_scores(sorted_ref, score_table(4), Columns.of(window))[:, 0]
    expected = special.ndtri((np.array([0.0, 2.0, 4.0, 0.5, 3.0]) + 0.5) / 5)
    assert got == pytest.approx(expected)
    assert score_table(4)[4] == pytest.approx(0.0)  # the middle rank is the median


def test_cauchy_combination_identities():
    assert cauchy_combination([0.03]) == pytest.approx(0.03) and cauchy_combination([1.0]) == 1.0
    # the example of the authors' R package (github.com/yaowuliu/ACAT): acat(c(2e-02,4e-04,0.2,0.1,0.8))
    assert cauchy_combination([2e-02, 4e-04, 0.2, 0.1, 0.8]) == pytest.approx(0.001953404, rel=1e-6)
    assert cauchy_combination([0.2, 0.2, 0.2]) == pytest.approx(0.2)  # identical tests: the same p
    t = 0.5 * np.tan((0.5 - 0.01) * np.pi) + 0.5 * np.tan((0.5 - 0.5) * np.pi)
    assert cauchy_combination([0.01, 0.5]) == pytest.approx(0.5 - np.arctan(t) / np.pi)
    assert cauchy_combination([1e-20, 0.5]) == pytest.approx(2e-20, rel=1e-6)  # tan's pole, no overflow
    assert cauchy_combination([1e-4, 1.0]) < 1e-3  # a p-value of 1 does not hide the other test
    assert cauchy_combination([]) == 1.0
    assert cauchy_combination([0.01, 0.9], weights=[3, 1]) < cauchy_combination([0.01, 0.9])


def test_the_acat_decision_is_calibrated_on_a_fixed_seed():
    """400 windows of 100 rows drawn from the reference's own distribution (correlated normal, 5
    features, reference 500 rows) at threshold 0.05: the false-alarm rate's 95 % interval contains the
    threshold and the rate stays below 8 %; every component p-value is close to uniform."""
    rng = np.random.default_rng(2026)
    cov = 0.6 ** np.abs(np.subtract.outer(np.arange(5), np.arange(5)))
    draw = lambda n: rng.multivariate_normal(np.zeros(5), cov, size=n)  # noqa: E731
    ref = reference_stats(draw(500))
    fired, components = 0, []
    n = 400
    for _ in range(n):
        tests = window_tests(ref, draw(100))
        fired += decide(tests, 0.05, "acat").drift
        components.append(tests.multivariate_p_values())
    rate = fired / n
    half = 1.96 * np.sqrt(0.05 * 0.95 / n)
    assert 0.05 - half <= rate <= 0.05 + half and rate < 0.08, rate
    for column in np.array(components).T:
        assert stats.kstest(column, "uniform").pvalue > 0.001, column


def test_constant_column_takes_no_part_in_the_multivariate_tests_but_ks_still_sees_it_move():
    rng = np.random.default_rng(6)
    ref = np.column_stack([rng.normal(size=200), np.full(200, 7.0), rng.normal(size=200)])
    stats_ = reference_stats(ref)
    same = np.column_stack([rng.normal(size=100), np.full(100, 7.0), rng.normal(size=100)])
    tests = window_tests(stats_, same)
    assert tests.hotelling.dimensions == 2 and tests.hotelling_scores.dimensions == 2
    assert np.isfinite(tests.ks_p_values).all() and not decide(tests, 0.05, "acat").drift
    moved = same.copy()
    moved[:, 1] = 7.5
    report = drift_report(
        stats_, moved, ["a", "k", "b"], threshold=0.05, correction="acat", window_size=100, min_samples=100
    )
    assert report["drift_detected"] is True and report["drifted_features"] == ["k"]


def test_all_columns_constant_means_no_multivariate_evidence():
    ref = reference_stats(np.full((50, 3), 2.0))
    tests = window_tests(ref, np.full((20, 3), 2.0))
    assert tests.hotelling.p_value == 1.0 and tests.hotelling.distribution == "none"
    assert tests.distances.p_value == 1.0 and not decide(tests, 0.05, "acat").drift
    assert decide(window_tests(ref, np.full((20, 3), 3.0)), 0.05, "acat").drift  # KS sees it


def test_collinear_columns_and_more_features_than_rows_give_finite_answers():
    rng = np.random.default_rng(7)
    a = rng.normal(size=300)
    collinear = np.column_stack([a, 2 * a, a + 1, rng.normal(size=300)])
    wide = rng.normal(size=(8, 30))
    for ref, window in ((collinear, collinear[:100] + 0.01), (wide, rng.normal(size=(100, 30)))):
        tests = window_tests(reference_stats(ref), window)
        ps = [*tests.ks_p_values, *tests.multivariate_p_values()]
        assert all(np.isfinite(p) and 0.0 <= p <= 1.0 for p in ps)
    wide_t2 = window_tests(reference_stats(wide), rng.normal(size=(100, 30))).hotelling
    assert wide_t2.distribution.startswith("chi2")  # 8 rows cannot give F degrees of freedom for 30 dimensions


@pytest.mark.parametrize("rows", [1, 2])
def test_tiny_references_answer_without_exceptions(rows):
    ref = reference_stats(np.arange(rows * 2, dtype=float).reshape(rows, 2))
    tests = window_tests(ref, np.array([[0.0, 1.0]]))
    assert tests.distances.p_value == 1.0  # no out-of-fold distances from fewer than 3 rows
    assert 0.0 <= decide(tests, 0.05, "acat").p_value <= 1.0


def test_bad_shapes_are_named():
    ref = reference_stats(np.zeros((5, 2)) + np.arange(5)[:, None])
    with pytest.raises(ValueError, match="2 features"):
        window_tests(ref, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least one row"):
        window_tests(ref, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="at least one row"):
        reference_stats(np.zeros((0, 2)))

"""The drift decision (serving/drift.py): corrections, acat, the seed's response shape, and detector quality on
iris. The statistics themselves: test_drift_stats.py."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from serving.drift import adjust, decide, drift_report, normalize_correction
from serving.drift_stats import reference_stats, window_tests
from tests.serving.pipeline_like import IRIS_FEATURES, iris_frame


def test_bonferroni_divides_the_level_by_the_number_of_tests():
    adjusted, reject, cutoff = adjust([0.01, 0.02, 0.2, 0.9], 0.05, "bonferroni")
    assert cutoff == pytest.approx(0.0125)
    assert reject.tolist() == [True, False, False, False]
    assert adjusted.tolist() == pytest.approx([0.04, 0.08, 0.8, 1.0])


def test_benjamini_hochberg_step_up():
    # sorted p: 0.001 (<= 0.0125), 0.02 (<= 0.025), 0.03 (<= 0.0375), 0.5 -> the first three rejected
    adjusted, reject, cutoff = adjust([0.5, 0.02, 0.001, 0.03], 0.05, "bh")
    assert reject.tolist() == [False, True, True, True]
    assert cutoff == pytest.approx(0.0375)
    assert adjusted.tolist() == pytest.approx([0.5, 0.04, 0.004, 0.04])
    # BH finds what Bonferroni misses here
    assert adjust([0.5, 0.02, 0.001, 0.03], 0.05, "bonferroni")[1].tolist() == [False, False, True, False]


def test_none_is_the_seed_behaviour():
    _, reject, cutoff = adjust([0.04, 0.06], 0.05, "none")
    assert cutoff == 0.05 and reject.tolist() == [True, False]


def test_correction_names():
    assert normalize_correction("Benjamini-Hochberg") == "bh"
    assert normalize_correction(" ACAT ") == "acat" and normalize_correction("cauchy") == "acat"
    with pytest.raises(ValueError):
        normalize_correction("holm")


def test_report_keeps_the_seed_shape_and_collects_first():
    ref = np.random.default_rng(0).normal(size=(200, 2))
    names = ["a", "b"]
    kw = dict(threshold=0.05, correction="bonferroni", window_size=100, min_samples=100)
    collecting = drift_report(ref, ref[:10], names, **kw)
    assert collecting["drift_detected"] is False
    assert collecting["reason"] == "Collecting samples (10/100)"
    assert collecting["samples"] == 10
    full = drift_report(ref, ref[:100] + 3.0, names, **kw)
    assert "reason" not in full
    assert full["drift_detected"] is True
    assert set(full["features"]) == {"feature_0", "feature_1"}
    f0 = full["features"]["feature_0"]
    assert {"ks_stat", "p_value", "drift", "name", "p_adjusted"} <= set(f0)
    assert f0["name"] == "a" and f0["drift"] is True
    assert full["feature_names"] == names and full["correction"] == "bonferroni"
    assert full["adjusted_threshold"] == pytest.approx(0.025)


def test_acat_report_keeps_every_feature_and_adds_the_multivariate_tests():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(300, 3))
    kw = dict(threshold=0.05, correction="acat", window_size=100, min_samples=100)
    quiet = drift_report(ref, rng.normal(size=(100, 3)), ["a", "b", "c"], **kw)
    assert quiet["correction"] == "acat" and quiet["drift_detected"] is False
    assert quiet["combined_p_value"] >= 0.05 and quiet["drifted_features"] == []
    assert set(quiet["multivariate"]) == {"hotelling_t2", "hotelling_t2_scores", "mahalanobis"}
    assert quiet["multivariate"]["hotelling_t2"]["dimensions"] == 3
    assert quiet["adjusted_threshold"] == pytest.approx(0.05 / 3)  # a feature's flag: Bonferroni
    moved = ref[:100].copy()
    moved[:, 1] += 1.0
    shifted = drift_report(ref, moved, ["a", "b", "c"], **kw)
    assert shifted["drift_detected"] is True and shifted["combined_p_value"] < 1e-6
    assert shifted["drifted_features"] == ["b"] and shifted["features"]["feature_1"]["drift"] is True


def test_acat_sees_a_broken_correlation_no_single_feature_shows():
    """Every marginal unchanged, the relation between two columns reversed: the per-feature tests see
    nothing, the distance test does; drift is reported with no feature flagged."""
    rng = np.random.default_rng(11)
    a = rng.normal(size=1000)
    ref = np.column_stack([a, a + rng.normal(scale=0.3, size=1000)])
    b = rng.normal(size=100)
    window = np.column_stack([b, -b + rng.normal(scale=0.3, size=100)])
    for correction in ("bonferroni", "bh"):
        kw = dict(threshold=0.05, correction=correction, window_size=100, min_samples=100)
        assert drift_report(ref, window, ["a", "b"], **kw)["drift_detected"] is False
    report = drift_report(ref, window, ["a", "b"], threshold=0.05, correction="acat", window_size=100, min_samples=100)
    assert report["drift_detected"] is True and report["drifted_features"] == []
    assert report["multivariate"]["mahalanobis"]["p_value"] < 1e-6


def test_ks_only_corrections_skip_the_multivariate_tests():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(200, 2))
    report = drift_report(ref, ref[:100], ["a", "b"], threshold=0.05, correction="bh", window_size=100, min_samples=100)
    assert "multivariate" not in report and "combined_p_value" not in report


def test_decide_judges_one_set_of_tests_under_every_correction():
    rng = np.random.default_rng(8)
    ref = reference_stats(rng.normal(size=(300, 4)))
    window = rng.normal(size=(100, 4))
    window[:, 0] += 0.6
    tests = window_tests(ref, window)
    for correction in ("acat", "bonferroni", "bh", "none"):
        report = drift_report(
            ref, window, list("abcd"), threshold=0.05, correction=correction, window_size=100, min_samples=100
        )
        assert decide(tests, 0.05, correction).drift is report["drift_detected"]
    with pytest.raises(ValueError, match="multivariate"):
        decide(window_tests(ref, window, multivariate=False), 0.05, "acat")


def _windows(n_windows: int, size: int, seed: int, shift: float):
    X = iris_frame()[0].to_numpy()
    rng = np.random.default_rng(seed)
    for _ in range(n_windows):
        w = X[rng.integers(0, len(X), size)] + rng.normal(0.0, 0.02, (size, X.shape[1]))
        w[:, 2] += shift
        yield w


@pytest.mark.parametrize("correction", ["acat", "bonferroni", "bh"])
def test_detector_quality_on_iris(correction):
    """Fixed seed, 250 windows of 100 rows each way. Reference = the training split the pipeline logs.

    Windows from the training distribution (bootstrap of iris + 0.02 cm jitter) raise drift in at
    most 5% of checks; petal length shifted by +0.5 cm is detected in at least 95%. (The harder shifts
    and the held-out protocol: bench/detection.py, `make bench`.)
    """
    X, y = iris_frame()
    reference = train_test_split(X, y, test_size=0.2, random_state=42)[0].to_numpy()
    kw = dict(threshold=0.05, correction=correction, window_size=100, min_samples=100)
    n = 250
    false_alarms = sum(
        drift_report(reference, w, IRIS_FEATURES, **kw)["drift_detected"]
        for w in _windows(n, 100, seed=1234, shift=0.0)
    )
    detections = sum(
        drift_report(reference, w, IRIS_FEATURES, **kw)["drift_detected"]
        for w in _windows(n, 100, seed=4321, shift=0.5)
    )
    assert false_alarms / n <= 0.05, f"false alarm rate {false_alarms / n:.3f}"
    assert detections / n >= 0.95, f"detection rate {detections / n:.3f}"


def test_uncorrected_tests_alarm_more_often():
    """The seed's behaviour (no correction) is kept selectable, and it is what raises false alarms."""
    X, y = iris_frame()
    reference = train_test_split(X, y, test_size=0.2, random_state=42)[0].to_numpy()
    counts = {}
    for correction in ("none", "bonferroni"):
        counts[correction] = sum(
            drift_report(
                reference, w, IRIS_FEATURES, threshold=0.05, correction=correction, window_size=100, min_samples=100
            )["drift_detected"]
            for w in _windows(200, 100, seed=99, shift=0.0)
        )
    assert counts["none"] > counts["bonferroni"]


def _hand_written_bh(p_values, alpha):
    """The Benjamini-Hochberg step-up serving/drift.py used before scipy's false_discovery_control."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    ranks = np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate((ranked * m / ranks)[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(1.0, q_sorted)
    passing = np.nonzero(ranked <= ranks * alpha / m)[0]
    if len(passing):
        cutoff = (passing[-1] + 1) * alpha / m
        return q, p <= cutoff, cutoff
    return q, np.zeros(m, dtype=bool), alpha / m


def test_benjamini_hochberg_gives_the_hand_written_results():
    rng = np.random.default_rng(7)
    cases = [rng.uniform(0, 0.1, m) for m in (1, 2, 4, 10, 50) for _ in range(40)]
    cases += [np.array([0.01, 0.01, 0.02, 0.5]), np.array([0.0125, 0.025, 0.0375, 0.05]), np.ones(3), np.zeros(3)]
    for p in cases:
        for alpha in (0.01, 0.05, 0.1):
            q, reject, cutoff = adjust(p, alpha, "bh")
            q0, reject0, cutoff0 = _hand_written_bh(p, alpha)
            assert q == pytest.approx(q0, rel=1e-12, abs=0)
            assert reject.tolist() == reject0.tolist(), (p, alpha)
            assert cutoff == pytest.approx(cutoff0, rel=1e-12)

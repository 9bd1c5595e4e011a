"""The drift decision: the tests of serving/drift_stats.py turned into one verdict at `threshold`.
Plain numpy/scipy, no Flask, no storage.

`DRIFT_CORRECTION` chooses how:
- `acat` (default): the per-feature KS p-values, Hotelling's T² on the values and on their normal
  scores, and the Mahalanobis-distance test combined by the Cauchy combination (equal weights) into
  one p-value, drift when it is below
  `threshold`. It keeps false alarms at the threshold and catches shifts the per-feature tests miss
  (a small shift of several features, a broken correlation): `make bench`'s detection table.
- `bonferroni`: KS per feature only, drift when a p-value is below threshold/m (family-wise level).
- `bh`: KS per feature only, Benjamini-Hochberg at false-discovery rate `threshold`.
- `none`: KS per feature at `threshold` each, the seed's behaviour (four uncorrected tests at 0.05
  fire on about 13 % of windows drawn from the training distribution).

Whatever decides, every feature's KS statistic and p-values stay in the report so people see which
columns moved; with `acat` a feature's `drift` flag is its Bonferroni verdict (family-wise at the
threshold), so drift can be detected with no single column flagged: the multivariate tests say why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from scipy import stats

from serving.drift_stats import (
    Hotelling,
    ReferenceStats,
    WindowTests,
    cauchy_combination,
    reference_stats,
    window_tests,
)

if TYPE_CHECKING:
    from serving.schemas import DriftStatus, FeatureDrift, HotellingT2

Correction = Literal["acat", "bonferroni", "bh", "none"]
CORRECTIONS: tuple[Correction, ...] = get_args(Correction)
_ALIASES: dict[str, Correction] = {
    "acat": "acat",
    "cauchy": "acat",
    "bonferroni": "bonferroni",
    "bh": "bh",
    "benjamini-hochberg": "bh",
    "fdr_bh": "bh",
    "none": "none",
}


def normalize_correction(name: str) -> Correction:
    try:
        return _ALIASES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown correction {name!r}: use acat, bonferroni, bh or none") from None


def adjust(
    p_values: Sequence[float] | np.ndarray, alpha: float, correction: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return (adjusted p-values, reject flags, the per-test p-value cutoff that was applied).

    - bonferroni: reject p < alpha/m; adjusted p = min(1, m p).
    - bh: Benjamini-Hochberg step-up at FDR alpha (scipy.stats.false_discovery_control); adjusted
      p = BH q-values, reject q <= alpha; the cutoff is k*alpha/m for the k rejected tests (the largest
      k with p_(k) <= k*alpha/m; alpha/m when nothing is rejected).
    - none: reject p < alpha.
    - acat: per test as bonferroni (the combined decision is drift_report's).
    """
    correction = normalize_correction(correction)
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p, np.zeros(0, dtype=bool), alpha
    if correction == "none":
        return p.copy(), p < alpha, alpha
    if correction in ("bonferroni", "acat"):
        cutoff = alpha / m
        return np.minimum(1.0, p * m), p < cutoff, cutoff
    q = stats.false_discovery_control(p, method="bh")
    reject = q <= alpha
    k = int(reject.sum())  # BH rejects the k smallest p-values: p_(k) <= k*alpha/m
    return q, reject, (k if k else 1) * alpha / m


def drift_report(
    reference: ReferenceStats | np.ndarray,
    window: np.ndarray,
    feature_names: Sequence[str],
    *,
    threshold: float,
    correction: str,
    window_size: int,
    min_samples: int,
) -> DriftStatus:
    """The drift verdict for `window` (rows, any order) against `reference` (its ReferenceStats, or
    the raw rows, whose statistics are then computed here: tests and the bench; the app passes the
    model version's precomputed ones).

    Keeps the seed's keys (`drift_detected`, `threshold`, `samples`, `features: {feature_i:
    {ks_stat, p_value, drift}}`, `reason` while collecting) and adds the feature names, the
    correction, the adjusted threshold, per-feature adjusted p-values and, with `acat`, the
    multivariate tests and the combined p-value.
    """
    method = normalize_correction(correction)
    ref = reference if isinstance(reference, ReferenceStats) else reference_stats(reference)
    n = int(len(window))
    m = len(feature_names)
    base: DriftStatus = {
        "drift_detected": False,
        "threshold": threshold,
        "samples": n,
        "window_size": window_size,
        "min_samples": min_samples,
        "correction": method,
        # a feature's cutoff before any test (every correction but none compares features at threshold/m)
        "adjusted_threshold": threshold / m if (method != "none" and m) else threshold,
        "feature_names": list(feature_names),
        "reference_samples": ref.rows,
        "features": {},
    }
    if n < max(min_samples, 1):
        base["reason"] = f"Collecting samples ({n}/{min_samples})"
        return base
    tests = window_tests(ref, window, multivariate=method == "acat")
    decision = decide(tests, threshold, method)
    features: dict[str, FeatureDrift] = {}
    for i, name in enumerate(feature_names):
        features[f"feature_{i}"] = {
            "name": name,
            "ks_stat": round(float(tests.ks_statistics[i]), 6),
            "p_value": float(tests.ks_p_values[i]),
            "p_adjusted": float(decision.adjusted[i]),
            "drift": bool(decision.feature_drift[i]),
        }
    base["features"] = features
    base["adjusted_threshold"] = decision.cutoff
    base["drift_detected"] = decision.drift
    base["drifted_features"] = [feature_names[int(i)] for i in np.nonzero(decision.feature_drift)[0]]
    if tests.hotelling is not None and tests.hotelling_scores is not None and tests.distances is not None:
        base["combined_p_value"] = decision.p_value
        base["multivariate"] = {
            "hotelling_t2": _hotelling(tests.hotelling),
            "hotelling_t2_scores": _hotelling(tests.hotelling_scores),
            "mahalanobis": {
                "statistic": tests.distances.statistic,
                "p_value": tests.distances.p_value,
                "window_median": round(tests.distances.window_median, 6),
                "reference_median": round(tests.distances.reference_median, 6),
            },
        }
    return base


def _hotelling(h: Hotelling) -> HotellingT2:
    return {
        "statistic": round(h.statistic, 6),
        "p_value": h.p_value,
        "dimensions": h.dimensions,
        "distribution": h.distribution,
    }


@dataclass(frozen=True)
class Decision:
    drift: bool
    p_value: float  # the combined p-value (acat); the smallest adjusted p-value otherwise
    cutoff: float  # what a per-feature p-value was compared with
    adjusted: np.ndarray  # per-feature adjusted p-values
    feature_drift: np.ndarray  # per-feature flags


def decide(tests: WindowTests, threshold: float, correction: str) -> Decision:
    """One verdict from one window's tests. Separate from the tests so the bench can judge the same
    window under every correction without testing it again."""
    method = normalize_correction(correction)
    adjusted, reject, cutoff = adjust(tests.ks_p_values, threshold, method)
    if method != "acat":
        smallest = float(adjusted.min()) if adjusted.size else 1.0
        return Decision(bool(reject.any()), smallest, float(cutoff), adjusted, reject)
    combined = cauchy_combination(np.concatenate([tests.ks_p_values, tests.multivariate_p_values()]))
    return Decision(combined < threshold, combined, float(cutoff), adjusted, reject)

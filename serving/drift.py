"""Drift statistics: per-feature two-sample Kolmogorov-Smirnov tests against the model's reference
data, with a multiple-testing correction. Plain numpy/scipy, no Flask, no storage.

`threshold` is the family-wise level (Bonferroni), the false-discovery rate (Benjamini-Hochberg) or
the per-feature level (`none`, the seed's behaviour: four uncorrected tests at 0.05 fire on about 13%
of windows drawn from the training distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from serving.schemas import DriftStatus, FeatureDrift

Correction = Literal["bonferroni", "bh", "none"]
CORRECTIONS: tuple[Correction, ...] = get_args(Correction)
_ALIASES: dict[str, Correction] = {
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
        raise ValueError(f"unknown correction {name!r}: use bonferroni, bh or none") from None


def adjust(
    p_values: Sequence[float] | np.ndarray, alpha: float, correction: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return (adjusted p-values, reject flags, the per-test p-value cutoff that was applied).

    - bonferroni: reject p < alpha/m; adjusted p = min(1, m p).
    - bh: Benjamini-Hochberg step-up at FDR alpha (scipy.stats.false_discovery_control); adjusted
      p = BH q-values, reject q <= alpha; the cutoff is k*alpha/m for the k rejected tests (the largest
      k with p_(k) <= k*alpha/m; alpha/m when nothing is rejected).
    - none: reject p < alpha.
    """
    correction = normalize_correction(correction)
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p, np.zeros(0, dtype=bool), alpha
    if correction == "none":
        return p.copy(), p < alpha, alpha
    if correction == "bonferroni":
        cutoff = alpha / m
        return np.minimum(1.0, p * m), p < cutoff, cutoff
    q = stats.false_discovery_control(p, method="bh")
    reject = q <= alpha
    k = int(reject.sum())  # BH rejects the k smallest p-values: p_(k) <= k*alpha/m
    return q, reject, (k if k else 1) * alpha / m


def drift_report(
    reference: np.ndarray,
    window: np.ndarray,
    feature_names: Sequence[str],
    *,
    threshold: float,
    correction: str,
    window_size: int,
    min_samples: int,
) -> DriftStatus:
    """The drift verdict for `window` (rows, oldest first or any order) against `reference`.

    Keeps the seed's keys (`drift_detected`, `threshold`, `samples`, `features: {feature_i:
    {ks_stat, p_value, drift}}`, `reason` while collecting) and adds the feature names, the
    correction, the adjusted threshold and per-feature adjusted p-values.
    """
    method = normalize_correction(correction)
    n = int(len(window))
    m = len(feature_names)
    base: DriftStatus = {
        "drift_detected": False,
        "threshold": threshold,
        "samples": n,
        "window_size": window_size,
        "min_samples": min_samples,
        "correction": method,
        "adjusted_threshold": threshold / m if (method != "none" and m) else threshold,
        "feature_names": list(feature_names),
        "reference_samples": int(len(reference)),
        "features": {},
    }
    if n < min_samples:
        base["reason"] = f"Collecting samples ({n}/{min_samples})"
        return base
    window = np.asarray(window, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    ks = np.empty(m)
    pv = np.empty(m)
    for i in range(m):
        res = stats.ks_2samp(reference[:, i], window[:, i])
        ks[i] = float(res.statistic)
        pv[i] = float(res.pvalue)
    adjusted, reject, cutoff = adjust(pv, threshold, method)
    features: dict[str, FeatureDrift] = {}
    for i, name in enumerate(feature_names):
        features[f"feature_{i}"] = {
            "name": name,
            "ks_stat": round(float(ks[i]), 6),
            "p_value": float(pv[i]),
            "p_adjusted": float(adjusted[i]),
            "drift": bool(reject[i]),
        }
    base["features"] = features
    base["adjusted_threshold"] = float(cutoff)
    base["drift_detected"] = bool(reject.any())
    base["drifted_features"] = [feature_names[int(i)] for i in np.nonzero(reject)[0]]
    return base

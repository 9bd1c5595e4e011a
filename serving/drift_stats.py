"""The statistics behind a drift check, and what they need from the reference, computed once.

A check compares a window of served rows with the model's reference (its training features) by four
kinds of two-sample test, each giving p-values that `serving/drift.py` turns into one decision:

- **Kolmogorov-Smirnov per feature** — which columns moved. The statistic is scipy's (`ks_2samp`'s,
  ties included) computed against reference columns sorted once; the p-value is Kolmogorov's limiting
  distribution with Stephens' small-sample correction, `Q((√nₑ + 0.12 + 0.11/√nₑ)·D)` (Numerical
  Recipes' `probks`), one ufunc call for all features. scipy's exact p-value counts lattice paths
  (cost grows with both sizes) and its `kstwo` costs ~0.7 ms a feature. With 30 rows or more on each
  side this one is within 0.03 of the exact value and within 15 % of it between 1e-4 and 0.05; with
  fewer (a 10-row window) within 0.05 (the tests hold these bounds).
- **Hotelling's T²** of the window mean against the reference mean — a shift spread over several
  correlated features, each too small for its own KS test. The covariance is the reference's, on
  standardised columns, shrunk by Ledoit-Wolf so that it is invertible with few rows, many features or
  collinear columns; the p-value is the F distribution with the reference's degrees of freedom
  (χ² when the reference has no more rows than the test has dimensions).
- **Hotelling's T² on normal scores** — the same test after each value is replaced by its normal
  score under the reference's own distribution (Φ⁻¹ of its mid-rank among the reference's values: a
  Gaussian copula). Skewed, heavy-tailed or multimodal columns (iris' petals, breast cancer's areas)
  and monotone relations between columns (area = π·radius²) stop dominating the covariance, and a
  small move inside a tight cluster becomes a large move in ranks; bounded scores also make it robust
  to a few extreme rows. The raw-unit test stays because it is the stronger one on a unimodal column
  (`make bench`: +0.2 cm sepal width).
- **Mahalanobis distances** (on the normal scores) — rows that sit where the reference has no mass
  although every marginal and the mean are unchanged (a broken correlation, a spread): the window's
  squared distances against the reference's own, by a two-sided Mann-Whitney test (normal
  approximation with tie and continuity corrections: scipy's `mannwhitneyu(method="asymptotic")`,
  counted against the sorted reference distances instead of ranking both samples again). The
  reference's distances are out-of-fold (10 folds, each row measured with the mean and covariance
  of the others) so that they are as far from the reference's centre as unseen rows are; in-sample
  distances are smaller and would make every window look drifted once there are many features.

Degenerate data has a defined answer (tests/serving/test_drift_stats.py holds each):
- a column that is constant in the reference takes no part in T² and the distances (its variance is
  zero, so any move would be infinitely significant); its KS test still sees a window that leaves it;
- all columns constant: T² and the distance test answer p = 1 (they carry no information);
- collinear columns and fewer reference rows than features: the shrunk covariance is invertible,
  directions with no variance left after shrinkage are dropped;
- fewer than three reference rows: no out-of-fold distances, the distance test answers p = 1.

Plain numpy/scipy, no Flask, no storage: MLServer's and MLflow's scoring code keep model logic out of
HTTP the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special

FOLDS = 10
_EIGEN_FLOOR = 1e-10  # eigenvalues below this share of the largest are treated as no variance


def ledoit_wolf(z: np.ndarray) -> np.ndarray:
    """The Ledoit-Wolf shrunk covariance of the rows of `z` (shrinkage towards a multiple of the
    identity, coefficient estimated from the data): the same estimate as
    `sklearn.covariance.ledoit_wolf(z)`, written out so the serving workers need not import
    scikit-learn. The tests hold the two equal."""
    n, p = z.shape
    centred = z - z.mean(axis=0)
    sample = centred.T @ centred / n
    mu = np.trace(sample) / p
    target_gap = sample.copy()
    target_gap[np.diag_indices(p)] -= mu
    delta = float((target_gap**2).sum()) / p
    squared = centred**2
    beta = float((squared.T @ squared).sum() / n - (sample**2).sum()) / (p * n)
    shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
    shrunk = (1.0 - shrinkage) * sample
    shrunk[np.diag_indices(p)] += shrinkage * mu
    return np.asarray(shrunk, dtype=np.float64)


@dataclass(frozen=True)
class Whitening:
    """x ↦ ((x - mean) / scale)[:, varying] @ matrix: coordinates in which the reference has identity
    covariance (its shrunk estimate). `matrix` has one column per direction kept (`rank`)."""

    mean: np.ndarray
    scale: np.ndarray
    varying: np.ndarray  # bool per feature: not constant in the reference
    matrix: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.matrix.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        standardised = (x[:, self.varying] - self.mean[self.varying]) / self.scale[self.varying]
        return np.asarray(standardised @ self.matrix, dtype=np.float64)


def whitening(x: np.ndarray) -> Whitening:
    mean = x.mean(axis=0)
    spread = x.std(axis=0)
    varying = spread > 0
    scale = np.where(varying, spread, 1.0)
    k = int(varying.sum())
    if k == 0 or len(x) < 2:
        return Whitening(mean, scale, varying, np.zeros((k, 0)))
    z = (x[:, varying] - mean[varying]) / scale[varying]
    values, vectors = np.linalg.eigh(ledoit_wolf(z))
    keep = values > values.max() * _EIGEN_FLOOR
    return Whitening(mean, scale, varying, vectors[:, keep] / np.sqrt(values[keep]))


def score_table(n: int) -> np.ndarray:
    """Φ⁻¹((r + ½)/(n + 1)) for every mid-rank r = k/2, k = 0 … 2n, among n reference values: a
    lookup instead of an inverse normal per value."""
    return np.asarray(special.ndtri((np.arange(2 * n + 1) / 2.0 + 0.5) / (n + 1)), dtype=np.float64)


@dataclass(frozen=True)
class Columns:
    """A sample's columns, sorted, and where each sorted value came from: one sort serves the KS
    statistics and the normal scores."""

    sorted: np.ndarray  # (features, rows), each row ascending
    order: np.ndarray  # sorted[i] = values[order[i], i]

    @classmethod
    def of(cls, x: np.ndarray) -> Columns:
        columns = np.ascontiguousarray(x.T)
        order = np.argsort(columns, axis=1)
        return cls(np.take_along_axis(columns, order, axis=1), order)


def normal_scores(sorted_reference: np.ndarray, table: np.ndarray, sample: Columns) -> np.ndarray:
    """Each value's normal score under the reference column it belongs to, Φ⁻¹((r + ½)/(n + 1)) for
    its mid-rank r among the n reference values (below them all 0, above them all n, ties in between),
    as rows × features. The reference's own rows get the same treatment, so reference and window are
    scored alike. The searches run on sorted keys (several times faster than on a window's order)."""
    out = np.empty(sample.sorted.shape[::-1], dtype=np.float64)
    for i, (column, keys) in enumerate(zip(sorted_reference, sample.sorted, strict=True)):
        twice_rank = np.searchsorted(column, keys, side="left") + np.searchsorted(column, keys, side="right")
        out[sample.order[i], i] = table[twice_rank]
    return out


def squared_distances(white: np.ndarray) -> np.ndarray:
    return np.asarray(np.einsum("ij,ij->i", white, white), dtype=np.float64)


def out_of_fold_distances(x: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Each reference row's squared Mahalanobis distance under the mean and covariance of the rows not
    in its fold (a fixed seed: the same model version always gets the same distances)."""
    n = len(x)
    if n < 3:
        return np.zeros(0)
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n)
    for held in np.array_split(order, min(folds, n)):
        rest = np.ones(n, dtype=bool)
        rest[held] = False
        out[held] = squared_distances(whitening(x[rest])(x[held]))
    return np.sort(out)


@dataclass(frozen=True)
class ReferenceStats:
    """Everything a check needs from a model's reference, computed once per model version (when the
    version is loaded), never per request."""

    rows: int
    sorted_columns: np.ndarray = field(repr=False)  # (features, rows), each column ascending
    score_table: np.ndarray = field(repr=False)  # score_table(rows): normal score by twice the mid-rank
    white: Whitening = field(repr=False)  # of the raw values
    score_white: Whitening = field(repr=False)  # of the normal scores
    distances: np.ndarray = field(repr=False)  # out-of-fold squared distances of the scores, ascending

    @property
    def features(self) -> int:
        return int(self.sorted_columns.shape[0])


def reference_stats(reference: np.ndarray) -> ReferenceStats:
    x = np.asarray(reference, dtype=np.float64)
    if x.ndim != 2 or len(x) < 1:
        raise ValueError(f"a reference needs at least one row of features, got shape {x.shape}")
    columns = Columns.of(x)
    table = score_table(len(x))
    scores = normal_scores(columns.sorted, table, columns)
    return ReferenceStats(
        rows=len(x),
        sorted_columns=columns.sorted,
        score_table=table,
        white=whitening(x),
        score_white=whitening(scores),
        distances=out_of_fold_distances(scores),
    )


@dataclass(frozen=True)
class Hotelling:
    statistic: float
    p_value: float
    dimensions: int  # directions tested (features not constant in the reference, after shrinkage)
    distribution: str  # "F(k, n-k)" or "chi2(k)"


@dataclass(frozen=True)
class DistanceTest:
    statistic: float  # Mann-Whitney U of the window's distances against the reference's
    p_value: float
    window_median: float
    reference_median: float


@dataclass(frozen=True)
class WindowTests:
    ks_statistics: np.ndarray
    ks_p_values: np.ndarray
    hotelling: Hotelling | None  # None: not asked for (the KS-only corrections)
    hotelling_scores: Hotelling | None
    distances: DistanceTest | None

    def multivariate_p_values(self) -> list[float]:
        if self.hotelling is None or self.hotelling_scores is None or self.distances is None:
            raise ValueError("the multivariate tests were not run (window_tests(multivariate=False))")
        return [self.hotelling.p_value, self.hotelling_scores.p_value, self.distances.p_value]


def ks_p_value(d: np.ndarray, n_ref: int, n_win: int) -> np.ndarray:
    """Two-sided two-sample KS p-value of statistic(s) `d` (Stephens-corrected Kolmogorov limit)."""
    root = math.sqrt(n_ref * n_win / (n_ref + n_win))
    p = special.kolmogorov((root + 0.12 + 0.11 / root) * np.asarray(d, dtype=np.float64))
    return np.asarray(np.clip(p, 0.0, 1.0), dtype=np.float64)


def ks_tests(ref: ReferenceStats, window: Columns) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS statistic and p-value for every feature. The largest gap between the two
    empirical CDFs is reached at a sample value, so both CDFs are evaluated at the reference's values
    and at the window's, each already sorted (what `ks_2samp` computes on their concatenation)."""
    n_ref, n_win = ref.rows, window.sorted.shape[1]
    d = np.empty(ref.features)
    for i, (r, w) in enumerate(zip(ref.sorted_columns, window.sorted, strict=True)):
        at_ref = np.searchsorted(r, r, side="right") / n_ref - np.searchsorted(w, r, side="right") / n_win
        at_win = np.searchsorted(r, w, side="right") / n_ref - np.searchsorted(w, w, side="right") / n_win
        d[i] = max(np.abs(at_ref).max(), np.abs(at_win).max())
    return d, ks_p_value(d, n_ref, n_win)


def hotelling(white: Whitening, n_ref: int, window: np.ndarray) -> Hotelling:
    """T² of the window's mean against the reference's, in `white`'s coordinates (the window given in
    the coordinates `white` was fitted on: raw values or normal scores)."""
    k = white.rank
    if k == 0:
        return Hotelling(0.0, 1.0, 0, "none")
    n_win = len(window)
    gap = white(window.mean(axis=0, keepdims=True))[0]
    t2 = float(gap @ gap) / (1.0 / n_win + 1.0 / n_ref)
    if n_ref > k + 1:
        f = t2 * (n_ref - k) / (k * (n_ref - 1))
        return Hotelling(t2, float(special.fdtrc(k, n_ref - k, f)), k, f"F({k}, {n_ref - k})")
    return Hotelling(t2, float(special.chdtrc(k, t2)), k, f"chi2({k})")


def mann_whitney(x: np.ndarray, sorted_y: np.ndarray) -> tuple[float, float]:
    """U of `x` against `sorted_y` (ascending) and the two-sided p-value, as
    `scipy.stats.mannwhitneyu(x, y, method="asymptotic")` computes them."""
    n1, n2 = len(x), len(sorted_y)
    below = np.searchsorted(sorted_y, x, side="left")
    equal = np.searchsorted(sorted_y, x, side="right") - below
    # U counts pairs with x > y plus half the ties; ties within x add the same to both sides.
    u = float(below.sum() + 0.5 * equal.sum())
    _, counts = np.unique(np.concatenate([x, sorted_y]), return_counts=True)
    n = n1 + n2
    ties = float((counts.astype(np.float64) ** 3 - counts).sum())
    sd = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))))
    if sd == 0:
        return u, 1.0
    big = max(u, n1 * n2 - u)
    z = (big - n1 * n2 / 2.0 - 0.5) / sd
    return u, float(min(1.0, 2.0 * special.ndtr(-z)))


def distance_test(ref: ReferenceStats, scores: np.ndarray) -> DistanceTest:
    """The window's (normal scores') squared distances against the reference's out-of-fold ones."""
    if ref.score_white.rank == 0 or len(ref.distances) == 0:
        return DistanceTest(0.0, 1.0, 0.0, 0.0)
    d = squared_distances(ref.score_white(scores))
    u, p = mann_whitney(d, ref.distances)
    return DistanceTest(u, p, float(np.median(d)), float(np.median(ref.distances)))


def window_tests(ref: ReferenceStats, window: np.ndarray, *, multivariate: bool = True) -> WindowTests:
    """The tests of `window` (rows × the reference's features, at least one row) against `ref`: KS per
    feature, and the two T² tests and the distance test unless `multivariate` is false."""
    window = np.asarray(window, dtype=np.float64)
    if window.ndim != 2 or window.shape[1] != ref.features or len(window) == 0:
        raise ValueError(f"a window needs at least one row of {ref.features} features, got shape {window.shape}")
    columns = Columns.of(window)
    d, p = ks_tests(ref, columns)
    if not multivariate:
        return WindowTests(d, p, None, None, None)
    scores = normal_scores(ref.sorted_columns, ref.score_table, columns)
    return WindowTests(
        d,
        p,
        hotelling(ref.white, ref.rows, window),
        hotelling(ref.score_white, ref.rows, scores),
        distance_test(ref, scores),
    )


def cauchy_combination(p_values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ACAT (Liu & Xie 2020): one p-value from several, valid whatever their dependence, as powerful
    as the strongest test when one test sees the shift and as a sum when several do a little.
    T = Σ wᵢ tan((½ - pᵢ)π), p = ½ - arctan(T / Σwᵢ)/π. Tiny p-values use tan's pole form
    1/(pπ) (tan loses all precision there). A p-value of 1 (a KS test on identical-looking samples, an
    uninformative test) would put -∞ in the sum and hide every other test: as the authors' FAQ
    (github.com/yaowuliu/ACAT) advises, p-values within 1e-14 of 1 are taken as 1 - 1/d for d tests."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size <= 1:
        return float(p[0]) if p.size else 1.0
    w = np.full(p.size, 1.0 / p.size) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    p = np.where(p >= 1.0 - 1e-14, 1.0 - 1.0 / p.size, np.maximum(p, 1e-300))
    small = p < 1e-15
    terms = np.where(small, w / (np.where(small, p, 1.0) * np.pi), w * np.tan((0.5 - p) * np.pi))
    t = float(terms.sum())
    if t > 1e15:
        return float(min(1.0, 1.0 / (t * np.pi)))
    return float(min(1.0, max(0.0, 0.5 - np.arctan(t) / np.pi)))

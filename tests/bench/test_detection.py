"""The detection-quality harness (bench/detection.py): its interval, that each shift does what its name
says, that held-out windows never hold reference rows, the goals' bookkeeping and the README tables, on
a few windows (the real numbers come from `make bench`)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import detection
from bench.report import detection_tables


def test_wilson_interval_known_answers():
    low, high = detection.wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(1.96**2 / (10 + 1.96**2))
    low, high = detection.wilson(50, 100)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(0.192, abs=0.002)
    assert detection.wilson(0, 0) == (0.0, 1.0)


def test_shifts_change_what_their_names_say_and_nothing_else():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 3)) * [1.0, 2.0, 3.0]
    window = rng.normal(size=(200, 3)) * [1.0, 2.0, 3.0]
    labels = rng.integers(0, 3, 200)
    shifts = detection.SHIFTS
    moved = shifts["one feature +0.5 sd"](window, labels, ref, 1, rng)
    assert (moved - window)[:, 1] == pytest.approx(0.5 * ref[:, 1].std()) and (
        moved[:, [0, 2]] == window[:, [0, 2]]
    ).all()
    spread = shifts["one feature's spread ×1.5"](window, labels, ref, 2, rng)
    centre = ref[:, 2].mean()
    assert spread[:, 2] - centre == pytest.approx(1.5 * (window[:, 2] - centre))
    broken = shifts["one feature's correlation broken"](window, labels, ref, 0, rng)
    assert sorted(broken[:, 0]) == sorted(window[:, 0]) and not (broken[:, 0] == window[:, 0]).all()
    prior = shifts["class prior (first class ×2)"](window, labels, ref, 0, rng)
    first_class = {tuple(r) for r in window[labels == 0]}
    assert first_class <= {tuple(r) for r in prior}  # every row of the first class kept, others thinned
    assert len(first_class) < len(prior) < len(window)
    assert shifts[detection.NULL](window, labels, ref, 0, rng) is window


def test_held_out_windows_never_contain_reference_rows():
    iris = detection.datasets()[0]
    seen = 0
    for ref, ref_x, window, _, _ in detection.held_out_windows(iris, windows=5, size=100, seed=1):
        assert ref.rows == len(ref_x) == 120 and len(window) == 30  # 80 / 20 stratified, no repeats
        ref_rows = {tuple(r) for r in ref_x}
        held = [tuple(r) for r in window]
        # iris repeats a few rows; a held-out row may equal a reference row only if the data set has it twice
        values, counts = np.unique(iris.x, axis=0, return_counts=True)
        duplicates = {tuple(r) for r in values[counts > 1]}
        assert all(r not in ref_rows or r in duplicates for r in held)
        seen += 1
    assert seen == 5
    synthetic = detection.synthetic(features=5, rows=300)
    windows = list(detection.held_out_windows(synthetic, windows=2, size=50, seed=1))
    assert all(len(w) == 50 for _, _, w, _, _ in windows)
    assert not np.array_equal(windows[0][2], windows[1][2])  # fresh draws


def test_a_small_run_has_every_cell_and_the_tables_render():
    quality = detection.bench_protocol_quality(windows=3, null_windows=4)
    assert {q["shift"] for q in quality} == set(detection.BENCH_SHIFTS)
    assert {q["detector"] for q in quality} == set(detection.DETECTORS)
    null = [q for q in quality if q["shift"] == detection.NULL]
    assert all(q["windows"] == 4 for q in null) and all(0 <= q["rate"] <= 1 for q in quality)
    moved = [q for q in quality if q["shift"] == "+0.5 cm petal length" and q["detector"] == "acat"]
    assert moved[0]["rate"] == 1.0  # a large shift: every window
    held = [dict(q, protocol="held-out", data="iris") for q in null]
    cost = detection.check_cost(sizes=(100, 1_000), repeats=1)
    assert {(c["data"], c["window_rows"], c["detector"]) for c in cost} >= {("iris", 1_000, "acat")}
    goals = detection.goals(quality + held, cost)
    assert [g["measure"] for g in goals][:2] == [m for m, *_ in detection.GOALS][:2]
    petal = next(g for g in goals if g["measure"] == "+0.25 cm petal length")
    assert petal["met"] is (petal["acat"] >= 0.95)
    tables = "\n".join(detection_tables({"quality": quality + held, "cost": cost, "goals": goals}))
    assert "| bench | iris | +0.25 cm petal length | 100 | 3 |" in tables
    assert "| iris | 4 | 150 |" in tables

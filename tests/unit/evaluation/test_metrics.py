"""Tests of landmark error metrics, their summary and Dice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cardiofm.evaluation.metrics import POOLED, dice, landmark_errors_mm, summarise_errors


def test_errors_are_keyed_by_name_and_a_missing_middle_label_shifts_nothing() -> None:
    truth = {"A": (0.0, 0.0, 0.0), "B": (1.0, 1.0, 1.0), "C": (3.0, 4.0, 0.0)}
    pred = {"C": (3.0, 4.0, 12.0), "A": (3.0, 4.0, 0.0)}  # B missing, dict order differs from names
    errors = landmark_errors_mm(pred, truth, ["A", "B", "C"])
    assert list(errors) == ["A", "B", "C"]
    assert errors["A"] == pytest.approx(5.0)
    assert math.isnan(errors["B"])
    assert errors["C"] == pytest.approx(12.0)


def test_none_and_non_finite_predictions_are_missing_and_unannotated_names_are_left_out() -> None:
    truth = {"A": (0.0, 0.0, 0.0), "B": (1.0, 1.0, 1.0)}
    pred = {"A": None, "B": (math.nan, 0.0, 0.0), "C": (0.0, 0.0, 0.0)}
    errors = landmark_errors_mm(pred, truth, ["A", "B", "C"])
    assert set(errors) == {"A", "B"}
    assert math.isnan(errors["A"])
    assert math.isnan(errors["B"])


def test_errors_reject_bad_ground_truth_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match="finite"):
        landmark_errors_mm({}, {"A": (0.0, math.inf, 0.0)}, ["A"])
    with pytest.raises(ValueError, match="unique"):
        landmark_errors_mm({}, {}, ["A", "A"])


def test_summary_reports_large_errors_and_counts_missing_and_large_as_failures() -> None:
    cases = [{"A": 5.0, "B": math.nan, "C": 12.0}, {"A": 1.0, "B": 2.0, "C": 3.0}]
    s = summarise_errors(cases, ["A", "B", "C"], failure_mm=10.0)
    assert list(s) == ["A", "B", "C", POOLED]

    assert (s["A"].n, s["A"].n_missing, s["A"].n_failed) == (2, 0, 0)
    assert s["A"].mean_mm == pytest.approx(3.0)
    assert s["A"].failure_rate == 0.0

    assert (s["B"].n, s["B"].n_missing, s["B"].n_failed) == (2, 1, 1)
    assert s["B"].mean_mm == pytest.approx(2.0)
    assert s["B"].failure_rate == pytest.approx(0.5)

    # The 12 mm error is a failure AND is part of the mean (7.5 mm, not 3 mm).
    assert s["C"].mean_mm == pytest.approx(7.5)
    assert s["C"].max_mm == pytest.approx(12.0)
    assert s["C"].failure_rate == pytest.approx(0.5)

    p = s[POOLED]  # found: 5, 12, 1, 2, 3
    assert (p.n, p.n_missing, p.n_failed) == (6, 1, 2)
    assert p.mean_mm == pytest.approx(4.6)
    assert p.median_mm == pytest.approx(3.0)
    assert p.q25_mm == pytest.approx(2.0)
    assert p.q75_mm == pytest.approx(5.0)
    assert p.std_mm == pytest.approx(float(np.std([5, 12, 1, 2, 3], ddof=1)))
    assert p.failure_rate == pytest.approx(2 / 6)
    assert p.as_dict()["n"] == 6


def test_summary_threshold_is_strict_and_empty_groups_give_nan() -> None:
    s = summarise_errors([{"A": 10.0, "B": math.nan}, {"A": 10.5}], ["A", "B", "C"])
    assert s["A"].n_failed == 1  # exactly 10 mm is not a failure, 10.5 mm is
    assert (s["B"].n, s["B"].n_missing, s["B"].failure_rate) == (1, 1, 1.0)
    assert math.isnan(s["B"].mean_mm)
    assert math.isnan(s["B"].median_mm)
    assert s["C"].n == 0
    assert math.isnan(s["C"].failure_rate)
    assert s[POOLED].n == 3


def test_summary_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="reserved"):
        summarise_errors([], ["A", POOLED])
    with pytest.raises(ValueError, match="failure_mm"):
        summarise_errors([], ["A"], failure_mm=0.0)
    with pytest.raises(ValueError, match="distance"):
        summarise_errors([{"A": -1.0}], ["A"])


def test_dice_empty_cases_and_no_smoothing() -> None:
    empty = np.zeros((3, 3, 3), dtype=bool)
    full = np.ones((3, 3, 3), dtype=bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, full) == 0.0
    assert dice(full, empty) == 0.0
    assert dice(full, full) == 1.0
    assert dice(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    assert dice(np.array([2, 0]), np.array([1, 0])) == 1.0  # non-zero is foreground
    with pytest.raises(ValueError, match="same shape"):
        dice(empty, np.zeros((3, 3)))

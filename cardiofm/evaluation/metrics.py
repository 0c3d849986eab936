"""Evaluation metrics: landmark distances in mm, their summary with failure rates, and Dice.

Lessons from the reference work: errors are matched to ground truth **by landmark name**, never by position in a
list (a missing prediction there shifted every later landmark); summaries report every found point including
errors ≥ 10 mm, with missing and large errors counted as failures instead of being dropped; Dice has no ``+1`` in
the denominator and scores an empty prediction of an empty truth as a perfect 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from cardiofm.contracts.landmarks import Point3

#: Key of the all-landmarks summary in :func:`summarise_errors`.
POOLED = "pooled"


def landmark_errors_mm(
    pred: Mapping[str, Point3 | None],
    truth: Mapping[str, Point3],
    names: Sequence[str],
) -> dict[str, float]:
    """Euclidean distance (mm) between predicted and true landmarks of one case, keyed by name.

    Parameters
    ----------
    pred:
        Predicted LPS points (mm) by name; a name that is absent, ``None`` or has a non-finite coordinate is a
        missing prediction.
    truth:
        Ground-truth LPS points (mm) by name. A name without ground truth cannot be scored and is left out of the
        result (it is neither a success nor a failure).
    names:
        Landmarks to score, in the order of the returned dict.

    Returns
    -------
    dict[str, float]
        ``{name: error_mm}`` for every name in ``names`` that has ground truth; ``nan`` where the prediction is
        missing.

    Raises
    ------
    ValueError
        Duplicate names, or a ground-truth point that is not three finite coordinates.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique, got {list(names)}")
    out: dict[str, float] = {}
    for name in names:
        if name not in truth:
            continue
        t = np.asarray(truth[name], dtype=np.float64)
        if t.shape != (3,) or not bool(np.isfinite(t).all()):
            raise ValueError(f"ground truth {name} must be 3 finite coordinates, got {truth[name]!r}")
        p_raw = pred.get(name)
        if p_raw is None:
            out[name] = math.nan
            continue
        p = np.asarray(p_raw, dtype=np.float64)
        if p.shape != (3,):
            raise ValueError(f"prediction {name} must be 3 coordinates, got {p_raw!r}")
        out[name] = float(np.linalg.norm(p - t)) if bool(np.isfinite(p).all()) else math.nan
    return out


@dataclass(frozen=True)
class ErrorSummary:
    """Summary of landmark errors over cases (one landmark, or all pooled).

    Attributes
    ----------
    n:
        Scored landmark instances (cases with ground truth for it).
    n_missing:
        Instances without a prediction.
    n_failed:
        Instances missing or with an error above ``failure_mm``.
    mean_mm, std_mm, median_mm, q25_mm, q75_mm, max_mm:
        Statistics over **all found** points (errors above ``failure_mm`` included); ``nan`` if none was found.
        ``std_mm`` is the sample standard deviation (``ddof=1``; ``nan`` for fewer than two points); ``q25_mm``
        and ``q75_mm`` bound the interquartile range (linear interpolation).
    failure_rate:
        ``n_failed / n``; ``nan`` if ``n == 0``.
    failure_mm:
        The threshold used, mm.
    """

    n: int
    n_missing: int
    n_failed: int
    mean_mm: float
    std_mm: float
    median_mm: float
    q25_mm: float
    q75_mm: float
    max_mm: float
    failure_rate: float
    failure_mm: float

    def as_dict(self) -> dict[str, float | int]:
        """The summary as a plain dict (for JSON and tables)."""
        return asdict(self)


def _summary(values: npt.NDArray[np.float64], failure_mm: float) -> ErrorSummary:
    n = int(values.size)
    found = values[np.isfinite(values)]
    n_missing = n - int(found.size)
    n_failed = n_missing + int(np.count_nonzero(found > failure_mm))
    nan = math.nan
    if found.size:
        q25, median, q75 = (float(v) for v in np.percentile(found, [25.0, 50.0, 75.0]))
        mean, max_mm = float(found.mean()), float(found.max())
    else:
        q25 = median = q75 = mean = max_mm = nan
    return ErrorSummary(
        n=n,
        n_missing=n_missing,
        n_failed=n_failed,
        mean_mm=mean,
        std_mm=float(found.std(ddof=1)) if found.size > 1 else nan,
        median_mm=median,
        q25_mm=q25,
        q75_mm=q75,
        max_mm=max_mm,
        failure_rate=n_failed / n if n else nan,
        failure_mm=failure_mm,
    )


def summarise_errors(
    errors_per_case: Sequence[Mapping[str, float]],
    names: Sequence[str],
    failure_mm: float = 10.0,
) -> dict[str, ErrorSummary]:
    """Summarise per-case landmark errors per landmark and pooled over all landmarks.

    Parameters
    ----------
    errors_per_case:
        One :func:`landmark_errors_mm` result per case: error in mm by name, ``nan`` for a missing prediction, a
        name absent when the case has no ground truth for it.
    names:
        Landmarks to summarise; the pooled summary covers exactly these.
    failure_mm:
        An error strictly above this (mm) counts as a failure, as does a missing prediction. Such errors are
        still included in every mean, median and quantile (reported, never dropped).

    Returns
    -------
    dict[str, ErrorSummary]
        One entry per name, in ``names`` order, then ``"pooled"``.

    Raises
    ------
    ValueError
        Duplicate names, a name equal to ``"pooled"``, a non-positive ``failure_mm``, or a negative or infinite
        error value.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique, got {list(names)}")
    if POOLED in names:
        raise ValueError(f"{POOLED!r} is reserved for the pooled summary and cannot be a landmark name")
    if not (math.isfinite(failure_mm) and failure_mm > 0):
        raise ValueError(f"failure_mm must be a positive number, got {failure_mm}")
    per_name: dict[str, list[float]] = {name: [] for name in names}
    for case in errors_per_case:
        for name in names:
            if name not in case:
                continue
            value = float(case[name])
            if math.isinf(value) or value < 0:
                raise ValueError(f"error of {name} must be a distance ≥ 0 mm or nan, got {value}")
            per_name[name].append(value)
    out = {name: _summary(np.asarray(v, dtype=np.float64), failure_mm) for name, v in per_name.items()}
    pooled = np.asarray([v for vals in per_name.values() for v in vals], dtype=np.float64)
    out[POOLED] = _summary(pooled, failure_mm)
    return out


def dice(pred_mask: npt.ArrayLike, true_mask: npt.ArrayLike) -> float:
    """Hard Dice coefficient ``2|P ∩ T| / (|P| + |T|)`` of two masks of the same shape.

    Parameters
    ----------
    pred_mask, true_mask:
        Arrays of identical shape (any number of axes); non-zero means foreground.

    Returns
    -------
    float
        In ``[0, 1]``. Both empty: 1.0 (nothing to find, nothing found). Exactly one empty: 0.0. No smoothing
        term is added.

    Raises
    ------
    ValueError
        The shapes differ.
    """
    p = np.asarray(pred_mask).astype(bool, copy=False)
    t = np.asarray(true_mask).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"masks must have the same shape, got {p.shape} and {t.shape}")
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / total

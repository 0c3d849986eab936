"""Rejection of malformed updates: every check names the tensor or metric and the problem."""

from __future__ import annotations

import numpy as np
import pytest

from cardiofm.errors import InputDataError, MalformedUpdateError
from cardiofm.federated.validation import check_tensor_header, counts_from_metrics, validate_update
from cardiofm.models.registry import group_of

BB = "backbone.conv.weight"
INDEX = "backbone.attn.relative_position_index"
MS = "heads.septum.conv.weight"
CALC = "heads.calcification.conv.weight"
GROUPS = {"backbone", "septum", "calcification"}


def global_model() -> dict[str, np.ndarray]:
    return {
        BB: np.zeros((2, 3), np.float32),
        INDEX: np.arange(4, dtype=np.int64),
        MS: np.zeros((2, 2), np.float32),
        CALC: np.zeros((1, 2), np.float32),
    }


GLOBAL = global_model()
NAME_GROUPS = {n: group_of(n) for n in GLOBAL}
COUNTS = {"backbone": 10, "septum": 10, "calcification": 0}


def good_tensors() -> dict[str, np.ndarray]:
    return {BB: np.ones((2, 3), np.float32), MS: np.ones((2, 2), np.float32)}


def check(tensors: dict[str, np.ndarray], counts: dict[str, int] = COUNTS) -> None:
    validate_update(tensors, counts, GLOBAL, NAME_GROUPS)


def test_valid_update_passes() -> None:
    check(good_tensors())
    check({**good_tensors(), INDEX: GLOBAL[INDEX].copy()})  # an integer buffer equal to the global value


def test_error_class_is_an_input_data_error() -> None:
    assert issubclass(MalformedUpdateError, InputDataError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"heads.septum.conv.wieght": np.ones((2, 2), np.float32)}, r"'heads.septum.conv.wieght' is not in.*did you"),
        (
            {MS: np.ones((3, 2), np.float32)},
            r"'heads.septum.conv.weight' has shape \(3, 2\), the global model \(2, 2\)",
        ),
        ({MS: np.ones((2, 2), np.float64)}, r"'heads.septum.conv.weight' has dtype float64, the global model float32"),
        ({BB: np.array([[1, np.nan, 1], [1, 1, 1]], np.float32)}, r"'backbone.conv.weight' has 1 non-finite"),
        ({BB: np.full((2, 3), np.inf, np.float32)}, r"'backbone.conv.weight' has 6 non-finite"),
        (
            {CALC: np.ones((1, 2), np.float32)},
            r"'heads.calcification.conv.weight' was sent although its group 'calcification' has count 0",
        ),
        ({INDEX: np.arange(4, dtype=np.int64)[::-1].copy()}, r"'backbone.attn.relative_position_index' \(int64\)"),
        ({MS: [[1.0, 1.0], [1.0, 1.0]]}, r"'heads.septum.conv.weight' is a list"),
    ],
)
def test_bad_tensor_is_rejected_with_its_name(change: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(MalformedUpdateError, match=message):
        check({**good_tensors(), **change})


def test_empty_update_is_rejected() -> None:
    with pytest.raises(MalformedUpdateError, match="no tensors"):
        check({})


def test_missing_or_bad_count_is_rejected() -> None:
    with pytest.raises(MalformedUpdateError, match="'n-calcification' is missing"):
        check(good_tensors(), {"backbone": 10, "septum": 10})
    with pytest.raises(MalformedUpdateError, match="'n-septum' is negative"):
        check(good_tensors(), {**COUNTS, "septum": -1})


def test_header_check_reads_no_data() -> None:
    check_tensor_header(MS, (2, 2), "float32", GLOBAL)
    with pytest.raises(MalformedUpdateError, match="dtype float16"):
        check_tensor_header(MS, (2, 2), "float16", GLOBAL)


REPLY = {"num-examples": 100, "n-septum": 100, "n-calcification": 0, "train-loss": 0.5}


def test_counts_from_metrics() -> None:
    counts = counts_from_metrics(REPLY, GROUPS, backbone="backbone")
    assert counts == {"backbone": 100, "septum": 100, "calcification": 0}
    # n-backbone, when present, is the backbone's own count (e.g. 0 when the backbone was frozen)
    assert counts_from_metrics({**REPLY, "n-backbone": 0}, GROUPS, backbone="backbone")["backbone"] == 0


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({k: v for k, v in REPLY.items() if k != "num-examples"}, "'num-examples' is missing"),
        ({k: v for k, v in REPLY.items() if k != "n-septum"}, "'n-septum' is missing"),
        ({**REPLY, "n-septum": -3}, "'n-septum' is negative"),
        ({**REPLY, "n-septum": 10.0}, "'n-septum' must be an integer count, got float"),
        ({**REPLY, "num-examples": 2.5}, "'num-examples' must be an integer count"),
        ({**REPLY, "n-septum": True}, "'n-septum' must be an integer count, got bool"),
        ({**REPLY, "n-aorta": 5}, r"\['n-aorta'\] name no group"),
    ],
)
def test_bad_counts_are_rejected(metrics: dict[str, object], message: str) -> None:
    with pytest.raises(MalformedUpdateError, match=message):
        counts_from_metrics(metrics, GROUPS, backbone="backbone")

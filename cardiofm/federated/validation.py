"""Server-side checks of a site's training reply before it touches the aggregate (plain numpy, no Flower).

Reply contract (what every ClientApp sends back after training):

* the trained tensors only, under their state-dict names, each with the global tensor's shape and dtype;
* ``num-examples`` (int ≥ 0): the examples the site trained on; it weights the backbone;
* ``n-<group>`` (int ≥ 0) for every head group of the model, 0 = head not trained; every reply carries the same
  keys. ``n-backbone`` is optional: when present it replaces ``num-examples`` as the backbone's weight;
* losses ``train-loss`` and ``train-loss-<task>`` (see :mod:`cardiofm.federated.aggregation`).

Every check raises :class:`~cardiofm.errors.MalformedUpdateError` naming the tensor or metric and the problem;
messages carry names, shapes, dtypes and counts only, never values or patient data.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from cardiofm.errors import MalformedUpdateError

#: Metric key of the number of examples a site trained on (Flower's ``weighted_by_key``).
NUM_EXAMPLES_KEY = "num-examples"
#: Prefix of the per-group count keys: ``n-<group>``.
COUNT_PREFIX = "n-"


def is_floating(dtype: np.dtype[Any]) -> bool:
    """True for dtypes that are averaged (float16/32/64); integer and boolean buffers never are."""
    return bool(np.issubdtype(dtype, np.floating))


def count_key(group: str) -> str:
    """Metric key of a group's count: ``n-<group>``."""
    return f"{COUNT_PREFIX}{group}"


def _as_count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise MalformedUpdateError(
            f"update rejected: metric {key!r} must be an integer count, got {type(value).__name__}"
        )
    count = int(value)
    if count < 0:
        raise MalformedUpdateError(f"update rejected: metric {key!r} is negative ({count})")
    return count


def counts_from_metrics(metrics: Mapping[str, object], groups: Collection[str], *, backbone: str) -> dict[str, int]:
    """Per-group example counts of one reply (the weight of each group's tensors).

    Parameters
    ----------
    metrics
        The reply's metrics (a Flower ``MetricRecord`` or a plain mapping).
    groups
        Every aggregation group of the global model (backbone and heads).
    backbone
        Name of the backbone group; its count is ``n-<backbone>`` if present, else ``num-examples``.

    Returns
    -------
    dict[str, int]
        ``{group: count}`` for every group in ``groups``.

    Raises
    ------
    MalformedUpdateError
        If ``num-examples`` or an ``n-<head>`` is missing, not an integer or negative, or a count names a group
        the model does not have.
    """
    if NUM_EXAMPLES_KEY not in metrics:
        raise MalformedUpdateError(f"update rejected: metric {NUM_EXAMPLES_KEY!r} is missing")
    num_examples = _as_count(NUM_EXAMPLES_KEY, metrics[NUM_EXAMPLES_KEY])
    counts: dict[str, int] = {}
    for group in groups:
        key = count_key(group)
        if key in metrics:
            counts[group] = _as_count(key, metrics[key])
        elif group == backbone:
            counts[group] = num_examples
        else:
            raise MalformedUpdateError(
                f"update rejected: metric {key!r} is missing; every reply must carry n-<group> for every head "
                f"(0 = not trained)"
            )
    unknown = sorted(k for k in metrics if k.startswith(COUNT_PREFIX) and k[len(COUNT_PREFIX) :] not in groups)
    if unknown:
        raise MalformedUpdateError(
            f"update rejected: count(s) {unknown} name no group of the model (groups: {sorted(groups)})"
        )
    return counts


def check_tensor_header(
    name: str, shape: tuple[int, ...], dtype: str, global_arrays: Mapping[str, npt.NDArray[Any]]
) -> None:
    """Check a tensor's name, shape and dtype against the global model (cheap: no data is read).

    Raises
    ------
    MalformedUpdateError
        For a name the global model does not have, or a different shape or dtype.
    """
    reference = global_arrays.get(name)
    if reference is None:
        close = difflib.get_close_matches(name, list(global_arrays), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MalformedUpdateError(f"update rejected: tensor {name!r} is not in the global model{hint}")
    if tuple(shape) != reference.shape:
        raise MalformedUpdateError(
            f"update rejected: tensor {name!r} has shape {tuple(shape)}, the global model {reference.shape}"
        )
    if dtype != str(reference.dtype):
        raise MalformedUpdateError(
            f"update rejected: tensor {name!r} has dtype {dtype}, the global model {reference.dtype}"
        )


def validate_update(
    tensors: Mapping[str, npt.NDArray[Any]],
    counts: Mapping[str, int],
    global_arrays: Mapping[str, npt.NDArray[Any]],
    groups: Mapping[str, str],
) -> None:
    """Reject a site's update unless every tensor and count fits the global model.

    Parameters
    ----------
    tensors
        Name → array, only the tensors the site trained.
    counts
        Group → examples the site trained that group on (0 = not trained), e.g. from :func:`counts_from_metrics`.
    global_arrays
        Name → array of the global model sent this round.
    groups
        Name → aggregation group, for every name of ``global_arrays``.

    Raises
    ------
    MalformedUpdateError
        For an empty update; a count missing, non-integer or negative; an unknown tensor name; a shape or dtype
        different from the global model; non-finite values; a tensor sent although its group's count is 0; an
        integer/boolean tensor (e.g. an index table) that differs from the global value.
    """
    if not tensors:
        raise MalformedUpdateError("update rejected: it carries no tensors")
    for group in set(groups.values()):
        if group not in counts:
            raise MalformedUpdateError(f"update rejected: count {count_key(group)!r} is missing")
        _as_count(count_key(group), counts[group])
    for name, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise MalformedUpdateError(f"update rejected: tensor {name!r} is a {type(array).__name__}, not an array")
        check_tensor_header(name, array.shape, str(array.dtype), global_arrays)
        group = groups[name]
        if counts[group] == 0:
            raise MalformedUpdateError(
                f"update rejected: tensor {name!r} was sent although its group {group!r} has count 0 (not trained)"
            )
        reference = global_arrays[name]
        if is_floating(array.dtype):
            finite = np.isfinite(array)
            if not finite.all():
                bad = int(finite.size - np.count_nonzero(finite))
                raise MalformedUpdateError(
                    f"update rejected: tensor {name!r} has {bad} non-finite value(s) (NaN or ±inf)"
                )
        elif not np.array_equal(array, reference):
            raise MalformedUpdateError(
                f"update rejected: tensor {name!r} ({array.dtype}) is never averaged and must equal the global "
                f"value, but differs"
            )

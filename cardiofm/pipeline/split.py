"""The site's train/test split: exact, stratified per task, seeded and frozen.

For every task the site holds, ``round(test_fraction × n)`` of the ``n`` cases labelled for it go to
the test split (rounded half up), at least one when ``n >= 3`` and never all of them (a task needs a
training case); the split as a whole holds ``round(test_fraction × N)`` of all ``N`` cases where the
per-task quotas allow. Cases are taken in an order fixed by a hash of (seed, case id), rarest task
first, preferring cases that do not push another task over its quota.

Frozen: a case that already has a split (from the dataset's earlier manifest) keeps it; only new
cases are assigned, towards the quotas of the whole, so adding cases never moves an earlier one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Literal

Split = Literal["train", "test"]


def _rank(seed: int, case_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{case_id}".encode()).hexdigest()[:16], 16)


def quota_of(n: int, test_fraction: float, *, at_least_one_from: int | None = 3) -> int:
    """Test cases out of ``n``: ``round(test_fraction × n)`` half up, >= 1 from ``at_least_one_from`` cases, < n."""
    if n <= 0 or test_fraction <= 0:
        return 0
    quota = math.floor(test_fraction * n + 0.5)
    if at_least_one_from is not None and n >= at_least_one_from:
        quota = max(quota, 1)
    return min(quota, n - 1) if n >= 2 else 0


def assign_splits(
    tasks_of: Mapping[str, Sequence[str]],
    *,
    seed: int,
    test_fraction: float,
    frozen: Mapping[str, Split] | None = None,
) -> dict[str, Split]:
    """Split of every case of ``tasks_of`` (case id → tasks it holds labels for); see module docstring."""
    splits: dict[str, Split] = {c: s for c, s in (frozen or {}).items() if c in tasks_of}
    new = sorted((c for c in tasks_of if c not in splits), key=lambda c: _rank(seed, c))
    all_tasks = sorted({t for ts in tasks_of.values() for t in ts})
    holders = {t: sum(1 for ts in tasks_of.values() if t in ts) for t in all_tasks}
    quota = {t: quota_of(holders[t], test_fraction) for t in all_tasks}
    in_test = {t: sum(1 for c, s in splits.items() if s == "test" and t in tasks_of[c]) for t in all_tasks}

    def overshoot(case: str) -> int:
        """How many of the case's tasks are already at their quota (putting it in test would exceed them)."""
        return sum(1 for t in tasks_of[case] if in_test[t] >= quota[t])

    def to_test(case: str) -> None:
        splits[case] = "test"
        for t in tasks_of[case]:
            in_test[t] += 1

    for task in sorted(all_tasks, key=lambda t: (holders[t], t)):
        while in_test[task] < quota[task]:
            free = [c for c in new if c not in splits and task in tasks_of[c]]  # in rank order
            if not free:
                break
            to_test(min(free, key=overshoot))  # min keeps the first (lowest rank) of equal overshoot
    total = quota_of(len(tasks_of), test_fraction, at_least_one_from=None)
    n_test = sum(1 for s in splits.values() if s == "test")
    for case in new:
        if n_test >= total:
            break
        if case not in splits and overshoot(case) == 0:
            to_test(case)
            n_test += 1
    for case in new:
        splits.setdefault(case, "train")
    return splits

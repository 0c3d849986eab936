"""The site split: exact per task, at least one test case from three labelled cases, seeded, frozen."""

from __future__ import annotations

import random

import pytest

from cardiofm.pipeline.split import assign_splits, quota_of

TASKS = ("landmarks", "septum", "calcification")


def _site(rng: random.Random, n: int) -> dict[str, list[str]]:
    """``n`` cases with partial labels: each task held by a random share of the cases (some hold none)."""
    share = {t: rng.uniform(0.2, 1.0) for t in TASKS}
    return {f"case-{rng.getrandbits(48):012x}": [t for t in TASKS if rng.random() < share[t]] for _ in range(n)}


def _tests(splits: dict[str, str], cases: list[str]) -> int:
    return sum(1 for c in cases if splits[c] == "test")


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(0, 0.2, 0), (1, 0.2, 0), (2, 0.2, 0), (3, 0.2, 1), (6, 0.2, 1), (8, 0.2, 2), (10, 0.25, 3), (5, 0.9, 4)],
)
def test_quota_rounds_half_up_with_one_from_three_and_never_all(n: int, fraction: float, expected: int) -> None:
    assert quota_of(n, fraction) == expected
    assert quota_of(n, 0.0) == 0


def test_the_demo_site_of_six_cases_gets_a_test_case() -> None:
    # the default demo's site-01 (6 cases) had 0 test cases under the old per-case coin flip
    cases = {f"case-{i:012d}": ["landmarks", "calcification"] if i < 4 else [] for i in range(6)}
    splits = assign_splits(cases, seed=0, test_fraction=0.2)
    assert _tests(splits, list(cases)) == 1
    assert _tests(splits, [c for c, t in cases.items() if "landmarks" in t]) == 1


@pytest.mark.parametrize("seed", range(40))
def test_every_task_gets_its_exact_quota(seed: int) -> None:
    rng = random.Random(seed)
    cases = _site(rng, rng.randint(3, 30))
    fraction = rng.choice([0.1, 0.2, 0.25, 0.34, 0.5])
    splits = assign_splits(cases, seed=seed, test_fraction=fraction)
    assert set(splits) == set(cases)
    for task in TASKS:
        holders = [c for c, ts in cases.items() if task in ts]
        got = _tests(splits, holders)
        quota = quota_of(len(holders), fraction)
        # a case holds several tasks, so one task's quota can cost another one case more, never less
        assert quota <= got <= quota + 1, (task, len(holders), got, quota)
        if len(holders) >= 3:
            assert got >= 1
        if holders:
            assert got < len(holders)  # every task keeps a training case


def test_split_is_seeded() -> None:
    cases = _site(random.Random(7), 40)
    a = assign_splits(cases, seed=1, test_fraction=0.2)
    assert a == assign_splits(dict(reversed(list(cases.items()))), seed=1, test_fraction=0.2)  # order-free
    assert a != assign_splits(cases, seed=2, test_fraction=0.2)


def test_a_case_keeps_its_split_when_others_are_added() -> None:
    rng = random.Random(3)
    first = _site(rng, 10)
    before = assign_splits(first, seed=0, test_fraction=0.2)
    grown = first | _site(rng, 15)
    after = assign_splits(grown, seed=0, test_fraction=0.2, frozen=before)
    assert {c: after[c] for c in first} == before
    for task in TASKS:  # the new cases move the whole towards the quota of the larger site
        holders = [c for c, ts in grown.items() if task in ts]
        assert _tests(after, holders) >= min(1, len(holders) // 3)


def test_no_test_split_with_fraction_zero() -> None:
    cases = _site(random.Random(1), 12)
    assert set(assign_splits(cases, seed=0, test_fraction=0.0).values()) == {"train"}

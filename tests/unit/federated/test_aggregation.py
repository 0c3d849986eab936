"""Per-group weighted mean, server optimisers and metric means, against hand-computed values."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from cardiofm.errors import ConfigError, MalformedUpdateError
from cardiofm.federated.aggregation import (
    GroupSummary,
    GroupWeightedMean,
    MetricMean,
    ServerAdam,
    ServerSGD,
    SiteUpdate,
    apply_means,
)
from cardiofm.models.registry import group_of

BB = "backbone.conv.weight"
INDEX = "backbone.attn.relative_position_index"
LM = "heads.landmarks.conv.weight"
MS = "heads.septum.conv.weight"
CALC = "heads.calcification.conv.weight"
HEART = "heads.heart.conv.weight"
GROUPS = ("backbone", "landmarks", "septum", "calcification", "heart")


def global_model() -> dict[str, np.ndarray]:
    return {
        BB: np.zeros((2, 3), np.float32),
        INDEX: np.arange(9, dtype=np.int64).reshape(3, 3),
        LM: np.zeros((5, 2), np.float32),
        MS: np.zeros((2, 2), np.float32),
        CALC: np.zeros((1, 2), np.float32),
        HEART: np.full((8, 2), 0.5, np.float32),
    }


def site(names: tuple[str, ...], value: float, counts: dict[str, int]) -> SiteUpdate:
    """A site that trained ``names``, every value ``value``; groups not in ``counts`` have count 0."""
    g = global_model()
    tensors = {n: np.full_like(g[n], value) for n in names}
    return SiteUpdate(tensors=tensors, counts={grp: counts.get(grp, 0) for grp in GROUPS})


# the notes' example: A (landmarks, septum; n=100; 1), B (septum, calcification; n=300; 2), C (landmarks; n=50; 3)
SITE_A = site((BB, LM, MS), 1.0, {"backbone": 100, "landmarks": 100, "septum": 100})
SITE_B = site((BB, MS, CALC), 2.0, {"backbone": 300, "septum": 300, "calcification": 300})
SITE_C = site((BB, LM), 3.0, {"backbone": 50, "landmarks": 50})


def aggregate(*updates: SiteUpdate) -> dict[str, np.ndarray]:
    mean = GroupWeightedMean(global_model(), group_of)
    for update in updates:
        mean.add(update)
    return mean.result()


def test_two_sites_each_group_over_its_own_sites() -> None:
    out = aggregate(SITE_A, SITE_B)
    # backbone (100·1 + 300·2) / 400; landmarks only A; septum (100·1 + 300·2) / 400; calcification only B
    np.testing.assert_array_equal(out[BB], np.full((2, 3), 1.75, np.float32))
    np.testing.assert_array_equal(out[LM], np.full((5, 2), 1.0, np.float32))
    np.testing.assert_array_equal(out[MS], np.full((2, 2), 1.75, np.float32))
    np.testing.assert_array_equal(out[CALC], np.full((1, 2), 2.0, np.float32))
    # nobody trained the heart head; the index table is never averaged
    np.testing.assert_array_equal(out[HEART], np.full((8, 2), 0.5, np.float32))
    np.testing.assert_array_equal(out[INDEX], global_model()[INDEX])
    assert {n: a.dtype for n, a in out.items()} == {n: a.dtype for n, a in global_model().items()}


def test_third_site_shifts_backbone_and_its_head_only() -> None:
    out = aggregate(SITE_A, SITE_B, SITE_C)
    # backbone (100 + 600 + 150) / 450 = 17/9; landmarks (100 + 150) / 150 = 5/3
    np.testing.assert_allclose(out[BB], 17 / 9, rtol=1e-7)
    assert round(float(out[BB][0, 0]), 3) == 1.889
    np.testing.assert_allclose(out[LM], 5 / 3, rtol=1e-7)
    assert round(float(out[LM][0, 0]), 3) == 1.667
    np.testing.assert_array_equal(out[MS], np.full((2, 2), 1.75, np.float32))
    np.testing.assert_array_equal(out[CALC], np.full((1, 2), 2.0, np.float32))


def test_order_of_arrival_does_not_matter() -> None:
    forward, backward = aggregate(SITE_A, SITE_B, SITE_C), aggregate(SITE_C, SITE_B, SITE_A)
    for name in forward:
        np.testing.assert_array_equal(forward[name], backward[name])


def test_head_weight_is_its_own_count_not_num_examples() -> None:
    # A trained on 100 cases, 40 of them with landmarks; D trained landmarks on all its 60 cases (value 2)
    a = site((BB, LM), 1.0, {"backbone": 100, "landmarks": 40})
    d = site((BB, LM), 2.0, {"backbone": 60, "landmarks": 60})
    out = aggregate(a, d)
    np.testing.assert_allclose(out[BB], (100 * 1 + 60 * 2) / 160, rtol=1e-7)  # 1.375
    np.testing.assert_allclose(out[LM], (40 * 1 + 60 * 2) / 100, rtol=1e-7)  # 1.6


def test_accumulates_in_float64() -> None:
    # 2**24 + 1 + 1 is not representable on the way in float32; the float64 sum gives the exact mean 5592406
    mean = GroupWeightedMean({BB: np.zeros((1,), np.float32)}, group_of)
    for value in (2.0**24, 1.0, 1.0):
        mean.add(SiteUpdate({BB: np.array([value], np.float32)}, {"backbone": 1}))
    out = mean.result()[BB]
    assert out.dtype == np.float32
    assert out[0] == np.float32(5592406.0)


def test_group_summary_counts_sites_and_examples() -> None:
    mean = GroupWeightedMean(global_model(), group_of)
    for update in (SITE_A, SITE_B, SITE_C):
        mean.add(update)
    assert mean.sites == 3
    assert mean.group_summary() == {
        "backbone": GroupSummary(sites=3, examples=450),
        "calcification": GroupSummary(sites=1, examples=300),
        "landmarks": GroupSummary(sites=2, examples=150),
        "septum": GroupSummary(sites=2, examples=400),
    }
    assert set(mean.means()) == {BB, LM, MS, CALC}  # heart untrained, index never averaged


def test_malformed_update_leaves_the_sums_unchanged() -> None:
    mean = GroupWeightedMean(global_model(), group_of)
    mean.add(SITE_A)
    bad = SiteUpdate(
        tensors={BB: np.full((2, 3), 100.0, np.float32), MS: np.full((3, 3), 100.0, np.float32)},  # bad shape
        counts=SITE_B.counts,
    )
    with pytest.raises(MalformedUpdateError, match=r"heads\.septum\.conv\.weight"):
        mean.add(bad)
    mean.add(SITE_B)
    assert mean.sites == 2
    expected = aggregate(SITE_A, SITE_B)
    for name, array in mean.result().items():
        np.testing.assert_array_equal(array, expected[name])


def test_integer_buffer_equal_to_global_is_accepted_and_kept() -> None:
    update = SiteUpdate({BB: np.ones((2, 3), np.float32), INDEX: global_model()[INDEX]}, SITE_A.counts)
    out = aggregate(update)
    np.testing.assert_array_equal(out[INDEX], global_model()[INDEX])
    np.testing.assert_array_equal(out[BB], np.ones((2, 3), np.float32))


def test_memory_does_not_grow_with_the_number_of_sites() -> None:
    shape = (256, 1024)  # 1 MiB in float32; the float64 sum is 2 MiB
    glob = {BB: np.zeros(shape, np.float32)}

    def peak(n_sites: int) -> int:
        tracemalloc.start()
        try:
            mean = GroupWeightedMean(glob, group_of)
            for k in range(n_sites):
                mean.add(SiteUpdate({BB: np.full(shape, float(k), np.float32)}, {"backbone": k + 1}))
            mean.result()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, many = peak(4), peak(64)
    assert few >= 3 * 2**20  # numpy allocations are traced: the float64 sum alone is 2 MiB
    assert many <= 1.5 * few, (few, many)


def test_fedavg_through_server_sgd_identity() -> None:
    mean = GroupWeightedMean(global_model(), group_of)
    for update in (SITE_A, SITE_B, SITE_C):
        mean.add(update)
    stepped = ServerSGD(lr=1.0, momentum=0.0).step(global_model(), mean.means())
    for name, array in mean.result().items():
        np.testing.assert_array_equal(stepped[name], array)


def test_apply_means_without_means_is_the_global_model() -> None:
    glob = global_model()
    assert all(a is glob[n] for n, a in apply_means(glob, {}).items())


def test_server_sgd_momentum_two_rounds_by_hand() -> None:
    opt = ServerSGD(lr=0.5, momentum=0.9)
    x0 = {BB: np.array([1.0], np.float32)}
    x1 = opt.step(x0, {BB: np.array([2.0])})  # Δ=1, m=1, x = 1 + 0.5
    np.testing.assert_allclose(x1[BB], [1.5])
    x2 = opt.step(x1, {BB: np.array([1.5])})  # Δ=0, m=0.9, x = 1.5 + 0.45
    np.testing.assert_allclose(x2[BB], [1.95], rtol=1e-6)


def fedadam_round(opt: ServerAdam, glob: dict[str, np.ndarray], *updates: SiteUpdate) -> dict[str, np.ndarray]:
    mean = GroupWeightedMean(glob, group_of)
    for update in updates:
        mean.add(update)
    return opt.step(glob, mean.means())


def test_fedadam_first_step_by_hand() -> None:
    glob = global_model()
    glob[BB][:] = 1.0
    opt = ServerAdam(lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    out = fedadam_round(opt, glob, SITE_A, SITE_B)
    # backbone mean 1.75, Δ = 0.75; m = 0.1·0.75 = 0.075; v = 0.01·0.5625 = 0.005625, √v = 0.075
    # lr_1 = 0.1·√(1 − 0.99) / (1 − 0.9) = 0.1; θ = 1 + 0.1·0.075 / (0.075 + 0.001) = 1.098684210526...
    np.testing.assert_allclose(out[BB], 1.0 + 0.1 * 0.075 / 0.076, rtol=1e-6)
    assert math.isclose(float(out[BB][0, 0]), 1.0986842, rel_tol=1e-6)
    # septum head: Δ = 1.75 → θ = 0.1·0.175 / (0.175 + 0.001) = 0.0994318...
    np.testing.assert_allclose(out[MS], 0.1 * 0.175 / 0.176, rtol=1e-6)
    # heart head: nobody trained it, no state, unchanged; the index table is untouched
    assert out[HEART] is glob[HEART]
    assert out[INDEX] is glob[INDEX]
    assert opt.steps(HEART) == 0
    assert opt.steps(BB) == 1
    assert out[BB].dtype == np.float32


def test_fedadam_untrained_head_neither_moves_nor_decays() -> None:
    glob = global_model()
    opt = ServerAdam(lr=0.1)
    reference = ServerAdam(lr=0.1)
    only_bb = site((BB,), 1.0, {"backbone": 10})

    r1 = fedadam_round(opt, glob, SITE_A)  # round 1: landmarks trained
    ref1 = fedadam_round(reference, glob, SITE_A)
    r2 = fedadam_round(opt, r1, only_bb)  # round 2: landmarks not trained
    np.testing.assert_array_equal(r2[LM], r1[LM])  # m ≠ 0, yet the head does not move
    assert opt.steps(LM) == 1
    # round 3 trains landmarks again: its step equals that of an optimiser that never saw round 2
    r3 = fedadam_round(opt, r2, SITE_C)
    ref3 = fedadam_round(reference, ref1, SITE_C)
    np.testing.assert_array_equal(r3[LM], ref3[LM])
    assert opt.steps(LM) == 2


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"tau": 0.0}, {"beta_1": 1.0}, {"beta_2": -0.1}, {"lr": float("nan")}])
def test_fedadam_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="FedAdam"):
        ServerAdam(**kwargs)


def test_metric_mean_weights_each_head_by_its_own_count() -> None:
    mean = MetricMean()
    mean.add(
        {
            "num-examples": 100,
            "n-backbone": 100,
            "n-landmarks": 100,
            "n-septum": 100,
            "n-calcification": 0,
            "train-loss": 0.5,
            "train-loss-landmarks": 0.2,
            "train-loss-septum": 0.4,
            "train-loss-calcification": 0.0,  # not trained: must not enter the mean
        }
    )
    mean.add(
        {
            "num-examples": 300,
            "n-backbone": 300,
            "n-landmarks": 0,
            "n-septum": 300,
            "n-calcification": 300,
            "train-loss": 1.0,
            "train-loss-landmarks": float("nan"),  # not trained
            "train-loss-septum": 0.8,
            "train-loss-calcification": 0.6,
        }
    )
    out = mean.result()
    assert out == pytest.approx(
        {
            "num-examples": 400,
            "n-backbone": 400,
            "n-landmarks": 100,
            "n-septum": 400,
            "n-calcification": 300,
            "train-loss": (100 * 0.5 + 300 * 1.0) / 400,
            "train-loss-landmarks": 0.2,
            "train-loss-septum": (100 * 0.4 + 300 * 0.8) / 400,
            "train-loss-calcification": 0.6,
        }
    )
    assert isinstance(out["num-examples"], int)


def test_metric_mean_drops_a_metric_nobody_can_weigh_and_non_finite_values() -> None:
    mean = MetricMean()
    mean.add({"num-examples": 10, "n-septum": 0, "train-loss-septum": 0.3, "train-loss": float("inf")})
    assert mean.result() == {"num-examples": 10, "n-septum": 0}

"""The partial-label Flower strategy with real Flower messages, delivered through Flower's wire format, no network."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from cardiofm.errors import ConfigError
from cardiofm.federated.strategy import PROXIMAL_MU_KEY, PartialLabelStrategy, build_strategy
from cardiofm.models.config import ModelConfig
from cardiofm.models.registry import build_model, group_of

BB = "backbone.conv.weight"
INDEX = "backbone.attn.relative_position_index"
LM = "heads.landmarks.conv.weight"
MS = "heads.septum.conv.weight"
CALC = "heads.calcification.conv.weight"
HEART = "heads.heart.conv.weight"
HEADS = ("landmarks", "septum", "calcification", "heart")

SiteFn = Callable[[Message], RecordDict]


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the ServerApp process sets before running a strategy (messages take their run id from it)."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 42)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


def global_record(backbone: float = 0.0) -> ArrayRecord:
    arrays: dict[str, np.ndarray] = {
        BB: np.full((2, 3), backbone, np.float32),
        INDEX: np.arange(9, dtype=np.int64).reshape(3, 3),
        LM: np.zeros((5, 2), np.float32),
        MS: np.zeros((2, 2), np.float32),
        CALC: np.zeros((1, 2), np.float32),
        HEART: np.full((8, 2), 0.5, np.float32),
    }
    return ArrayRecord({name: Array(a) for name, a in arrays.items()})


def wire(message: Message) -> Message:
    """Deflate a message into Flower's content-addressed objects and inflate it, as the SuperLink grid does."""
    contents = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}
    inflated = inflate_object_from_contents(message.object_id, contents)
    assert isinstance(inflated, Message)
    return inflated


def metrics_for(num_examples: int, counts: dict[str, int], loss: float, heads: tuple[str, ...] = HEADS) -> MetricRecord:
    """The reply contract: num-examples, n-<head> for every head, train-loss and train-loss-<head>."""
    values: dict[str, MetricRecordValues] = {"num-examples": num_examples, "train-loss": loss}
    for head in heads:
        values[f"n-{head}"] = counts.get(head, 0)
        values[f"train-loss-{head}"] = loss / 2 if counts.get(head, 0) else 0.0
    return MetricRecord(values)


def site(
    names: tuple[str, ...],
    step: float,
    num_examples: int,
    counts: dict[str, int],
    loss: float = 1.0,
    heads: tuple[str, ...] = HEADS,
) -> SiteFn:
    """A site that returns the global value + ``step`` for the float tensors it trained (int buffers as received)."""

    def shifted(array: np.ndarray) -> np.ndarray:
        return array + np.float32(step) if array.dtype.kind == "f" else array

    def reply(instruction: Message) -> RecordDict:
        received = instruction.content["arrays"]
        assert isinstance(received, ArrayRecord)
        trained = {n: Array(shifted(received[n].numpy())) for n in names}
        return RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics_for(num_examples, counts, loss, heads)})

    return reply


SITE_A = site((BB, LM, MS), 1.0, 100, {"landmarks": 100, "septum": 100}, loss=0.5)
SITE_B = site((BB, MS, CALC), 2.0, 300, {"septum": 300, "calcification": 300}, loss=1.0)
SITE_C = site((BB, LM), 3.0, 50, {"landmarks": 50}, loss=2.0)


class InProcessGrid(Grid):
    """Nodes are functions from the instruction to the reply content; every message crosses the wire format."""

    def __init__(self, sites: dict[int, SiteFn], evaluate: dict[int, SiteFn] | None = None) -> None:
        self.sites = sites
        self.evaluate = evaluate or {}
        self.sent: list[Message] = []

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.sites)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            instruction = wire(message)
            node = instruction.metadata.dst_node_id
            handler = self.sites if instruction.metadata.message_type == MessageType.TRAIN else self.evaluate
            replies.append(wire(Message(handler[node](instruction), reply_to=instruction)))
        return replies


def round_replies(
    strategy: PartialLabelStrategy, sites: list[SiteFn], arrays: ArrayRecord | None = None
) -> list[Message]:
    """configure_train on a grid of ``sites`` (node ids 1..n), then each node's reply as the ServerApp receives it."""
    by_node = dict(enumerate(sites, start=1))
    grid = InProcessGrid(by_node)
    messages = list(strategy.configure_train(1, arrays or global_record(), ConfigRecord(), grid))
    return [wire(Message(by_node[m.metadata.dst_node_id](wire(m)), reply_to=m)) for m in messages]


def values(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    assert record is not None
    return {name: array.numpy() for name, array in record.items()}


def test_configure_train_sends_global_model_and_proximal_mu() -> None:
    strategy = build_strategy("fedprox", min_nodes=2, proximal_mu=0.01)
    grid = InProcessGrid({1: SITE_A, 2: SITE_B})
    messages = list(strategy.configure_train(3, global_record(), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2]
    config = messages[0].content["config"]
    assert isinstance(config, ConfigRecord)
    assert config[PROXIMAL_MU_KEY] == pytest.approx(0.01)
    assert config["server-round"] == 3
    assert set(messages[0].content["arrays"].keys()) == set(global_record().keys())


def test_fedavg_sends_zero_proximal_mu() -> None:
    messages = list(
        build_strategy("fedavg", min_nodes=1).configure_train(
            1, global_record(), ConfigRecord(), InProcessGrid({1: SITE_A})
        )
    )
    assert messages[0].content["config"][PROXIMAL_MU_KEY] == 0.0


def test_three_partial_sites_by_hand() -> None:
    strategy = build_strategy("fedavg", min_nodes=3)
    arrays, metrics = strategy.aggregate_train(1, round_replies(strategy, [SITE_A, SITE_B, SITE_C]))
    out = values(arrays)
    np.testing.assert_allclose(out[BB], 17 / 9, rtol=1e-7)  # (100·1 + 300·2 + 50·3) / 450 = 1.889
    np.testing.assert_allclose(out[LM], 5 / 3, rtol=1e-7)  # (100·1 + 50·3) / 150 = 1.667
    np.testing.assert_array_equal(out[MS], np.full((2, 2), 1.75, np.float32))  # (100·1 + 300·2) / 400
    np.testing.assert_array_equal(out[CALC], np.full((1, 2), 2.0, np.float32))
    np.testing.assert_array_equal(out[HEART], np.full((8, 2), 0.5, np.float32))  # nobody trained it
    np.testing.assert_array_equal(out[INDEX], np.arange(9).reshape(3, 3))
    assert list(out) == list(global_record().keys())
    assert {n: a.dtype for n, a in out.items()} == {n: a.numpy().dtype for n, a in global_record().items()}
    assert metrics is not None
    assert dict(metrics) == pytest.approx(
        {
            "num-examples": 450,
            "n-landmarks": 150,
            "n-septum": 400,
            "n-calcification": 300,
            "n-heart": 0,
            "train-loss": (100 * 0.5 + 300 * 1.0 + 50 * 2.0) / 450,
            "train-loss-landmarks": (100 * 0.25 + 50 * 1.0) / 150,
            "train-loss-septum": (100 * 0.25 + 300 * 0.5) / 400,
            "train-loss-calcification": 0.5,
        }
    )


def test_flowers_own_fedavg_rejects_partial_replies() -> None:
    """Why aggregate_train is overridden: Flower's consistency check refuses replies with different keys."""
    strategy = build_strategy("fedavg", min_nodes=2)
    replies = round_replies(strategy, [SITE_A, SITE_B])
    with pytest.raises(InconsistentMessageReplies):
        FedAvg(min_train_nodes=2, min_available_nodes=2).aggregate_train(1, replies)


def _bad(arrays: dict[str, Array], metrics: MetricRecord | None = None) -> SiteFn:
    def reply(_: Message) -> RecordDict:
        return RecordDict(
            {"arrays": ArrayRecord(arrays), "metrics": metrics or metrics_for(1000, {"septum": 1000}, 9.0)}
        )

    return reply


LYING_HEADER = Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=Array(np.full((2, 2), 9.0)).data)
MALFORMED = {
    "wrong shape": (_bad({MS: Array(np.full((3, 2), 9.0, np.float32))}), "has shape (3, 2)"),
    "float64 instead of float32": (_bad({MS: Array(np.full((2, 2), 9.0))}), "has dtype float64"),
    "float64 behind a float32 header": (_bad({MS: LYING_HEADER}), "has dtype float64"),
    "NaN": (_bad({MS: Array(np.array([[9, np.nan], [9, 9]], np.float32))}), "non-finite"),
    "unknown name": (_bad({"heads.aorta.conv.weight": Array(np.ones((2, 2), np.float32))}), "not in the global model"),
    "head with count 0": (_bad({CALC: Array(np.ones((1, 2), np.float32))}), "group 'calcification' has count 0"),
    "count missing": (_bad({MS: Array(np.ones((2, 2), np.float32))}, MetricRecord({"num-examples": 5})), "missing"),
    "no tensors": (_bad({}), "no tensors"),
    "changed index table": (_bad({INDEX: Array(np.zeros((3, 3), np.int64))}), "must equal the global"),
    "undecodable payload": (
        _bad({MS: Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=b"\x00" * 16)}),
        "cannot be decoded",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_reply_is_left_out_and_logged(case: str, caplog: pytest.LogCaptureFixture) -> None:
    bad, message = MALFORMED[case]
    strategy = build_strategy("fedavg", min_nodes=2)
    expected_arrays, expected_metrics = strategy.aggregate_train(1, round_replies(strategy, [SITE_A, SITE_B]))
    strategy = build_strategy("fedavg", min_nodes=3)
    with caplog.at_level(logging.WARNING, logger="cardiofm.federated.strategy"):
        arrays, metrics = strategy.aggregate_train(1, round_replies(strategy, [SITE_A, SITE_B, bad]))
    for name, array in values(expected_arrays).items():
        np.testing.assert_array_equal(values(arrays)[name], array)
    assert metrics is not None
    assert expected_metrics is not None
    assert dict(metrics) == dict(expected_metrics)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "update of node 3 left out" in warnings[0]
    assert message in warnings[0]
    assert "9.0" not in warnings[0]  # names and shapes only, no values


def test_error_reply_is_counted_and_round_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    strategy = build_strategy("fedavg", min_nodes=2)
    replies = round_replies(strategy, [SITE_A, SITE_B])
    instruction = Message(RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN)
    failed = wire(Message(Error(code=7, reason="/data/patient-123 unreadable"), reply_to=instruction))
    with caplog.at_level(logging.INFO, logger="cardiofm.federated.strategy"):
        arrays, _ = strategy.aggregate_train(1, [*replies, failed])
    np.testing.assert_array_equal(values(arrays)[MS], np.full((2, 2), 1.75, np.float32))
    text = caplog.text
    assert "node 3 replied with error code 7" in text
    assert "patient-123" not in text  # a site's error text is not copied into the coordinator's log
    assert "2 update(s) aggregated, 0 rejected, 1 failed, 0 without labels" in text


def test_a_site_without_labels_sits_the_round_out_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    strategy = build_strategy("fedavg", min_nodes=2)
    expected, _ = strategy.aggregate_train(1, round_replies(strategy, [SITE_A, SITE_B]))
    strategy = build_strategy("fedavg", min_nodes=3)
    with caplog.at_level(logging.INFO, logger="cardiofm.federated.strategy"):
        arrays, metrics = strategy.aggregate_train(
            1, round_replies(strategy, [SITE_A, SITE_B, _bad({}, metrics_for(0, {}, 0.0))])
        )
    for name, array in values(expected).items():
        np.testing.assert_array_equal(values(arrays)[name], array)
    assert metrics is not None
    assert metrics["num-examples"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "2 update(s) aggregated, 0 rejected, 0 failed, 1 without labels" in caplog.text


def test_second_reply_of_a_node_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    strategy = build_strategy("fedavg", min_nodes=2)
    replies = round_replies(strategy, [SITE_A, SITE_B])
    with caplog.at_level(logging.WARNING, logger="cardiofm.federated.strategy"):
        arrays, metrics = strategy.aggregate_train(1, [*replies, replies[1]])
    np.testing.assert_array_equal(values(arrays)[BB], np.full((2, 3), 1.75, np.float32))
    assert metrics is not None
    assert metrics["num-examples"] == 400
    assert f"another reply of node {replies[1].metadata.src_node_id} left out" in caplog.text


def test_round_log_has_participants_groups_losses_and_duration(caplog: pytest.LogCaptureFixture) -> None:
    strategy = build_strategy("fedavg", min_nodes=3)
    with caplog.at_level(logging.INFO, logger="cardiofm.federated.strategy"):
        strategy.aggregate_train(4, round_replies(strategy, [SITE_A, SITE_B, SITE_C]))
    text = caplog.text
    assert "round 4: 3 update(s) aggregated, 0 rejected, 0 failed, 0 without labels; aggregation" in text
    assert "round 4: group septum: 2 site(s), 400 example(s)" in text
    assert "round 4: group backbone: 3 site(s), 450 example(s)" in text
    assert "round 4: no site trained heart; kept unchanged" in text
    assert "train-loss-septum=0.4375" in text


def test_no_usable_reply_keeps_the_global_model(caplog: pytest.LogCaptureFixture) -> None:
    strategy = build_strategy("fedavg", min_nodes=1)
    with caplog.at_level(logging.WARNING, logger="cardiofm.federated.strategy"):
        result = strategy.aggregate_train(1, round_replies(strategy, [MALFORMED["NaN"][0]]))
    assert result == (None, None)
    assert "no usable update (1 rejected, 0 failed, 0 without labels)" in caplog.text


def test_aggregate_before_configure_is_an_error() -> None:
    with pytest.raises(AggregationError, match="configure_train"):
        build_strategy("fedavg", min_nodes=1).aggregate_train(1, [])


def test_fedadam_one_step_by_hand() -> None:
    strategy = build_strategy("fedadam", min_nodes=2, server_lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    sent = global_record(backbone=1.0)
    arrays, _ = strategy.aggregate_train(1, round_replies(strategy, [SITE_A, SITE_B], sent))
    out = values(arrays)
    # sites send global + 1 (A, n=100) and + 2 (B, n=300): backbone mean 2.75, Δ = 1.75
    # m = 0.1·1.75 = 0.175; v = 0.01·1.75² → √v = 0.175; lr_1 = 0.1·√(1 − 0.99)/(1 − 0.9) = 0.1
    # θ = 1 + 0.1·0.175/(0.175 + 0.001) = 1.0994318...
    np.testing.assert_allclose(out[BB], 1.0 + 0.1 * 0.175 / 0.176, rtol=1e-6)
    np.testing.assert_allclose(out[CALC], 0.1 * 0.2 / 0.201, rtol=1e-6)  # Δ = 2: m = 0.2, √v = 0.2
    assert arrays is not None
    assert arrays[HEART].data is sent[HEART].data  # untrained head: the very bytes that were sent
    np.testing.assert_array_equal(out[INDEX], np.arange(9).reshape(3, 3))


def test_three_rounds_through_start_do_not_dilute_heads() -> None:
    """The regression of notes §11 (a head at 0.578 instead of 1.0 after 3 rounds), through Strategy.start."""
    evaluate = {
        1: lambda _: RecordDict({"metrics": MetricRecord({"num-examples": 10, "n-septum": 10, "loss-septum": 0.2})}),
        2: lambda _: RecordDict({"metrics": MetricRecord({"num-examples": 30, "n-septum": 0, "loss-septum": 0.0})}),
    }
    grid = InProcessGrid({1: SITE_A, 2: SITE_B}, evaluate)
    strategy = build_strategy("fedavg", min_nodes=2)
    result = strategy.start(grid, global_record(), num_rounds=3)
    out = values(result.arrays)
    np.testing.assert_allclose(out[LM], 3.0)  # only A trains landmarks: +1 per round
    np.testing.assert_allclose(out[CALC], 6.0)  # only B: +2 per round
    np.testing.assert_allclose(out[MS], 3 * 1.75)
    np.testing.assert_allclose(out[BB], 3 * 1.75)
    np.testing.assert_array_equal(out[HEART], np.full((8, 2), 0.5, np.float32))
    assert len(grid.sent) == 12  # 3 rounds x (2 train + 2 evaluate)
    assert result.evaluate_metrics_clientapp[3]["loss-septum"] == pytest.approx(0.2)  # weighted by n-septum
    assert result.train_metrics_clientapp[3]["n-septum"] == 400


def test_real_student_state_dict_round_trips() -> None:
    """State-dict names, float and int64 buffers of a real (tiny) student, back into the model."""
    model = build_model(ModelConfig.student(feature_size=12, depths=(1, 1, 1, 1)))
    sent = ArrayRecord(model.state_dict())
    names = list(sent.keys())
    floats = [n for n in names if sent[n].dtype == "float32"]
    index_tables = [n for n in names if sent[n].dtype == "int64"]
    assert index_tables  # SwinUNETR's relative_position_index buffers
    backbone = tuple(n for n in floats if group_of(n) == "backbone") + tuple(index_tables)
    heads = tuple(model.tasks)
    site_a = site(
        backbone + tuple(n for n in floats if group_of(n) == "landmarks"), 1.0, 100, {"landmarks": 100}, 1.0, heads
    )
    site_b = site(backbone + tuple(n for n in floats if group_of(n) == "septum"), 2.0, 300, {"septum": 300}, 1.0, heads)

    strategy = build_strategy("fedavg", min_nodes=2)
    arrays, _ = strategy.aggregate_train(1, round_replies(strategy, [site_a, site_b], sent))
    assert arrays is not None
    new = arrays.to_torch_state_dict()
    model.load_state_dict(new, strict=True)
    before = sent.to_torch_state_dict()
    for name in names:
        group = group_of(name)
        if name in index_tables or group == "calcification":
            assert torch.equal(new[name], before[name]), name
        elif group == "backbone":
            torch.testing.assert_close(new[name], before[name] + 1.75)
        elif group == "landmarks":
            torch.testing.assert_close(new[name], before[name] + 1.0)
        else:
            torch.testing.assert_close(new[name], before[name] + 2.0)


def test_evaluate_metrics_weight_each_head_by_its_count() -> None:
    strategy = build_strategy("fedavg", min_nodes=2)
    grid = InProcessGrid(
        {1: SITE_A, 2: SITE_B},
        {
            1: lambda _: RecordDict({"m": MetricRecord({"num-examples": 10, "n-septum": 4, "loss-septum": 0.5})}),
            2: lambda _: RecordDict({"m": MetricRecord({"num-examples": 30, "n-septum": 12, "loss-septum": 1.0})}),
        },
    )
    replies = grid.send_and_receive(strategy.configure_evaluate(1, global_record(), ConfigRecord(), grid))
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics is not None
    assert dict(metrics) == pytest.approx({"num-examples": 40, "n-septum": 16, "loss-septum": (4 * 0.5 + 12) / 16})


def test_factory_sets_every_minimum_explicitly() -> None:
    strategy = build_strategy("fedavg", min_nodes=1)
    assert (strategy.min_available_nodes, strategy.min_train_nodes, strategy.min_evaluate_nodes) == (1, 1, 1)
    assert strategy.server_optimizer is None
    adam = build_strategy("fedadam", min_nodes=4, min_evaluate_nodes=2)
    assert (adam.min_available_nodes, adam.min_train_nodes, adam.min_evaluate_nodes) == (4, 4, 2)
    assert adam.server_optimizer is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "fedadm", "min_nodes": 2}, "did you mean 'fedadam'"),
        ({"kind": "fedavg", "min_nodes": 0}, "min_nodes must be an integer ≥ 1"),
        ({"kind": "fedprox", "min_nodes": 2}, "fedprox needs proximal_mu > 0"),
        ({"kind": "fedavg", "min_nodes": 2, "proximal_mu": 0.1}, "only used by kind='fedprox'"),
        ({"kind": "fedprox", "min_nodes": 2, "proximal_mu": -1.0}, "finite and ≥ 0"),
        ({"kind": "fedadam", "min_nodes": 2, "server_lr": 0.0}, "FedAdam needs lr > 0"),
        ({"kind": "fedavg", "min_nodes": 2, "fraction_train": 0.0}, "fraction_train must lie in"),
    ],
)
def test_factory_rejects_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_strategy(**kwargs)  # type: ignore[arg-type]

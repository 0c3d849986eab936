"""Flower 1.42 Message-API strategy for partially labelled sites: per-group FedAvg, FedProx and FedAdam.

Flower's own strategies cannot be used as they are: their reply-consistency check rejects replies whose array
keys differ (a site without septum labels does not send the septum head), and sending every tensor instead
dilutes a head with the untouched copies of sites that cannot train it. :class:`PartialLabelStrategy` keeps
Flower's FedAvg for sampling, messaging and evaluation, and replaces ``aggregate_train``:

1. ``configure_train`` remembers the global ArrayRecord it sends (and sends ``proximal-mu``, 0 unless FedProx);
2. every reply is read and validated on its own (:mod:`cardiofm.federated.validation`); a malformed one is
   logged without any site data and left out, the round goes on with the others;
3. accepted tensors go into a running per-group weighted sum (:class:`~cardiofm.federated.aggregation.
   GroupWeightedMean`), so a head is averaged only over the sites that trained it;
4. FedAdam applies its server step to the per-group means (:class:`~cardiofm.federated.aggregation.ServerAdam`).

FedAdam is composed (``server_optimizer``), not inherited from Flower's ``FedAdam``: that class keeps moments
for every tensor and takes a step on all of them each round, so the moments of a head nobody trained this
round would keep moving it, and it corrects the bias by server round rather than per tensor.

Reply contract: see :mod:`cardiofm.federated.validation`.
"""

from __future__ import annotations

import difflib
import logging
import math
import time
from collections.abc import Iterable
from typing import Literal, get_args

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg

from cardiofm.errors import ConfigError, MalformedUpdateError
from cardiofm.federated.aggregation import (
    GroupFn,
    GroupWeightedMean,
    MetricMean,
    NDArray,
    ServerAdam,
    ServerOptimizer,
    SiteUpdate,
    apply_means,
)
from cardiofm.federated.validation import NUM_EXAMPLES_KEY, check_tensor_header, counts_from_metrics
from cardiofm.models.registry import BACKBONE, group_of

logger = logging.getLogger(__name__)

StrategyKind = Literal["fedavg", "fedprox", "fedadam"]
#: Train-config key of the FedProx proximal weight (same key as Flower's FedProx).
PROXIMAL_MU_KEY = "proximal-mu"


class PartialLabelStrategy(FedAvg):
    """FedAvg whose tensors are averaged per parameter group over only the sites that trained them.

    Parameters
    ----------
    min_nodes
        Sites that must be connected before a round starts, and sampled for training.
    min_evaluate_nodes
        Sites sampled for evaluation (default: ``min_nodes``).
    fraction_train, fraction_evaluate
        Fraction of connected sites sampled per round (at least the minimum).
    proximal_mu
        Sent to the sites as ``proximal-mu`` (FedProx when > 0); the client adds the proximal term.
    server_optimizer
        Server step on the per-group means (e.g. :class:`ServerAdam`); None = FedAvg.
    group_fn, backbone
        State-dict name → group, and the backbone's group name (defaults: the model registry's).
    """

    def __init__(
        self,
        *,
        min_nodes: int,
        min_evaluate_nodes: int | None = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        proximal_mu: float = 0.0,
        server_optimizer: ServerOptimizer | None = None,
        group_fn: GroupFn = group_of,
        backbone: str = BACKBONE,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes if min_evaluate_nodes is None else min_evaluate_nodes,
            min_available_nodes=min_nodes,
            weighted_by_key=NUM_EXAMPLES_KEY,
            train_metrics_aggr_fn=aggregate_group_metrics,
            evaluate_metrics_aggr_fn=aggregate_group_metrics,
        )
        self.proximal_mu = proximal_mu
        self.server_optimizer = server_optimizer
        self._group_fn = group_fn
        self._backbone = backbone
        self._global_record: ArrayRecord | None = None
        self._global: dict[str, NDArray] = {}
        self._groups: dict[str, str] = {}
        self._round_started = time.monotonic()

    def summary(self) -> None:
        """Log the aggregation settings, then Flower's FedAvg summary."""
        optimizer = type(self.server_optimizer).__name__ if self.server_optimizer else "none (FedAvg)"
        logger.info(
            "partial-label aggregation per parameter group; proximal-mu=%g; server optimiser: %s",
            self.proximal_mu,
            optimizer,
        )
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model sent this round, add ``proximal-mu``, and sample sites as FedAvg does."""
        self._global_record = arrays
        self._global = {name: array.numpy() for name, array in arrays.items()}
        self._groups = {name: self._group_fn(name) for name in self._global}
        self._round_started = time.monotonic()
        config[PROXIMAL_MU_KEY] = float(self.proximal_mu)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate each reply, average each group over the sites that trained it, apply the server step.

        Returns ``(None, None)`` when no reply is usable: Flower then keeps the previous global model.

        Raises
        ------
        AggregationError
            If ``configure_train`` has not been called (no global model to compare with).
        """
        sent = self._global_record
        if sent is None:
            raise AggregationError(reason="aggregate_train called before configure_train: no global model known")
        started = time.monotonic()
        mean = GroupWeightedMean(self._global, self._groups.__getitem__)
        metric_mean = MetricMean()
        rejected = failed = abstained = 0
        seen: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if node in seen:
                rejected += 1
                logger.warning("round %d: another reply of node %d left out (one update per site)", server_round, node)
                continue
            seen.add(node)
            if reply.has_error():
                failed += 1
                logger.warning(
                    "round %d: node %d replied with error code %d (details in the site's log)",
                    server_round,
                    node,
                    reply.error.code,
                )
                continue
            try:
                update, metrics = self._read_reply(reply.content)
                if not update.tensors and not any(update.counts.values()):
                    abstained += 1  # no labels for this stage's tasks: the site sits the round out
                    logger.info("round %d: node %d holds no labels for this stage and sat it out", server_round, node)
                    continue
                mean.add(update)
            except MalformedUpdateError as err:
                rejected += 1
                logger.warning("round %d: update of node %d left out: %s", server_round, node, err)
                continue
            metric_mean.add(metrics)
            del update, metrics  # keep only the running sums
        if mean.sites == 0:
            logger.warning(
                "round %d: no usable update (%d rejected, %d failed, %d without labels); the global model is unchanged",
                server_round,
                rejected,
                failed,
                abstained,
            )
            return None, None
        arrays = self._new_global(mean, sent)
        metric_values: dict[str, MetricRecordValues] = dict(metric_mean.result())
        self._log_round(server_round, mean, metric_values, (rejected, failed, abstained), started)
        return arrays, MetricRecord(metric_values)

    def _read_reply(self, content: RecordDict) -> tuple[SiteUpdate, MetricRecord]:
        """Counts and decoded tensors of one reply; cheap header checks come before any decoding."""
        n_arrays, n_metrics = len(content.array_records), len(content.metric_records)
        if n_arrays != 1 or n_metrics != 1:
            raise MalformedUpdateError(
                f"update rejected: expected one ArrayRecord and one MetricRecord, got {n_arrays} and {n_metrics}"
            )
        record = next(iter(content.array_records.values()))
        metrics = next(iter(content.metric_records.values()))
        counts = counts_from_metrics(metrics, set(self._groups.values()), backbone=self._backbone)
        tensors: dict[str, NDArray] = {}
        for name, array in record.items():
            check_tensor_header(name, tuple(array.shape), array.dtype, self._global)
            tensors[name] = _decode(name, array)
        return SiteUpdate(tensors=tensors, counts=counts), metrics

    def _new_global(self, mean: GroupWeightedMean, sent: ArrayRecord) -> ArrayRecord:
        """ArrayRecord of the new global model; tensors nobody trained reuse the Array ``sent`` this round."""
        means = mean.means()
        if self.server_optimizer is None:
            new = apply_means(self._global, means)
        else:
            new = self.server_optimizer.step(self._global, means)
        return ArrayRecord(
            {name: Array(np.ascontiguousarray(new[name])) if name in means else sent[name] for name in self._global}
        )

    def _log_round(
        self,
        server_round: int,
        mean: GroupWeightedMean,
        metrics: dict[str, MetricRecordValues],
        rejected_failed_abstained: tuple[int, int, int],
        started: float,
    ) -> None:
        """Participants, per-group counts, mean losses and durations; never site data."""
        now = time.monotonic()
        logger.info(
            "round %d: %d update(s) aggregated, %d rejected, %d failed, %d without labels; "
            "aggregation %.2f s, round %.1f s",
            server_round,
            mean.sites,
            *rejected_failed_abstained,
            now - started,
            now - self._round_started,
        )
        summary = mean.group_summary()
        for group, info in summary.items():
            logger.info("round %d: group %s: %d site(s), %d example(s)", server_round, group, info.sites, info.examples)
        untrained = sorted(set(self._groups.values()) - set(summary))
        if untrained:
            logger.info("round %d: no site trained %s; kept unchanged", server_round, ", ".join(untrained))
        losses = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if "loss" in k and isinstance(v, float))
        if losses:
            logger.info("round %d: mean losses: %s", server_round, losses)


def _decode(name: str, array: Array) -> NDArray:
    """The array's values; a payload that is not a plain NumPy array is a malformed update."""
    try:
        value = array.numpy()
    except (TypeError, ValueError, OSError, EOFError) as err:
        raise MalformedUpdateError(
            f"update rejected: tensor {name!r} cannot be decoded ({type(err).__name__})"
        ) from err
    if not isinstance(value, np.ndarray):
        raise MalformedUpdateError(f"update rejected: tensor {name!r} is not a plain array payload")
    return value


def aggregate_group_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Flower ``*_metrics_aggr_fn``: each ``<metric>-<group>`` weighted by ``n-<group>``, others by the weight key.

    Counts (``num-examples``, ``n-<group>``) are summed. See :class:`~cardiofm.federated.aggregation.MetricMean`.
    """
    mean = MetricMean(weighted_by_key)
    for record in records:
        for metrics in record.metric_records.values():
            mean.add(metrics)
    values: dict[str, MetricRecordValues] = dict(mean.result())
    return MetricRecord(values)


def build_strategy(
    kind: StrategyKind,
    *,
    min_nodes: int,
    proximal_mu: float = 0.0,
    server_lr: float = 1e-2,
    beta_1: float = 0.9,
    beta_2: float = 0.99,
    tau: float = 1e-3,
    fraction_train: float = 1.0,
    fraction_evaluate: float = 1.0,
    min_evaluate_nodes: int | None = None,
) -> PartialLabelStrategy:
    """The partial-label strategy for one federated stage.

    Parameters
    ----------
    kind
        ``fedavg``; ``fedprox`` (FedAvg on the server, sites add ``proximal_mu/2·‖w − w_global‖²``);
        ``fedadam`` (server Adam on the per-group means).
    min_nodes
        Sites that must be connected before a round starts and are sampled for training (no hidden default:
        Flower's 2 would hang a one-site run).
    proximal_mu
        FedProx weight; must be > 0 for ``fedprox`` and 0 otherwise.
    server_lr, beta_1, beta_2, tau
        FedAdam's server learning rate, moment decays and adaptivity (used by ``fedadam`` only).
    fraction_train, fraction_evaluate, min_evaluate_nodes
        Sampling; ``fraction_evaluate=0`` skips federated evaluation; ``min_evaluate_nodes`` defaults to
        ``min_nodes``.

    Raises
    ------
    ConfigError
        For an unknown kind or an invalid setting.
    """
    kinds = get_args(StrategyKind)
    if kind not in kinds:
        close = difflib.get_close_matches(str(kind), kinds, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown strategy {kind!r}{hint}; known: {list(kinds)}")
    for label, value in (("min_nodes", min_nodes), ("min_evaluate_nodes", min_evaluate_nodes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{label} must be an integer ≥ 1, got {value!r}")
    if not 0 < fraction_train <= 1 or not 0 <= fraction_evaluate <= 1:
        raise ConfigError(
            f"fraction_train must lie in (0, 1] and fraction_evaluate in [0, 1]; got {fraction_train}, "
            f"{fraction_evaluate}"
        )
    if not math.isfinite(proximal_mu) or proximal_mu < 0:
        raise ConfigError(f"proximal_mu must be finite and ≥ 0, got {proximal_mu}")
    if kind == "fedprox" and proximal_mu == 0:
        raise ConfigError("fedprox needs proximal_mu > 0 (with 0 it is fedavg; choose kind='fedavg')")
    if kind != "fedprox" and proximal_mu != 0:
        raise ConfigError(f"proximal_mu={proximal_mu} is only used by kind='fedprox' (got kind={kind!r})")
    optimizer = ServerAdam(lr=server_lr, beta_1=beta_1, beta_2=beta_2, tau=tau) if kind == "fedadam" else None
    logger.info(
        "strategy %s: min_nodes=%d, fraction_train=%g, fraction_evaluate=%g, proximal_mu=%g%s",
        kind,
        min_nodes,
        fraction_train,
        fraction_evaluate,
        proximal_mu,
        f", server_lr={server_lr:g}, beta_1={beta_1:g}, beta_2={beta_2:g}, tau={tau:g}" if optimizer else "",
    )
    return PartialLabelStrategy(
        min_nodes=min_nodes,
        min_evaluate_nodes=min_evaluate_nodes,
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        proximal_mu=proximal_mu,
        server_optimizer=optimizer,
    )

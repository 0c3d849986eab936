"""Per-parameter-group aggregation for partially labelled sites (plain numpy, no Flower).

Every tensor belongs to one group: the backbone or one task head (``cardiofm.models.registry.group_of``). A site
sends only the tensors it trained plus a count per group (0 = not trained), and a tensor's new value is the mean
over only the sites that trained it, weighted by each site's count for the tensor's group:

    θ_new[name] = Σ_k w_k · θ_k[name] / Σ_k w_k,    w_k = counts_k[group(name)]

A tensor no site trained keeps its global value, so a head is never diluted by sites without its labels.
Integer and boolean tensors (index tables, counters) are never averaged; validation makes sure that a site that
sends one sends the global value.

:class:`GroupWeightedMean` keeps only running sums (Σ w·θ in float64 and Σ w per tensor), so its memory does not
grow with the number of sites. The server optimisers (:class:`ServerAdam`, :class:`ServerSGD`: FedOpt, Reddi et
al. 2021) treat Δ = mean − global as a pseudo-gradient per tensor and keep state only for tensors that were
updated: an untrained head neither moves nor has its moments decayed. FedProx is FedAvg on the server (the
client adds the proximal term), i.e. :func:`apply_means`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cardiofm.errors import ConfigError
from cardiofm.federated.validation import COUNT_PREFIX, NUM_EXAMPLES_KEY, is_floating, validate_update

logger = logging.getLogger(__name__)

#: Maps a state-dict name to its aggregation group (``backbone`` or a task).
GroupFn = Callable[[str], str]
NDArray = npt.NDArray[Any]
Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SiteUpdate:
    """One site's training result.

    Attributes
    ----------
    tensors
        State-dict name → array, only the tensors the site trained.
    counts
        Group → examples the site trained that group on (0 = not trained), for every group of the model.
    """

    tensors: Mapping[str, NDArray]
    counts: Mapping[str, int]


@dataclass(frozen=True)
class GroupSummary:
    """Who contributed to one group this round: number of sites and the sum of their counts."""

    sites: int
    examples: int


class GroupWeightedMean:
    """Running per-tensor weighted mean over the sites that trained each tensor.

    Call :meth:`add` once per site as updates arrive (each is validated first and left out entirely if
    malformed), then :meth:`means` or :meth:`result`.

    Parameters
    ----------
    global_arrays
        Name → array of the global model sent this round; not modified.
    group_fn
        Maps each name to its group (e.g. ``cardiofm.models.registry.group_of``).
    """

    def __init__(self, global_arrays: Mapping[str, NDArray], group_fn: GroupFn) -> None:
        self._global = global_arrays
        self._groups = {name: group_fn(name) for name in global_arrays}
        self._sums: dict[str, Float64Array] = {}
        self._weights: dict[str, int] = {}
        self._group_sites: dict[str, int] = {}
        self._group_examples: dict[str, int] = {}
        self._sites = 0

    @property
    def groups(self) -> Mapping[str, str]:
        """Name → group for every tensor of the global model."""
        return self._groups

    @property
    def sites(self) -> int:
        """Number of updates accepted so far."""
        return self._sites

    def add(self, update: SiteUpdate) -> None:
        """Validate one site's update and add it to the running sums.

        Raises
        ------
        MalformedUpdateError
            If the update does not fit the global model (see
            :func:`~cardiofm.federated.validation.validate_update`); the sums are then unchanged.
        """
        validate_update(update.tensors, update.counts, self._global, self._groups)
        trained_groups: set[str] = set()
        for name, array in update.tensors.items():
            group = self._groups[name]
            trained_groups.add(group)
            if not is_floating(array.dtype):
                continue  # validated equal to the global value; never averaged
            weight = update.counts[group]
            contribution: Float64Array = np.multiply(array, weight, dtype=np.float64)  # float64 for any input
            total = self._sums.get(name)
            if total is None:
                self._sums[name] = contribution
            else:
                total += contribution
            self._weights[name] = self._weights.get(name, 0) + weight
        for group in trained_groups:
            self._group_sites[group] = self._group_sites.get(group, 0) + 1
            self._group_examples[group] = self._group_examples.get(group, 0) + update.counts[group]
        self._sites += 1

    def group_summary(self) -> dict[str, GroupSummary]:
        """Per group that received at least one tensor: contributing sites and the sum of their counts."""
        return {
            group: GroupSummary(sites=self._group_sites[group], examples=self._group_examples[group])
            for group in sorted(self._group_sites)
        }

    def means(self) -> dict[str, Float64Array]:
        """Float64 weighted means of the tensors at least one site trained (others are absent)."""
        return {name: total / float(self._weights[name]) for name, total in self._sums.items()}

    def result(self) -> dict[str, NDArray]:
        """The new global model (FedAvg/FedProx): trained tensors replaced by their means, in the global dtype."""
        return apply_means(self._global, self.means())


def apply_means(global_arrays: Mapping[str, NDArray], means: Mapping[str, Float64Array]) -> dict[str, NDArray]:
    """Global arrays with every tensor in ``means`` replaced by its mean, cast to the global tensor's dtype."""
    return {name: means[name].astype(array.dtype) if name in means else array for name, array in global_arrays.items()}


class ServerOptimizer(ABC):
    """FedOpt server step: Δ = mean − global is a pseudo-gradient, applied per tensor that was updated.

    Tensors absent from ``means`` (no site trained them this round) are returned unchanged and their optimiser
    state is left as it is. Arithmetic is float64; results are cast to the global tensor's dtype.
    """

    def step(self, global_arrays: Mapping[str, NDArray], means: Mapping[str, Float64Array]) -> dict[str, NDArray]:
        """New global model from the current one and this round's per-tensor means."""
        result: dict[str, NDArray] = {}
        for name, array in global_arrays.items():
            mean = means.get(name)
            if mean is None or not is_floating(array.dtype):
                result[name] = array
                continue
            current = array.astype(np.float64)
            result[name] = (current + self._update(name, mean - current)).astype(array.dtype)
        return result

    @abstractmethod
    def _update(self, name: str, delta: Float64Array) -> Float64Array:
        """Change applied to tensor ``name`` given its pseudo-gradient ``delta`` (updates the state)."""


class ServerSGD(ServerOptimizer):
    """Server SGD with momentum (FedAvgM): ``m ← momentum·m + Δ; θ ← θ + lr·m``.

    ``lr=1, momentum=0`` reproduces FedAvg exactly.
    """

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        if not lr > 0 or not 0 <= momentum < 1:
            raise ConfigError(f"server SGD needs lr > 0 and 0 ≤ momentum < 1, got lr={lr}, momentum={momentum}")
        self.lr = lr
        self.momentum = momentum
        self._m: dict[str, Float64Array] = {}

    def _update(self, name: str, delta: Float64Array) -> Float64Array:
        previous = self._m.get(name)
        m = delta if previous is None else self.momentum * previous + delta
        self._m[name] = m
        return self.lr * m


class ServerAdam(ServerOptimizer):
    """FedAdam server step per tensor, with bias correction counted per tensor.

    For the ``t``-th round in which tensor ``name`` was updated::

        m ← β1·m + (1 − β1)·Δ
        v ← β2·v + (1 − β2)·Δ²
        θ ← θ + lr · √(1 − β2^t) / (1 − β1^t) · m / (√v + τ)

    Flower's FedAdam uses the same form but with the server round for ``t`` and moments for every tensor;
    counting ``t`` per tensor gives a head first trained in a late round a correct first step, and keeping no
    state for untrained tensors stops their moments from moving them.
    """

    def __init__(self, lr: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        if not lr > 0 or not tau > 0 or not 0 <= beta_1 < 1 or not 0 <= beta_2 < 1:
            raise ConfigError(
                f"FedAdam needs lr > 0, tau > 0, 0 ≤ beta_1 < 1, 0 ≤ beta_2 < 1; got lr={lr}, tau={tau}, "
                f"beta_1={beta_1}, beta_2={beta_2}"
            )
        self.lr = lr
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.tau = tau
        self._m: dict[str, Float64Array] = {}
        self._v: dict[str, Float64Array] = {}
        self._t: dict[str, int] = {}

    def steps(self, name: str) -> int:
        """How many server steps tensor ``name`` has had (0 = never updated)."""
        return self._t.get(name, 0)

    def _update(self, name: str, delta: Float64Array) -> Float64Array:
        t = self._t.get(name, 0) + 1
        m = (1 - self.beta_1) * delta
        v = (1 - self.beta_2) * np.square(delta)
        if name in self._m:
            m += self.beta_1 * self._m[name]
            v += self.beta_2 * self._v[name]
        self._m[name], self._v[name], self._t[name] = m, v, t
        lr_t = self.lr * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        return lr_t * m / (np.sqrt(v) + self.tau)


class MetricMean:
    """Running weighted mean of the sites' metrics, each loss weighted by its own group's count.

    * ``num-examples`` and ``n-<group>``: summed (total examples per group this round).
    * ``<metric>-<group>`` where the site reports ``n-<group>`` (e.g. ``train-loss-septum``): weighted by that
      count, so sites that did not train a head (count 0) do not enter its mean.
    * any other scalar (e.g. ``train-loss``): weighted by ``num-examples``.
    * non-finite values and lists are left out (logged at debug level); a metric no site could weigh is absent.
    """

    def __init__(self, weight_key: str = NUM_EXAMPLES_KEY) -> None:
        self.weight_key = weight_key
        self._totals: dict[str, int] = {}
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}

    def add(self, metrics: Mapping[str, object]) -> None:
        """Add one site's metrics (its counts must already be validated as non-negative integers)."""
        group_counts = {
            key[len(COUNT_PREFIX) :]: value
            for key, value in metrics.items()
            if key.startswith(COUNT_PREFIX) and isinstance(value, int)
        }
        count_keys = {self.weight_key, *(COUNT_PREFIX + g for g in group_counts)}
        for key, value in metrics.items():
            if key in count_keys:
                if isinstance(value, int):
                    self._totals[key] = self._totals.get(key, 0) + value
                continue
            number = _finite_scalar(value)
            if number is None:
                logger.debug("metric %r left out: not a finite scalar", key)
                continue
            weight = _weight_of(key, group_counts, metrics.get(self.weight_key))
            if weight > 0:
                self._sums[key] = self._sums.get(key, 0.0) + weight * number
                self._weights[key] = self._weights.get(key, 0.0) + weight

    def result(self) -> dict[str, int | float]:
        """Totals of the counts and weighted means of the other metrics."""
        out: dict[str, int | float] = dict(self._totals)
        out.update({key: total / self._weights[key] for key, total in self._sums.items()})
        return out


def _finite_scalar(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if np.isfinite(number) else None


def _weight_of(key: str, group_counts: Mapping[str, int], num_examples: object) -> float:
    """Count of the longest group ``g`` with ``key`` ending in ``-g``; else ``num_examples``."""
    matches = [g for g in group_counts if key.endswith("-" + g)]
    if matches:
        return float(group_counts[max(matches, key=len)])
    if isinstance(num_examples, int) and not isinstance(num_examples, bool):
        return float(num_examples)
    return 0.0

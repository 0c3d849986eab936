"""The site's Flower ClientApp: translates messages into calls of :mod:`cardiofm.federated.task`.

* ``train``: local training of the stage from the global tensors; replies with the trained tensors only and
  per-group counts and losses (``num-examples``, ``n-<head>``, ``train-loss[-<head>]``).
* ``evaluate``: scores the global model on the site's own cases; replies with counts and summary numbers.
* ``query``: ``action=save-model`` keeps the stage's final global model at the site (to pseudo-label and
  predict); ``action=shutdown`` writes the done marker so the site's SuperNode task can end.

The site dataset and work dir come from the SuperNode's ``node_config`` (``dataset``, ``work-dir``). No reply
carries an image, a case id, a path or any patient data; an error's text is scrubbed of the site's case ids
and DICOM UIDs before Flower sends it to the coordinator.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cardiofm.contracts.dataset import DatasetManifest
from cardiofm.contracts.federated_run import FederatedRunConfig, SiteNodeConfig, check_version
from cardiofm.errors import CardioFMError, ConfigError
from cardiofm.federated.site_worker import run_at_site
from cardiofm.federated.supernode import mark_run_finished

logger = logging.getLogger(__name__)

app = ClientApp()

Handler = Callable[[Message, Context], Message]


def private_identifiers(site: SiteNodeConfig) -> list[str]:
    """Case ids and DICOM UIDs of the site dataset: strings that must never leave the site."""
    path = site.dataset / "manifest.json"
    if not path.is_file():
        return []
    try:
        manifest = DatasetManifest.model_validate_json(path.read_text())
    except ValueError:  # an unreadable manifest names no case
        return []
    ids: list[str] = []
    for case in manifest.cases:
        ids += [case.case_id, case.source.study_uid, case.source.series_uid]
    return ids


def redact(text: str, identifiers: list[str]) -> str:
    """``text`` with every identifier (and anything shaped like a DICOM UID) replaced by ``<redacted>``."""
    for ident in sorted(set(identifiers), key=len, reverse=True):
        if ident:
            text = text.replace(ident, "<redacted>")
    return re.sub(r"\b\d+(?:\.\d+){4,}\b", "<redacted>", text)


def _scrubbed(handler: Handler) -> Handler:
    """Re-raise any failure as a :class:`CardioFMError` naming no case, UID or local folder of this site."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:
            identifiers: list[str] = []
            with contextlib.suppress(CardioFMError):
                site = SiteNodeConfig.from_node_config(context.node_config)
                identifiers = [*private_identifiers(site), str(site.dataset), str(site.work_dir)]
            logger.exception("%s failed at this site", msg.metadata.message_type)
            text = redact(str(exc), identifiers)
            raise CardioFMError(f"{type(exc).__name__}: {text}") from None

    return wrapper


def _spec_config(msg: Message, context: Context) -> dict[str, object]:
    """The stage settings the coordinator sent, after checking that it runs this cardiofm version."""
    check_version(FederatedRunConfig.from_run_config(context.run_config))
    return dict(msg.content.config_records.get("config", ConfigRecord()))


def _round(msg: Message) -> int:
    """The round number across a resumed run: Flower's ``server-round`` plus the coordinator's ``round-offset``."""
    config = msg.content.config_records.get("config", ConfigRecord())
    values = (config.get("server-round", 0), config.get("round-offset", 0))
    return sum(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))


def _metrics(values: Mapping[str, int | float]) -> MetricRecord:
    record: dict[str, int | float | list[int] | list[float]] = dict(values)
    return MetricRecord(record)


def _global_arrays(msg: Message) -> dict[str, np.ndarray]:
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        raise ConfigError("the coordinator's message carries no model ('arrays')")
    return {name: array.numpy() for name, array in arrays.items()}


def _at_site(op: str, msg: Message, context: Context) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
    """The message's work, done by the site's worker (or here without one): :mod:`~cardiofm.federated.site_worker`."""
    return run_at_site(context.node_config, op, _spec_config(msg, context), _global_arrays(msg), _round(msg))


@app.train()
@_scrubbed
def train(msg: Message, context: Context) -> Message:
    """One round of local training; reply: trained tensors + ``num-examples``, ``n-<head>``, losses."""
    arrays, metrics = _at_site("train", msg, context)
    record = ArrayRecord({name: Array.from_numpy_ndarray(value) for name, value in arrays.items()})
    return Message(content=RecordDict({"arrays": record, "metrics": _metrics(metrics)}), reply_to=msg)


@app.evaluate()
@_scrubbed
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model on this site's cases; reply: counts and summary metrics only."""
    _, metrics = _at_site("evaluate", msg, context)
    return Message(content=RecordDict({"metrics": _metrics(metrics)}), reply_to=msg)


@app.query()
@_scrubbed
def query(msg: Message, context: Context) -> Message:
    """``action=save-model``: keep the final global model here; ``action=shutdown``: write the done marker."""
    config = msg.content.config_records.get("config", ConfigRecord())
    action = config.get("action")
    if action == "save-model":
        _, reply = _at_site("save-model", msg, context)
    elif action == "shutdown":
        mark_run_finished(context.node_config, context.run_id)
        reply = {"finished": 1}
    else:
        raise ConfigError(f"unknown query action {action!r}; known: ['save-model', 'shutdown']")
    return Message(content=RecordDict({"metrics": _metrics(reply)}), reply_to=msg)

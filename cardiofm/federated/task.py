"""The work behind the Flower apps, as plain functions (no flwr import): what a site does in each stage.

* :func:`stage_spec` turns a run config into the stage's model and training settings (:class:`StageSpec`);
  the coordinator sends them with every message, so a site builds exactly the coordinator's model.
* :func:`train_local`: one round of local training from the global tensors; returns only the tensors
  the site trained (backbone unless frozen, plus the heads it holds labels or pseudo-labels for) with
  per-group example counts and mean losses.
* :func:`evaluate_local`: scores the global model on the site's own cases; returns counts and
  aggregate-safe summary numbers only (no case ids, no per-case values).
* :func:`save_global_model`: keeps a stage's final global model at the site (``<work-dir>/models/``).
* :func:`pseudolabel_site`: the local step between ``teacher:*`` and ``distill``: every received teacher
  predicts every case of the site dataset (``<work-dir>/pseudo-labels/``).

Nothing a function here returns for sending names a case, a study, a path or any patient data.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, get_args

import torch
from pydantic import ValidationError

from cardiofm.constants import DOWNSTREAM_TASKS, TASK_LANDMARKS
from cardiofm.contracts.federated_run import TEACHER_PREFIX, FederatedRunConfig, SiteNodeConfig
from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.errors import ConfigError, MissingResourceError
from cardiofm.models.config import HEAD_CHANNELS, STUDENT, ModelConfig, load_model_config
from cardiofm.models.registry import BACKBONE, build_model, group_of
from cardiofm.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cardiofm.training.config import EncodingConfig, TrainConfig
from cardiofm.training.data import Sample
from cardiofm.training.trainer import Freeze, load_training_samples, train

logger = logging.getLogger(__name__)

#: Sub-folders of a site's work dir.
MODELS_DIR: Final[str] = "models"
PSEUDO_DIR: Final[str] = "pseudo-labels"
SCRATCH_DIR: Final[str] = "scratch"
#: Which teacher produced the pseudo-labels of each task, and on which grid.
TEACHERS_FILE: Final[str] = "teachers.json"
#: Losses are averaged over the last this many local steps.
LOSS_WINDOW_STEPS: Final[int] = 10

#: Smallest patch the student trains on (its bottleneck must keep more than one voxel per axis).
STUDENT_MIN_PATCH_VOX: Final[int] = 64

Metrics = dict[str, int | float]
State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class StageSpec:
    """Everything a site needs to train or evaluate the stage's model; sent by the coordinator.

    Attributes
    ----------
    stage
        ``teacher:<task>``, ``distill``, ``finetune`` or ``evaluate``.
    model
        The network (its heads are the stage's aggregation groups besides ``backbone``).
    train
        Local training settings: tasks, steps, patch, preprocessing (the grid pseudo-labels live on).
    freeze
        ``backbone`` for head fine-tuning, else ``none``.
    proximal_mu
        FedProx weight (0: plain local training).
    eval_split
        Cases a site evaluates on (``test`` or ``all``).
    local_epochs
        Passes over the site's training cases per round (0: ``train.steps`` steps).
    """

    stage: str
    model: ModelConfig
    train: TrainConfig
    freeze: Freeze = "none"
    proximal_mu: float = 0.0
    eval_split: str = "test"
    local_epochs: int = 0

    @property
    def slug(self) -> str:
        """The stage as a file-name part (``teacher-landmarks``)."""
        return self.stage.replace(":", "-")

    @property
    def trains_backbone(self) -> bool:
        """Whether sites train (and return) the backbone."""
        return self.freeze == "none"

    def to_config(self) -> dict[str, str | float]:
        """Flat values for a Flower ``ConfigRecord``."""
        return {
            "stage": self.stage,
            "model-config": self.model.model_dump_json(),
            "train-config": self.train.model_dump_json(),
            "freeze": self.freeze,
            "proximal-mu": float(self.proximal_mu),
            "eval-split": self.eval_split,
            "local-epochs": int(self.local_epochs),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> StageSpec:
        """Inverse of :meth:`to_config` (a ``proximal-mu`` set by the strategy wins).

        Raises
        ------
        ConfigError
            If a value is missing or invalid (a coordinator running another cardiofm version, say).
        """
        try:
            model = load_model_config(json.loads(str(config["model-config"])))
            train_cfg = TrainConfig.model_validate_json(str(config["train-config"]))
            freeze = str(config.get("freeze", "none"))
            if freeze not in get_args(Freeze):
                raise ConfigError(f"unknown freeze mode {freeze!r}; known: {list(get_args(Freeze))}")
            mu = config.get("proximal-mu", 0.0)
            epochs = config.get("local-epochs", 0)
            return cls(
                stage=str(config["stage"]),
                model=model,
                train=train_cfg,
                freeze=freeze,  # type: ignore[arg-type]  # checked against Freeze above
                proximal_mu=float(mu) if isinstance(mu, int | float) else 0.0,
                eval_split=str(config.get("eval-split", "test")),
                local_epochs=int(epochs) if isinstance(epochs, int) else 0,
            )
        except KeyError as exc:
            raise ConfigError(
                f"the coordinator's message lacks {exc.args[0]!r}; are both sides on one version?"
            ) from exc
        except (ValidationError, json.JSONDecodeError) as exc:
            raise ConfigError(f"the coordinator's stage settings are invalid: {exc}") from exc


def stage_spec(run: FederatedRunConfig, init: Checkpoint | None = None) -> StageSpec:
    """The stage's model and local training settings, from the run config (and the checkpoint it starts from).

    A teacher stage builds a residual U-Net with one head, ``distill`` a SwinUNETR student with one head per
    run task. ``finetune`` and ``evaluate`` take the model and its preprocessing from ``init``.

    Raises
    ------
    ConfigError
        If the stage needs ``init`` and has none, if ``init`` lacks a head for a run task, or if the patch
        size does not suit the model.
    """
    kind = run.stage_kind
    preprocessing = PreprocessingConfig(spacing_mm=run.spacing_mm)
    encoding = EncodingConfig(radius_mm=run.landmark_radius_mm)
    tasks = run.stage_tasks
    if kind == "teacher":
        model = ModelConfig.teacher(tasks[0], filters=run.teacher_filters, heart_conditioning=run.heart_conditioning)
    elif kind == "distill" and init is None:
        model = ModelConfig.student(
            heads={t: HEAD_CHANNELS[t] for t in tasks},
            feature_size=run.student_feature_size,
            depths=run.student_depths,
            num_heads=run.student_num_heads,
            heart_conditioning=run.heart_conditioning,
        )
    elif init is None:
        raise ConfigError(f"stage {run.stage!r} needs init-checkpoint (the model to start from)")
    else:
        model = init.model_config
    if init is not None:
        preprocessing = init.train_config.preprocessing
        encoding = init.train_config.encoding
        missing = [t for t in tasks if t not in model.heads]
        if missing and kind != "teacher":
            if kind == "evaluate":
                tasks = tuple(t for t in tasks if t in model.heads) or tuple(model.heads)
            elif kind == "finetune" and all(t in DOWNSTREAM_TASKS for t in missing):
                model = with_heads(model, missing)  # a new downstream head, initialised fresh
            else:
                raise ConfigError(
                    f"the initial model has no head for {missing}; its heads are {list(model.heads)} "
                    f"(fine-tuning can add only downstream heads: {list(DOWNSTREAM_TASKS)})"
                )
    if model.name == STUDENT and run.patch_size_vox < STUDENT_MIN_PATCH_VOX:
        raise ConfigError(f"patch-size-vox must be at least {STUDENT_MIN_PATCH_VOX} for the SwinUNETR student")
    if run.patch_size_vox % model.spatial_divisor:
        raise ConfigError(
            f"patch-size-vox {run.patch_size_vox} must be a multiple of {model.spatial_divisor} for {model.name}"
        )
    train_cfg = TrainConfig(
        tasks=tasks,
        patch_size=(run.patch_size_vox,) * 3,
        batch_size=run.batch_size,
        steps=run.local_steps,
        learning_rate=run.learning_rate,
        warmup_steps=min(10, run.local_steps // 4),
        foreground_fraction=run.foreground_fraction,
        encoding=encoding,
        preprocessing=preprocessing,
        seed=run.seed,
    )
    return StageSpec(
        stage=run.stage,
        model=model,
        train=train_cfg,
        freeze="backbone" if kind == "finetune" else "none",
        proximal_mu=run.proximal_mu,
        eval_split=run.eval_split,
        local_epochs=run.local_epochs,
    )


def with_heads(model: ModelConfig, tasks: list[str]) -> ModelConfig:
    """``model`` with a head added for each of ``tasks`` (its existing heads unchanged)."""
    return model.model_copy(update={"heads": {**model.heads, **{t: HEAD_CHANNELS[t] for t in tasks}}})


def initial_state(spec: StageSpec, init: Checkpoint | None = None) -> dict[str, torch.Tensor]:
    """The stage's starting global tensors: ``init``'s weights, else a freshly initialised model (seeded).

    A fine-tuning stage may add heads ``init`` lacks (see :func:`stage_spec`): those start freshly
    initialised (seeded), every other tensor comes from ``init``.

    Raises
    ------
    ConfigError
        If ``init``'s model differs from the stage's model other than by added heads.
    """
    torch.manual_seed(spec.train.seed)
    if init is None:
        model = build_model(spec.model)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if init.model_config == spec.model:
        return {k: v.detach().cpu() for k, v in init.state_dict.items()}
    old_heads = init.model_config.heads
    added = set(spec.model.heads) - set(old_heads)
    if not added or with_heads(init.model_config, sorted(added)) != spec.model:
        raise ConfigError("the initial checkpoint's model config differs from the stage's model")
    fresh = build_model(spec.model).state_dict()
    stray = [k for k in fresh if k not in init.state_dict and group_of(k) not in added]
    stray += [k for k in init.state_dict if k not in fresh]
    if stray:
        raise ConfigError(f"the initial checkpoint does not fit the stage's model, e.g. {sorted(stray)[:3]}")
    logger.info("new head(s) %s initialised fresh; everything else from the initial checkpoint", sorted(added))
    return {k: init.state_dict.get(k, v).detach().cpu() for k, v in fresh.items()}


@dataclass
class LocalUpdate:
    """What one site's round produced: the tensors it trained, its counts, its losses."""

    #: Trained parameters only (backbone unless frozen, plus the heads of ``trained_tasks``).
    arrays: dict[str, torch.Tensor]
    #: Head → examples that trained it (0 = head not trained here).
    head_counts: dict[str, int]
    #: Cases used in this round (the backbone's weight).
    num_examples: int
    #: ``loss`` and per-head losses, averaged over the last steps.
    losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def metrics(self) -> Metrics:
        """The reply's metric record: ``num-examples``, ``n-<head>``, ``train-loss[-<head>]``, ``train-seconds``.

        Every site reports the same keys (zeros for heads it did not train), as Flower requires.
        """
        out: Metrics = {"num-examples": self.num_examples, "train-seconds": float(self.seconds)}
        out["train-loss"] = float(self.losses.get("loss", 0.0))
        for head, n in self.head_counts.items():
            out[f"n-{head}"] = int(n)
            out[f"train-loss-{head}"] = float(self.losses.get(head, 0.0))
        return out


def _pseudo_dir(site: SiteNodeConfig) -> Path:
    return site.work_dir / PSEUDO_DIR


def _check_pseudolabels(site: SiteNodeConfig, spec: StageSpec) -> Path:
    folder = _pseudo_dir(site)
    record = folder / TEACHERS_FILE
    if not record.is_file():
        raise MissingResourceError(
            "no pseudo-labels at this site; run the local pseudo-label step after the teacher stages, before distill"
        )
    teachers: dict[str, dict[str, object]] = json.loads(record.read_text())
    spacing = spec.train.preprocessing.spacing_mm
    for task, info in teachers.items():
        teacher_spacing = info.get("spacing_mm")
        if (
            task in spec.train.tasks
            and isinstance(teacher_spacing, int | float)
            and abs(teacher_spacing - spacing) > 1e-6
        ):
            raise ConfigError(
                f"pseudo-labels of {task!r} are on a {teacher_spacing} mm grid, the student trains at {spacing} mm; "
                "use the teachers' spacing-mm for distill"
            )
    return folder


def _has(sample: Sample, task: str) -> bool:
    return task in sample.targets or task in sample.soft


def _mean_losses(history: list[dict[str, float]], heads: tuple[str, ...]) -> dict[str, float]:
    tail = history[-LOSS_WINDOW_STEPS:]
    out: dict[str, float] = {}
    for key in ("loss", *heads):
        values = [h[key] for h in tail if key in h and math.isfinite(h[key])]
        if values:
            out[key] = sum(values) / len(values)
    return out


def train_local(site: SiteNodeConfig, spec: StageSpec, global_state: State, server_round: int) -> LocalUpdate:
    """One round of local training from the global tensors.

    Parameters
    ----------
    site
        The site's dataset and work dir.
    spec
        The stage's model and training settings.
    global_state
        Global tensors by name (a partial set keeps the fresh initialisation for the rest).
    server_round
        Round number (varies the local seed, so rounds draw different patches).

    Returns
    -------
    LocalUpdate
        Only the trained tensors; a site without labels (or pseudo-labels, for ``distill``) for any of the
        stage's tasks returns no tensors and zero counts.
    """
    start = time.perf_counter()
    pseudo = [_check_pseudolabels(site, spec)] if spec.stage == "distill" else None
    cfg = spec.train.model_copy(update={"seed": spec.train.seed + 1000 * server_round})
    samples = load_training_samples([site.dataset], cfg, "train", pseudo, spec.model.heart_conditioning)
    heads = tuple(spec.model.heads)
    counts = {h: (sum(_has(s, h) for s in samples) if h in cfg.tasks else 0) for h in heads}
    trained = tuple(t for t in cfg.tasks if counts.get(t, 0) > 0)
    if not trained:
        logger.info("no labels for %s at this site; nothing trained this round", list(cfg.tasks))
        return LocalUpdate({}, dict.fromkeys(heads, 0), 0, seconds=time.perf_counter() - start)
    used = [s for s in samples if any(_has(s, t) for t in trained)]
    cfg = cfg.model_copy(update={"tasks": trained, **epoch_steps(spec.local_epochs, len(used), cfg)})
    scratch = site.work_dir / SCRATCH_DIR / f"{spec.slug}-local.pt"
    result = train(
        used, cfg, spec.model, scratch, init_state=global_state, freeze=spec.freeze, proximal_mu=spec.proximal_mu
    )
    state = load_checkpoint(result.checkpoint).state_dict
    groups = {*trained, *([BACKBONE] if spec.trains_backbone else [])}
    names = [n for n, _ in build_model(spec.model).named_parameters()]
    arrays = {n: state[n] for n in names if group_of(n) in groups}
    return LocalUpdate(
        arrays=arrays,
        head_counts=counts,
        num_examples=len(used),
        losses=_mean_losses(result.history, heads),
        seconds=time.perf_counter() - start,
    )


def epoch_steps(epochs: int, cases: int, cfg: TrainConfig) -> dict[str, int]:
    """``steps`` and ``warmup_steps`` for ``epochs`` passes over ``cases`` (empty for 0 epochs: keep ``cfg``'s)."""
    if epochs <= 0:
        return {}
    steps = max(1, epochs * math.ceil(cases / cfg.batch_size))
    return {"steps": steps, "warmup_steps": min(cfg.warmup_steps, steps // 4)}


def _save(path: Path, spec: StageSpec, state: State) -> Path:
    model = build_model(spec.model)
    model.load_state_dict(dict(state))
    return save_checkpoint(path, model, spec.model, spec.train, [])


def save_global_model(site: SiteNodeConfig, spec: StageSpec, state: State) -> Path:
    """Keep the stage's final global model at the site as ``<work-dir>/models/<stage>.pt``.

    Raises
    ------
    RuntimeError
        (from torch) if the tensors do not fit the stage's model: the coordinator sent an incomplete model.
    """
    path = _save(site.work_dir / MODELS_DIR / f"{spec.slug}.pt", spec, state)
    logger.info("global model of stage %s saved at this site", spec.stage)
    return path


def evaluate_local(site: SiteNodeConfig, spec: StageSpec, global_state: State) -> Metrics:
    """Score the global model on the site's own cases (``spec.eval_split``).

    Returns
    -------
    dict[str, int | float]
        ``num-examples`` (cases), and per head ``n-<head>`` with ``mean-mm-<head>`` and ``failure-rate-<head>``
        (landmark heads; ``n`` = landmark points scored) or ``dice-<head>`` (mask heads; ``n`` = cases). Zeros
        where nothing could be scored; no per-case values.
    """
    from cardiofm.evaluation.evaluate import evaluate_dataset

    path = _save(site.work_dir / SCRATCH_DIR / f"{spec.slug}-evaluate.pt", spec, global_state)
    report = evaluate_dataset(path, site.dataset, split=spec.eval_split)
    return evaluation_metrics(report, tuple(spec.model.heads))


def _finite(value: object) -> float:
    number = float(value) if isinstance(value, int | float) else math.nan
    return number if math.isfinite(number) else 0.0


def evaluation_metrics(report: Mapping[str, object], heads: tuple[str, ...]) -> Metrics:
    """Aggregate-safe numbers from an :func:`~cardiofm.evaluation.evaluate.evaluate_dataset` report."""
    cases = report.get("cases", 0)
    out: Metrics = {"num-examples": int(cases) if isinstance(cases, int) else 0}
    for head in heads:
        entry = report.get(head)
        entry = entry if isinstance(entry, Mapping) else {}
        if head in TASK_LANDMARKS:
            pooled = entry.get("pooled")
            pooled = pooled if isinstance(pooled, Mapping) else {}
            n = int(_finite(pooled.get("n", 0)))
            out[f"n-{head}"] = n
            out[f"mean-mm-{head}"] = _finite(pooled.get("mean_mm")) if n else 0.0
            out[f"failure-rate-{head}"] = _finite(pooled.get("n_failed", 0)) / n if n else 0.0
        else:
            n = int(_finite(entry.get("n", 0)))
            out[f"n-{head}"] = n
            out[f"dice-{head}"] = _finite(entry.get("dice_mean")) if n else 0.0
    return out


def received_teachers(site: SiteNodeConfig, folder: Path | None = None) -> dict[str, Path]:
    """Task → teacher checkpoint ``teacher-<task>.pt`` in ``folder``.

    The default folder holds what the site received: ``<work-dir>/models``.
    """
    prefix = TEACHER_PREFIX.replace(":", "-")
    folder = folder if folder is not None else site.work_dir / MODELS_DIR
    return {p.stem.removeprefix(prefix): p for p in sorted(folder.glob(f"{prefix}*.pt"))}


def pseudolabel_site(
    site: SiteNodeConfig,
    tasks: tuple[str, ...] | None = None,
    teachers_dir: Path | None = None,
    on_case: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """The local step between the teacher stages and ``distill``: teachers predict every case of the site.

    Each received teacher (or those of ``tasks``; from ``teachers_dir`` instead of ``<work-dir>/models``
    when given) writes ``<work-dir>/pseudo-labels/<task>/``; earlier
    pseudo-labels of that task are replaced. ``teachers.json`` records which teacher and grid each task used.

    Returns
    -------
    dict[str, int]
        Task → cases pseudo-labelled.

    Raises
    ------
    MissingResourceError
        If the site holds no teacher model (of ``tasks``) yet.
    """
    from cardiofm.training.pseudolabel import pseudolabel_dataset

    found = received_teachers(site, teachers_dir)
    teachers = {t: p for t, p in found.items() if not tasks or t in tasks}
    missing = [t for t in tasks or () if t not in found]
    if not teachers or missing:
        wanted = missing or list(tasks or ()) or "any task"
        where = f"in {teachers_dir}" if teachers_dir is not None else f"under the work dir's {MODELS_DIR}/"
        raise MissingResourceError(
            f"no teacher model for {wanted} at this site ({where}; found: {sorted(found) or 'none'}); take part in "
            "the teacher stages first: their final models are stored there as teacher-<task>.pt"
        )
    out = _pseudo_dir(site)
    record_path = out / TEACHERS_FILE
    record: dict[str, dict[str, object]] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    written: dict[str, int] = {}
    for task, ckpt_path in teachers.items():
        shutil.rmtree(out / task, ignore_errors=True)
        counts = pseudolabel_dataset(ckpt_path, site.dataset, out, on_case=on_case)
        written[task] = counts.get(task, 0)
        spacing = load_checkpoint(ckpt_path).train_config.preprocessing.spacing_mm
        record[task] = {"teacher": ckpt_path.name, "spacing_mm": spacing, "cases": written[task]}
    out.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2))
    return written


def train_local_teacher(dataset: Path, run: FederatedRunConfig, steps: int, out: Path) -> Path:
    """A site's local-only teacher: the model and settings of ``run``'s teacher stage, trained on this site alone.

    The comparison the federated teacher must beat (``cardiofm step train-local``, the demo's local teachers).
    It trains ``steps`` steps; with ``local-epochs`` set, the passes a federated site makes instead
    (``num_rounds × local_epochs`` over its training cases).

    Raises
    ------
    MissingResourceError
        If the dataset has no training case labelled for the stage's task.
    """
    from cardiofm.training.trainer import load_training_samples, train

    spec = stage_spec(run)
    cfg = spec.train.model_copy(update={"steps": steps, "warmup_steps": min(10, steps // 4)})
    samples = load_training_samples([dataset], cfg, "train")
    if not samples:
        raise MissingResourceError(f"no training case labelled for {run.stage!r} in this site's dataset")
    if run.local_epochs > 0:  # the passes a federated site makes: num_rounds × local_epochs over its cases
        steps = run.num_rounds * epoch_steps(run.local_epochs, len(samples), cfg)["steps"]
        cfg = cfg.model_copy(update={"steps": steps, "warmup_steps": min(10, steps // 4)})
    return train(samples, cfg, spec.model, out).checkpoint

"""The demo's evaluation report: every model on every training site's test split and on the held-out sites.

Numbers come from :func:`~cardiofm.evaluation.evaluate.evaluate_dataset` with the phantom generator's
ground truth (:func:`~cardiofm.evaluation.evaluate.phantom_truth`: evaluation only, never read by the
federation). To pool cases of several sites (and, for the local-only teachers, of several models)
into one figure, each case is scored through a one-case view of its dataset (a ``manifest.json``
naming that case plus a link to its folder); the per-case errors are then summarised with
:func:`~cardiofm.evaluation.metrics.summarise_errors`, exactly as a single dataset would be.

``results.json`` layout (:func:`model_results`)::

    {model: {task: {group: figures}}}
    model  local_teacher | federated_teacher | student_distilled | student_finetuned
    group  train_sites_test | heldout_sites
    landmark tasks  {"n_cases": N, "per_landmark": {name: {"median_mm", "mean_mm", "failure_rate", "n"}},
                     "pooled": {...same four...}}
    calcification   {"dice": mean Dice, "n": cases}

A figure without cases is ``null`` with ``n`` 0, never left out. ``n`` counts scored (model, case)
pairs: for ``local_teacher`` each training site's own teacher scores its own test cases, and every
local teacher scores every held-out case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rich.table import Table

from cardiofm.constants import MASK_TASKS, TASK_LANDMARKS, TASKS
from cardiofm.evaluation.evaluate import TruthSource, evaluate_dataset
from cardiofm.evaluation.metrics import POOLED, summarise_errors
from cardiofm.training.data import load_manifest

MODELS: Final[tuple[str, ...]] = ("local_teacher", "federated_teacher", "student_distilled", "student_finetuned")
GROUPS: Final[tuple[str, ...]] = ("train_sites_test", "heldout_sites")
MODEL_TITLES: Final[dict[str, str]] = {
    "local_teacher": "local-only teacher",
    "federated_teacher": "federated teacher",
    "student_distilled": "distilled student",
    "student_finetuned": "fine-tuned student",
}
GROUP_TITLES: Final[dict[str, str]] = {"train_sites_test": "train sites, test", "heldout_sites": "held-out sites"}
_FIGURES: Final[tuple[str, ...]] = ("median_mm", "mean_mm", "failure_rate")


def case_views(dataset: Path, out: Path, split: str) -> list[Path]:
    """One-case views of the dataset's cases of ``split`` (``"all"``: every case), written under ``out``.

    Each view is a dataset folder whose manifest names one case (as ``test``) and whose ``cases/<id>``
    links to the original case folder; nothing is copied.

    Returns
    -------
    list[Path]
        The view folders, in manifest order.
    """
    manifest = load_manifest(dataset)
    views = []
    for case in manifest.cases:
        if split != "all" and case.split != split:
            continue
        view = out / f"{manifest.site_id}--{case.case_id}"
        (view / "cases").mkdir(parents=True, exist_ok=True)
        link = view / "cases" / case.case_id
        if not link.exists():
            link.symlink_to((dataset / "cases" / case.case_id).resolve(), target_is_directory=True)
        one = manifest.model_copy(update={"cases": [case.model_copy(update={"split": "test"})]})
        (view / "manifest.json").write_text(one.model_dump_json(indent=2))
        views.append(view)
    return views


@dataclass
class Scores:
    """Per-case scores of one model (or one kind of model) on one group of cases."""

    #: landmark task → one ``{landmark: error_mm}`` per scored case (``nan``: not found)
    errors: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    #: mask task → one Dice per scored case
    dice: dict[str, list[float]] = field(default_factory=dict)
    #: cases scored per task
    cases: dict[str, int] = field(default_factory=dict)


@dataclass
class Evaluator:
    """Scores checkpoints on one-case views against a truth source; each (checkpoint, view) is run once."""

    truth: TruthSource
    on_case: Callable[[], None] | None = None
    _cache: dict[tuple[Path, Path], dict[str, object]] = field(default_factory=dict)

    def report(self, checkpoint: Path, view: Path) -> dict[str, object]:
        """:func:`evaluate_dataset` of the checkpoint on the one-case view (cached)."""
        key = (checkpoint.resolve(), view.resolve())
        if key not in self._cache:
            self._cache[key] = evaluate_dataset(checkpoint, view, split="test", truth=self.truth)
            if self.on_case is not None:
                self.on_case()
        return self._cache[key]

    def add(self, scores: Scores, checkpoint: Path, views: Sequence[Path], task: str) -> None:
        """Score ``task`` of the checkpoint on every view into ``scores``."""
        for view in views:
            entry = self.report(checkpoint, view).get(task)
            if not isinstance(entry, Mapping):
                continue
            if task in TASK_LANDMARKS:
                per_landmark = entry.get("per_landmark")
                if not isinstance(per_landmark, Mapping) or not per_landmark:
                    continue
                case: dict[str, float] = {}
                for name, stats in per_landmark.items():
                    if isinstance(stats, Mapping) and stats.get("n") == 1:
                        found = stats.get("n_missing") == 0
                        case[str(name)] = float(stats["median_mm"]) if found else math.nan
                scores.errors.setdefault(task, []).append(case)
            elif task in MASK_TASKS:
                value = entry.get("dice_mean")
                if entry.get("n") != 1 or not isinstance(value, int | float):
                    continue
                scores.dice.setdefault(task, []).append(float(value))
            else:
                continue
            scores.cases[task] = scores.cases.get(task, 0) + 1


def _number(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


def _empty_landmark() -> dict[str, float | int | None]:
    return {**dict.fromkeys(_FIGURES), "n": 0}


def task_figures(scores: Scores, task: str) -> dict[str, object]:
    """The figures of one task in one group (``null`` with ``n`` 0 where nothing was scored)."""
    n_cases = scores.cases.get(task, 0)
    if task in TASK_LANDMARKS:
        names = list(TASK_LANDMARKS[task])
        per_case = scores.errors.get(task, [])
        per_landmark: dict[str, dict[str, float | int | None]] = {n: _empty_landmark() for n in names}
        pooled: dict[str, float | int | None] = _empty_landmark()
        if per_case:
            summary = summarise_errors(per_case, names)
            for key, stats in summary.items():
                entry: dict[str, float | int | None] = {f: _number(getattr(stats, f)) for f in _FIGURES}
                entry["n"] = stats.n
                if key == POOLED:
                    pooled = entry
                else:
                    per_landmark[key] = entry
        return {"n_cases": n_cases, "per_landmark": per_landmark, "pooled": pooled}
    values = scores.dice.get(task, [])
    dice = sum(values) / len(values) if values else math.nan
    return {"dice": _number(dice), "n": len(values)}


@dataclass(frozen=True)
class DemoModels:
    """Checkpoints of the four models of the demo (paths on the coordinator or at the sites)."""

    #: task → site → local-only teacher of that site
    local_teachers: Mapping[str, Mapping[str, Path]]
    #: task → federated teacher
    federated_teachers: Mapping[str, Path]
    student_distilled: Path | None
    student_finetuned: Path | None


def model_results(
    models: DemoModels,
    train_views: Mapping[str, Sequence[Path]],
    heldout_views: Sequence[Path],
    evaluator: Evaluator,
    tasks: Sequence[str] = TASKS,
) -> dict[str, dict[str, dict[str, dict[str, object]]]]:
    """``{model: {task: {group: figures}}}`` for every model, task and group (see the module docstring).

    Parameters
    ----------
    models
        The checkpoints.
    train_views
        Training site → one-case views of its test split.
    heldout_views
        One-case views of every case of every held-out site.
    evaluator
        Scores checkpoints against the evaluation-only truth.
    tasks
        Tasks to report (every one appears, with ``null`` figures where a model lacks it).
    """
    all_train = [v for views in train_views.values() for v in views]
    out: dict[str, dict[str, dict[str, dict[str, object]]]] = {}
    for model in MODELS:
        out[model] = {}
        for task in tasks:
            train, heldout = Scores(), Scores()
            if model == "local_teacher":
                for site, ckpt in models.local_teachers.get(task, {}).items():
                    evaluator.add(train, ckpt, train_views.get(site, []), task)
                    evaluator.add(heldout, ckpt, heldout_views, task)
            else:
                shared = {
                    "federated_teacher": models.federated_teachers.get(task),
                    "student_distilled": models.student_distilled,
                    "student_finetuned": models.student_finetuned,
                }[model]
                if shared is not None:
                    evaluator.add(train, shared, all_train, task)
                    evaluator.add(heldout, shared, heldout_views, task)
            out[model][task] = {
                "train_sites_test": task_figures(train, task),
                "heldout_sites": task_figures(heldout, task),
            }
    return out


def _cell(figures: Mapping[str, object]) -> str:
    if "dice" in figures:
        dice = figures.get("dice")
        return f"Dice {dice:.2f} (n={figures.get('n', 0)})" if isinstance(dice, float) else "— (n=0)"
    pooled = figures.get("pooled")
    pooled = pooled if isinstance(pooled, Mapping) else {}
    n = figures.get("n_cases", 0)
    median, failure = pooled.get("median_mm"), pooled.get("failure_rate")
    if not isinstance(failure, int | float):
        return f"— (n={n})"
    if not isinstance(median, int | float):
        return f"none found, failure 100 % (n={n})"
    return f"{median:.1f} mm, failure {100 * failure:.0f} % (n={n})"


def results_table(results: Mapping[str, Mapping[str, Mapping[str, Mapping[str, object]]]], task: str) -> Table:
    """One table per task: rows are the models, columns the groups (median error and failure rate, or Dice, with n)."""
    what = "Dice" if task in MASK_TASKS else "median error over all points, failure rate (missing or > 10 mm)"
    table = Table(title=f"{task}: {what}; n = scored cases")
    table.add_column("model")
    for group in GROUPS:
        table.add_column(GROUP_TITLES[group], justify="right")
    for model in MODELS:
        per_task = results.get(model, {}).get(task, {})
        table.add_row(MODEL_TITLES[model], *(_cell(per_task.get(g, {})) for g in GROUPS))
    return table

"""``cardiofm train``, ``pseudolabel`` and ``evaluate``: the model engine from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from cardiofm.contracts.preprocessing import PreprocessingConfig
    from cardiofm.models.config import ModelConfig
    from cardiofm.training.config import EncodingConfig


def progress_bar() -> Progress:
    """The CLI's progress bar on stderr (description, bar, count, time left), gone when done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def train(
    dataset: list[Path] = typer.Option(..., "--dataset", help="Site dataset folder(s) written by `cardiofm prepare`."),
    model: str = typer.Option("teacher", "--model", help="teacher (one task, residual U-Net) or student (SwinUNETR)."),
    task: list[str] = typer.Option(
        ..., "--task", help="Task(s) to train: landmarks, septum, calcification, or a downstream head (coronaries)."
    ),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write."),
    steps: int = typer.Option(200, "--steps", min=1, help="Optimisation steps."),
    batch_size: int = typer.Option(2, "--batch-size", min=1, help="Patches per step."),
    patch: int = typer.Option(64, "--patch", min=32, help="Cubic patch edge, voxels (multiple of 32 for the student)."),
    spacing_mm: float | None = typer.Option(
        None,
        "--spacing-mm",
        help="Training spacing (default 1 mm; with --init the checkpoint's); the dataset is resampled if it differs.",
    ),
    learning_rate: float = typer.Option(3e-3, "--lr", help="Peak learning rate (AdamW, warm-up then cosine)."),
    feature_size: int = typer.Option(24, "--feature-size", help="Student SwinUNETR feature size (multiple of 12)."),
    filters: str = typer.Option("32,64,128,256,320", "--filters", help="Teacher filters per level, comma-separated."),
    heart_conditioning: str = typer.Option(
        "none",
        "--heart-conditioning",
        help="none, onehot or scaled: add the case's heart map to the CT input (a new model; --init keeps its own).",
    ),
    init: Path | None = typer.Option(
        None,
        "--init",
        help="Start from this checkpoint: its model (heads added for new --task), weights and preprocessing.",
    ),
    freeze: str = typer.Option(
        "none", "--freeze", help="none, backbone (fine-tune heads) or last-layer (only the --task heads' last layer)."
    ),
    pseudo: list[Path] = typer.Option([], "--pseudo", help="Pseudo-label folder(s), one per --dataset (distillation)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    workers: int = typer.Option(0, "--workers", min=0, help="Data-loader worker processes."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model."),
) -> None:
    """Train a task teacher, the multi-head student, or fine-tune heads; writes one checkpoint.

    With ``--init`` the model is the checkpoint's (same architecture, heart conditioning and preprocessing),
    with a freshly initialised head added for each ``--task`` it lacks (e.g. ``coronaries`` on a trained
    student); the checkpoint written holds every head.
    """
    from cardiofm.contracts.preprocessing import PreprocessingConfig
    from cardiofm.errors import ConfigError
    from cardiofm.models.config import ModelConfig, default_heads
    from cardiofm.training.config import EncodingConfig, TrainConfig
    from cardiofm.training.trainer import load_training_samples
    from cardiofm.training.trainer import train as run_training

    if model not in ("teacher", "student"):
        raise ConfigError(f"--model {model!r} must be teacher or student")
    if freeze not in ("none", "backbone", "last-layer"):
        raise ConfigError(f"--freeze {freeze!r} must be none, backbone or last-layer")
    if pseudo and len(pseudo) != len(dataset):
        raise ConfigError("give one --pseudo folder per --dataset")
    if heart_conditioning not in ("none", "onehot", "scaled"):
        raise ConfigError(f"--heart-conditioning {heart_conditioning!r} must be none, onehot or scaled")
    tasks = tuple(task)
    preprocessing = PreprocessingConfig(spacing_mm=spacing_mm if spacing_mm is not None else 1.0)
    encoding = EncodingConfig()
    if init is not None:
        model_cfg, preprocessing, encoding = _from_init(init, model, tasks, spacing_mm)
    elif model == "teacher":
        if len(tasks) != 1:
            raise ConfigError("a teacher learns exactly one task; pass one --task")
        model_cfg = ModelConfig(
            name="resunet-teacher",
            heads=default_heads(tasks[0]),
            filters=tuple(int(f) for f in filters.split(",")),
            heart_conditioning=heart_conditioning,
        )
    else:
        model_cfg = ModelConfig(
            name="swinunetr-student", feature_size=feature_size, heart_conditioning=heart_conditioning
        ).with_heads(tasks)
    if init is not None and heart_conditioning not in ("none", model_cfg.heart_conditioning):
        raise ConfigError(
            f"--init {init.name} is heart-conditioned {model_cfg.heart_conditioning!r}; leave --heart-conditioning out"
        )
    cfg = TrainConfig(
        tasks=tasks,
        steps=steps,
        batch_size=batch_size,
        patch_size=(patch, patch, patch),
        learning_rate=learning_rate,
        seed=seed,
        device=device,
        num_workers=workers,
        compile=compile_model,
        preprocessing=preprocessing,
        encoding=encoding,
    )
    samples = load_training_samples(
        list(dataset), cfg, pseudo_dirs=list(pseudo) or None, heart_conditioning=model_cfg.heart_conditioning
    )
    with progress_bar() as bar:
        job = bar.add_task(f"training {model_cfg.name}", total=steps)
        result = run_training(
            samples,
            cfg,
            model_cfg,
            out,
            init=init,
            freeze=freeze,  # type: ignore[arg-type]
            on_step=lambda _s, _r: bar.advance(job),
        )
    Console().print(
        f"{len(samples)} training case(s), {steps} steps in {result.seconds:.0f} s; "
        f"loss {result.mean_loss(first=True):.3f} → {result.mean_loss(first=False):.3f}; checkpoint {out}"
    )


def _from_init(
    init: Path, model: str, tasks: tuple[str, ...], spacing_mm: float | None
) -> tuple[ModelConfig, PreprocessingConfig, EncodingConfig]:
    """Model config (with heads added for ``tasks``), preprocessing and encoding of an ``--init`` checkpoint."""
    from cardiofm.errors import ConfigError
    from cardiofm.models.config import STUDENT, TEACHER
    from cardiofm.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(init)
    expected = TEACHER if model == "teacher" else STUDENT
    if ckpt.model_config.name != expected:
        raise ConfigError(
            f"--init {init.name} holds a {ckpt.model_config.name}, not a {expected}; pass the matching --model"
        )
    pre = ckpt.train_config.preprocessing
    if spacing_mm is not None and abs(spacing_mm - pre.spacing_mm) > 1e-6:
        raise ConfigError(
            f"--init {init.name} was trained at {pre.spacing_mm} mm; a fine-tune keeps the checkpoint's "
            "preprocessing: leave --spacing-mm out"
        )
    return ckpt.model_config.with_heads(tasks), pre, ckpt.train_config.encoding


def pseudolabel(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Teacher checkpoint."),
    dataset: Path = typer.Option(..., "--dataset", help="Site dataset to pseudo-label (every case)."),
    out: Path = typer.Option(..., "--out", help="Folder for the pseudo-labels."),
) -> None:
    """Run a teacher on every case of a site dataset and store compact soft labels and decoded points.

    For local training (`cardiofm train --pseudo OUT`). In a federation use `cardiofm site pseudolabel`:
    it writes the layout (and teachers.json) the site's distill stage reads.
    """
    from cardiofm.training.data import load_manifest
    from cardiofm.training.pseudolabel import pseudolabel_dataset

    n = len(load_manifest(dataset).cases)
    with progress_bar() as bar:
        job = bar.add_task("pseudo-labelling", total=n)
        written = pseudolabel_dataset(checkpoint, dataset, out, on_case=lambda _c: bar.advance(job))
    Console().print(f"pseudo-labels for {n} case(s) in {out}: {written}")


def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint to evaluate."),
    dataset: Path = typer.Option(..., "--dataset", help="Site dataset."),
    split: str = typer.Option("test", "--split", help="test, train or all."),
    phantom_truth: Path | None = typer.Option(
        None, "--phantom-truth", help="Synthetic federation folder: evaluate against its ground truth."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
) -> None:
    """Landmark errors (mm; median, IQR, failure rate) and Dice of mask heads (calcification, coronaries)."""
    from cardiofm.constants import MASK_TASKS
    from cardiofm.evaluation.evaluate import dataset_truth, evaluate_dataset
    from cardiofm.evaluation.evaluate import phantom_truth as truth_from_phantoms

    truth = truth_from_phantoms(phantom_truth) if phantom_truth is not None else dataset_truth
    report = evaluate_dataset(checkpoint, dataset, split=split, truth=truth)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, default=float))
    table = Table(title=f"{checkpoint.name} on {dataset.name} ({split}, {report['cases']} cases)")
    for col in ("task", "landmark", "n", "median mm", "mean mm", "IQR mm", "failure rate"):
        table.add_column(col)
    for task, summary in report.items():
        if not isinstance(summary, dict) or "per_landmark" not in summary:
            continue
        for name, s in {**summary["per_landmark"], "all": summary["pooled"]}.items():
            table.add_row(
                task,
                name,
                str(s["n"]),
                f"{s['median_mm']:.2f}",
                f"{s['mean_mm']:.2f}",
                f"{s['q25_mm']:.2f}–{s['q75_mm']:.2f}",
                f"{s['failure_rate']:.2f}",
            )
    Console().print(table)
    for task in MASK_TASKS:
        masks = report.get(task)
        if isinstance(masks, dict):
            Console().print(
                f"{task} Dice: mean {masks['dice_mean']:.3f}, median {masks['dice_median']:.3f} "
                f"over {masks['n']} case(s)"
            )

"""Model-card facts (typed) and the release's two documents: ``docs/MODEL_CARD.md`` and ``docs/README.md``.

The facts are counts and metrics only: the number of sites and labelled cases per task, metrics per site
group. No site name, case id or patient datum has a field here, so none can reach a card.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cardiofm import __version__
from cardiofm.training.checkpoint import Checkpoint

#: Metric group names the card explains (other group names are printed as given).
GROUP_TITLES = {
    "training_sites_test": "training sites, their frozen test splits",
    "held_out_sites": "held-out sites (never trained on their labels)",
}
NO_METRICS = "see the evaluation report"


class TaskData(BaseModel):
    """How much labelled data trained one head."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sites: int = Field(ge=0)
    cases: int = Field(ge=0)


class GroupMetrics(BaseModel):
    """Metrics of one site group (e.g. training sites' test splits, held-out sites)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sites: int = Field(ge=0)
    cases: int | None = Field(default=None, ge=0)
    #: metric name → value, e.g. ``mean-mm-landmarks`` (mm), ``failure-rate-landmarks``, ``dice-calcification``.
    metrics: dict[str, float] = Field(default_factory=dict)


class CardFacts(BaseModel):
    """What the caller knows about the model for its card.

    Attributes
    ----------
    version
        The release's own version (semantic, ``X.Y.Z``).
    data
        Task → sites and labelled cases that trained its head.
    metrics
        Site group → metrics; conventional groups are ``training_sites_test`` and ``held_out_sites``. Empty:
        the card says :data:`NO_METRICS`.
    phantom_trained
        True: trained on synthetic phantoms only; None: not recorded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "cardiofm cardiac-CT foundation model"
    version: str = Field(default=__version__, pattern=r"^\d+\.\d+\.\d+([-+].*)?$")
    authors: str = "the cardiofm consortium"
    copyright: str = "Copyright (c) the cardiofm consortium"
    description: str = (
        "Multi-head network for pre-TAVI cardiac CT: aortic-root landmarks (hinge points, coronary ostia), "
        "membranous septum points and aortic-root calcification, trained federatedly across hospitals."
    )
    data: dict[str, TaskData] = Field(default_factory=dict)
    training_sites: int | None = Field(default=None, ge=0)
    held_out_sites: int | None = Field(default=None, ge=0)
    metrics: dict[str, GroupMetrics] = Field(default_factory=dict)
    metrics_note: str = NO_METRICS
    phantom_trained: bool | None = None
    changelog: dict[str, str] = Field(default_factory=dict)


def render_model_card(ckpt: Checkpoint, facts: CardFacts, sha256: str) -> str:
    """``docs/MODEL_CARD.md``: data, metrics per site group, intended use, limits, how to run it."""
    pre = ckpt.train_config.preprocessing
    lines = [
        f"# Model card: {facts.name} {facts.version}",
        "",
        facts.description,
        "",
        "## Model",
        "",
        f"- architecture: `{ckpt.model_config.name}`, heads {', '.join(f'`{h}`' for h in ckpt.model_config.heads)}",
        f"- heart conditioning: `{ckpt.model_config.heart_conditioning}`",
        f"- weights: `models/model.safetensors`, sha256 `{sha256}`",
        f"- built with cardiofm {__version__} (trained with {ckpt.created_with})",
        "",
        "## Data",
        "",
        *_data_lines(facts),
        "",
        "## Metrics per site group",
        "",
        *_metric_lines(facts),
        "",
        "## Intended use",
        "",
        (
            "Research, and support of TAVI planning by trained readers, who check every landmark and measurement. "
            "It is **not a diagnostic device**, is not cleared or certified as a medical device, and must not be "
            "used alone to decide on a patient's treatment."
        ),
        "",
        "## Limits",
        "",
        *_limit_lines(facts),
        (
            f"- Input: contrast-enhanced cardiac CT only, cropped to the heart (margin {pre.crop_margin_mm:g} mm) "
            f"and resampled to isotropic {pre.spacing_mm:g} mm voxels; intensities clipped to "
            f"[{pre.hu_clip_low:g}, {pre.hu_clip_high:g}] HU and standardised (mean {pre.mean_hu:g} HU, "
            f"std {pre.std_hu:g} HU)."
        ),
        (
            f"- Calcification is segmented at the {pre.spacing_mm:g} mm grid: deposits smaller than a voxel are "
            "missed or blurred, so calcium volumes are coarse."
        ),
        "- Non-contrast, ECG-untriggered, paediatric or post-implant scans are outside what it was trained on.",
        "",
        "## How to run it",
        "",
        "With cardiofm: `cardiofm predict --model <this folder> ...` (the folder loads like a checkpoint).",
        "As a MONAI bundle: see `docs/README.md`.",
        "",
    ]
    return "\n".join(lines)


def _data_lines(facts: CardFacts) -> list[str]:
    lines = []
    if facts.training_sites is not None:
        lines.append(f"- training sites: {facts.training_sites}")
    if facts.held_out_sites is not None:
        lines.append(f"- held-out sites: {facts.held_out_sites}")
    if facts.data:
        lines += ["", "| task | sites | labelled cases |", "|---|---|---|"]
        lines += [f"| {task} | {d.sites} | {d.cases} |" for task, d in facts.data.items()]
    if not lines:
        lines.append("- not recorded in this release")
    return lines


def _metric_lines(facts: CardFacts) -> list[str]:
    if not facts.metrics:
        return [f"No metrics recorded with this release: {facts.metrics_note}."]
    lines: list[str] = []
    for group, result in facts.metrics.items():
        cases = f", {result.cases} cases" if result.cases is not None else ""
        lines += [f"### {GROUP_TITLES.get(group, group)} ({result.sites} sites{cases})", ""]
        lines += [f"- {name}: {value:.4g}" for name, value in result.metrics.items()] or ["- none"]
        lines.append("")
    return lines


def _limit_lines(facts: CardFacts) -> list[str]:
    if facts.phantom_trained:
        return ["- **Trained on synthetic phantoms only**: not validated on patient CT; use for testing the pipeline."]
    if facts.phantom_trained is None:
        return ["- The origin of the training data (patient CT or phantoms) is not recorded in this release."]
    return []


def render_readme(ckpt: Checkpoint, facts: CardFacts) -> str:
    """``docs/README.md``: the bundle's layout and its two MONAI commands."""
    pre = ckpt.train_config.preprocessing
    return "\n".join(
        [
            f"# {facts.name} {facts.version} (MONAI bundle)",
            "",
            (
                "Layout: `configs/metadata.json`, `configs/inference.json`, `configs/cardiofm.json` (model, "
                "preprocessing and training configs, label names, weights sha256), `configs/meta_schema.json`, "
                "`models/model.safetensors`, `docs/MODEL_CARD.md`, `LICENSE`."
            ),
            "",
            "Inference (from this folder; needs the cardiofm package installed):",
            "",
            "```",
            "python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\",
            "    --bundle_root . --input_image ct.nii.gz --output_dir out",
            "```",
            "",
            (
                "The input is a heart-cropped CT NIfTI in HU. It is reoriented to the model's axis order and "
                f"resampled to {pre.spacing_mm:g} mm (no heart crop is done here: crop as in `cardiofm prepare`). "
                "A heart-conditioned model also needs `--heart_image heart.nii.gz` (labels 0..7). "
                "`--device cuda` runs on a GPU."
            ),
            "",
            (
                "Outputs in `output_dir`: `landmarks.json` (LPS mm), `prediction.json` (landmark confidences, "
                "grid), `foreground-<head>.nii.gz` (1 − background probability per head) and `mask-<head>.nii.gz` "
                "for segmentation heads, all on the resampled grid."
            ),
            "",
            "Offline metadata check (the schema ships with the bundle, nothing is downloaded):",
            "",
            "```",
            (
                "python -m monai.bundle verify_metadata --meta_file configs/metadata.json "
                "--filepath configs/meta_schema.json"
            ),
            "```",
            "",
        ]
    )

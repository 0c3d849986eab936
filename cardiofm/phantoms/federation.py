"""Synthetic federations of hospitals: PACS folders, site annotations, and evaluation-only ground truth.

Layout written under ``out``::

    federation.json                      evaluation only: sites, studies, correct series, labelled tasks
    ground_truth/<case-id>/              every label of every case, on the grid of the correct series
        landmarks.json  calcification.nii.gz  heart.nii.gz  coronaries.nii.gz
    <site-id>/site.yaml                  what the site's admin knows (annotation formats, label ids, phase)
    <site-id>/pacs/...                   DICOM studies, several series each, site-specific layout
    <site-id>/annotations/...            partial labels in the site's own tool formats (coronary-artery
                                         masks at the ``coronary_sites`` only)

Everything is deterministic given the seed: each case draws from its own ``SeedSequence`` child, so
a case does not change when other settings (number of sites, cases) change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from pydicom.uid import generate_uid

from cardiofm.constants import DOWNSTREAM_TASKS, MASK_TASKS, TASK_LANDMARKS, TASKS
from cardiofm.contracts.federation import FederationRecord, SeriesRecord, SiteRecord, StudyRecord
from cardiofm.contracts.landmarks import Point3
from cardiofm.contracts.site import SiteConfig
from cardiofm.imaging.nifti import save_nifti
from cardiofm.labels.formats import write_landmarks_json
from cardiofm.phantoms.anatomy import Anatomy, sample_anatomy
from cardiofm.phantoms.dicom_writer import PatientInfo, SeriesInfo, StudyInfo, write_ct_series
from cardiofm.phantoms.render import Contrast, render
from cardiofm.phantoms.scanners import (
    DISTRACTOR_ORDER,
    ScannerProfile,
    SeriesKind,
    SeriesPlan,
    StudySize,
    plan_series,
    site_profile,
)
from cardiofm.phantoms.site_conventions import AnnotationStyle, make_style, write_case_landmarks, write_site_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FederationSettings:
    """What to generate. ``held_out_sites`` sites at the end of the list hold no labels (test sites).

    ``coronary_sites``: indices of training sites that also label the downstream ``coronaries`` task
    (coronary-artery masks as NIfTI annotations, for fine-tuning a head); other sites are unaffected.
    """

    sites: int = 3
    cases_per_site: int = 6
    seed: int = 0
    size: StudySize = field(default_factory=lambda: StudySize.preset("small"))
    series_per_study: int = 5
    held_out_sites: int | None = None
    label_fraction: tuple[float, float] = (0.6, 0.95)
    coronary_sites: tuple[int, ...] = (0,)

    def n_held_out(self) -> int:
        """Held-out sites: as given, else one when there are at least three sites."""
        if self.held_out_sites is not None:
            return self.held_out_sites
        return 1 if self.sites >= 3 else 0


def training_site_tasks(t: int) -> list[str]:
    """Tasks labelled at the ``t``-th training site: skewed like the paper's Fig. 2.

    Hinge points and ostia at most sites, septum and calcification at a few, not fully overlapping;
    site 0 holds every task so each task has at least one holder.
    """
    tasks = []
    if t % 4 != 3:
        tasks.append("landmarks")
    if t % 3 == 0:
        tasks.append("septum")
    if t % 3 == 1 or t == 0:
        tasks.append("calcification")
    return tasks


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _series_kinds(n: int) -> list[SeriesKind]:
    if n < 1:
        raise ValueError("series_per_study must be at least 1 (the contrast series)")
    return ["main", *DISTRACTOR_ORDER[: n - 1]]


def generate_study(
    out_pacs: Path,
    gt_dir: Path | None,
    profile: ScannerProfile,
    size: StudySize,
    series_per_study: int,
    rng: np.random.Generator,
    ids: dict[str, str],
) -> tuple[StudyRecord, Anatomy, dict[str, Point3]]:
    """Render and write one study; ``ids`` holds site_id, case_id, patient_id, accession, seed_key.

    Returns the study record (``tasks_labelled`` empty; the caller fills it), the anatomy, and the
    landmarks (LPS mm).
    """
    anatomy = sample_anatomy(rng)
    recon_centre = np.array([anatomy.heart_centre[0], anatomy.heart_centre[1], anatomy.root.centre[2] - 35.0])
    recon_centre[:2] += rng.normal(0, 6, size=2)
    recon_centre[2] += rng.normal(0, 6)
    key = ids["seed_key"]
    patient = PatientInfo(
        patient_id=ids["patient_id"],
        patient_name=f"{ids['site_id'].upper().replace('-', '')}^{ids['patient_id'].replace('-', '')}",
        sex=anatomy.sex,
        age_years=anatomy.age_years,
    )
    day = 1 + int(rng.integers(0, 28))
    study = StudyInfo(
        study_uid=_uid(key, "study"),
        study_id=str(1000 + int(rng.integers(0, 9000))),
        accession_number=ids["accession"],
        description="CT Herz TAVI" if profile.manufacturer == "SIEMENS" else "CARDIAC CTA TAVI PLANNING",
        date=f"2030{1 + int(rng.integers(0, 12)):02d}{day:02d}",
        time=f"{8 + int(rng.integers(0, 9)):02d}{int(rng.integers(0, 60)):02d}00",
        institution_name=f"Synthetic Hospital {ids['site_id']}",
    )
    level = profile.contrast_hu * float(rng.uniform(0.85, 1.15))
    frame_uid = _uid(key, "frame")
    kinds = _series_kinds(series_per_study)
    numbers = rng.permutation(np.arange(1, len(kinds) + 1)) * (100 if profile.layout == "flat" else 1) + 1
    series_records: list[SeriesRecord] = []
    correct_uid: str | None = None
    main_plan: SeriesPlan | None = None
    for n, kind in enumerate(kinds):
        plan = plan_series(kind, profile, size, recon_centre, rng)
        contrast = Contrast.enhanced_scan(level, profile.timing) if plan.contrast else Contrast.non_contrast()
        out = render(
            anatomy,
            plan.grid,
            contrast,
            plan.noise_hu,
            rng,
            with_labels=kind == "main",
            fov_mm=profile.fov_mm if plan.image_type[2] == "AXIAL" else None,
        )
        series_uid = _uid(key, "series", kind)
        info = SeriesInfo(
            series_uid=series_uid,
            frame_of_reference_uid=frame_uid,
            series_number=int(numbers[n]),
            description=plan.description,
            image_type=plan.image_type,
            slice_thickness_mm=plan.slice_thickness_mm,
            convolution_kernel=plan.kernel,
            contrast_agent=("Iomeprol 400" if plan.contrast and profile.contrast_tag else None),
            cardiac_phase_percent=float(plan.phase_percent) if plan.phase_percent is not None else None,
            kvp=profile.kvp,
            manufacturer=profile.manufacturer,
            manufacturer_model=profile.model,
        )
        if profile.layout == "nested":
            series_dir = out_pacs / ids["patient_id"] / f"ST{study.study_id}" / f"SE{info.series_number:04d}"
            prefix = "IM"
        else:
            series_dir = out_pacs / ids["patient_id"]
            prefix = f"{info.series_number:04d}_"
        write_ct_series(out.hu, plan.grid, patient, study, info, series_dir, file_prefix=prefix)
        series_records.append(
            SeriesRecord(series_uid=series_uid, kind=kind, description=plan.description, slices=plan.grid.shape[2])
        )
        if kind == "main":
            correct_uid, main_plan = series_uid, plan
            if gt_dir is not None:
                _write_ground_truth(gt_dir, plan, out.heart, out.calcification, out.coronaries, anatomy)
    if main_plan is None:  # pragma: no cover - kinds always start with "main"
        raise RuntimeError("no main series planned")
    landmarks = {name: (float(p[0]), float(p[1]), float(p[2])) for name, p in anatomy.landmarks.items()}
    record = StudyRecord(
        case_id=ids["case_id"],
        patient_id=ids["patient_id"],
        study_uid=study.study_uid,
        correct_series_uid=correct_uid,
        tasks_labelled=[],
        calcium_burden=anatomy.calcium_burden,
        series=series_records,
    )
    return record, anatomy, landmarks


def _write_ground_truth(gt_dir: Path, plan: SeriesPlan, heart: object, calc: object, cor: object, a: Anatomy) -> None:
    gt_dir.mkdir(parents=True, exist_ok=True)
    write_landmarks_json(
        gt_dir / "landmarks.json", {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in a.landmarks.items()}
    )
    for name, arr in (("heart", heart), ("calcification", calc), ("coronaries", cor)):
        save_nifti(gt_dir / f"{name}.nii.gz", np.asarray(arr, dtype=np.uint8), plan.grid)


def _site_id(index: int) -> str:
    return f"site-{index + 1:02d}"


def generate_federation(
    out: Path, settings: FederationSettings, progress: Callable[[str], None] | None = None
) -> FederationRecord:
    """Generate a whole federation under ``out`` and write ``federation.json``; returns its record."""
    out.mkdir(parents=True, exist_ok=True)
    n_held = settings.n_held_out()
    if not 0 <= n_held < settings.sites:
        raise ValueError(f"held_out_sites={n_held} must leave at least one training site of {settings.sites}")
    bad = [s for s in settings.coronary_sites if not 0 <= s < settings.sites - n_held]
    if bad:
        raise ValueError(
            f"coronary_sites {bad} are not training sites (0..{settings.sites - n_held - 1}); "
            "held-out sites hold no labels"
        )
    sites: list[SiteRecord] = []
    for s in range(settings.sites):
        site_id = _site_id(s)
        held_out = s >= settings.sites - n_held
        tasks = [] if held_out else training_site_tasks(s) + (["coronaries"] if s in settings.coronary_sites else [])
        site_rng = np.random.default_rng(np.random.SeedSequence([settings.seed, s, 0]))
        profile = site_profile(s, site_rng)
        style = make_style(
            s,
            site_rng,
            label_landmarks=any(t in TASK_LANDMARKS for t in tasks),
            label_calcium="calcification" in tasks,
            label_coronaries="coronaries" in tasks,
        )
        site_dir = out / site_id
        lo, hi = settings.label_fraction
        fraction = float(site_rng.uniform(lo, hi))
        studies: list[StudyRecord] = []
        table_rows: dict[str, dict[str, Point3]] = {}
        for c in range(settings.cases_per_site):
            case_rng = np.random.default_rng(np.random.SeedSequence([settings.seed, s, c + 1]))
            patient_id = f"P{s + 1:02d}{c + 1:04d}-{int(case_rng.integers(1000, 9999))}"
            ids = {
                "site_id": site_id,
                "case_id": f"{site_id}-case-{c + 1:04d}",
                "patient_id": patient_id,
                "accession": f"A{int(case_rng.integers(10**7, 10**8))}",
                "seed_key": f"{settings.seed}/{s}/{c}",
            }
            record, _anatomy, points = generate_study(
                site_dir / "pacs",
                out / "ground_truth" / ids["case_id"],
                profile,
                settings.size,
                settings.series_per_study,
                case_rng,
                ids,
            )
            labelled = [t for t in tasks if case_rng.random() < fraction]
            key = ids["accession"] if style.annotations.match_by == "AccessionNumber" else patient_id
            _write_annotations(
                site_dir, style, key, labelled, points, out / "ground_truth" / ids["case_id"], table_rows
            )
            studies.append(record.model_copy(update={"tasks_labelled": labelled}))
            if progress is not None:
                progress(f"{site_id} {ids['case_id']}")
        spec = style.landmark_spec
        if spec is not None and spec.format == "csv":
            write_site_table(site_dir, spec, table_rows)
        site_cfg = SiteConfig(
            site_id=site_id, annotations=style.annotations, preferred_phase_percent=profile.preferred_phase_percent
        )
        site_dir.mkdir(parents=True, exist_ok=True)
        (site_dir / "site.yaml").write_text(yaml.safe_dump(site_cfg.model_dump(mode="json"), sort_keys=False))
        sites.append(
            SiteRecord(
                site_id=site_id,
                folder=site_id,
                held_out=held_out,
                tasks=tasks,
                scanner_profile={k: v for k, v in profile.__dict__.items() if k != "descriptions"},
                annotation_format=None if not tasks else style.name,
                studies=studies,
            )
        )
    federation = FederationRecord(
        seed=settings.seed,
        size={"name": settings.size.name, "matrix": settings.size.matrix, "slices": settings.size.slices},
        series_per_study=settings.series_per_study,
        tasks=[*TASKS, *(t for t in DOWNSTREAM_TASKS if any(t in site.tasks for site in sites))],
        sites=sites,
    )
    (out / "federation.json").write_text(json.dumps(federation.model_dump(mode="json"), indent=2))
    return federation


def _write_annotations(
    site_dir: Path,
    style: AnnotationStyle,
    key: str,
    labelled: list[str],
    points: dict[str, Point3],
    gt_dir: Path,
    table_rows: dict[str, dict[str, Point3]],
) -> None:
    """Write the labels this case has at its site, in the site's formats."""
    names = [n for t in labelled for n in TASK_LANDMARKS.get(t, ())]
    spec = style.landmark_spec
    if names and spec is not None:
        subset = {n: points[n] for n in names}
        if spec.format == "csv":
            table_rows[key] = subset
        else:
            write_case_landmarks(site_dir, spec, key, subset)
    for task in MASK_TASKS:
        mask_spec = style.annotations.mask_spec(task)
        if task in labelled and mask_spec is not None:
            target = site_dir / mask_spec.path / mask_spec.file_pattern.format(key=key)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((gt_dir / f"{task}.nii.gz").read_bytes())

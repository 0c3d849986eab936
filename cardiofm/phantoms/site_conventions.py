"""How each synthetic hospital keeps its annotations: tool format, label ids, file naming.

Sites differ the way real ones do: one exports MITK point sets with numeric ids in its own order,
one keeps 3D Slicer markups in RAS, one a German Excel table with ``;`` and decimal commas, one
Slicer files named after the paper's code (ACC, RCA, LCA). Calcification masks, and the coronary-artery
masks of a site that labels the downstream ``coronaries`` task, are NIfTI files on the grid of the
series they were drawn on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cardiofm.constants import LANDMARK_NAMES
from cardiofm.contracts.landmarks import Point3
from cardiofm.contracts.site import CsvLayout, LandmarkAnnotations, MaskAnnotations, SiteAnnotations
from cardiofm.labels.formats import write_csv, write_mps, write_mrk_json
from cardiofm.labels.labelmap import CONVENTIONS

#: Annotation styles, assigned to sites in turn.
STYLES: tuple[str, ...] = ("mitk", "slicer-ras", "csv-german", "slicer-reference")


@dataclass(frozen=True)
class AnnotationStyle:
    """A site's annotation habits, and the ``site.yaml`` section that describes them."""

    name: str
    annotations: SiteAnnotations

    @property
    def landmark_spec(self) -> LandmarkAnnotations | None:
        """The landmark section, or None when the site labels no landmark task."""
        return self.annotations.landmarks


def make_style(
    index: int, rng: np.random.Generator, label_landmarks: bool, label_calcium: bool, label_coronaries: bool = False
) -> AnnotationStyle:
    """Annotation style of site ``index``; the MITK id order is shuffled per site.

    ``label_coronaries`` adds a coronary-mask folder (NIfTI, like calcium masks); it draws nothing from
    ``rng``, so the rest of the site is the same with or without it.
    """
    name = STYLES[index % len(STYLES)]
    match_by = "AccessionNumber" if name == "csv-german" else "PatientID"
    landmarks: LandmarkAnnotations | None = None
    if label_landmarks:
        if name == "mitk":
            order = rng.permutation(len(LANDMARK_NAMES))
            label_map = {str(int(i)): LANDMARK_NAMES[n] for n, i in enumerate(order)}
            landmarks = LandmarkAnnotations(
                format="mps", path="annotations/landmarks", file_pattern="{key}.mps", label_map=label_map
            )
        elif name == "csv-german":
            layout = CsvLayout(
                delimiter=";",
                decimal=",",
                case_column="Fall",
                label_column="Punkt",
                x_column="X",
                y_column="Y",
                z_column="Z",
                encoding="cp1252",
            )
            landmarks = LandmarkAnnotations(
                format="csv",
                path="annotations/Landmarken.csv",
                label_map=dict(CONVENTIONS["german"].aliases),
                csv=layout,
            )
        else:
            convention = "verbose" if name == "slicer-ras" else "reference"
            landmarks = LandmarkAnnotations(
                format="mrk.json",
                path="annotations/points",
                file_pattern="{key}_points.mrk.json",
                coordinate_system="RAS" if name == "slicer-ras" else "LPS",
                label_map=dict(CONVENTIONS[convention].aliases),
            )
    calcium = MaskAnnotations(path="annotations/calcium", file_pattern="{key}_calc.nii.gz") if label_calcium else None
    coronaries = (
        MaskAnnotations(path="annotations/coronaries", file_pattern="{key}_coronaries.nii.gz")
        if label_coronaries
        else None
    )
    annotations = SiteAnnotations(match_by=match_by, landmarks=landmarks, calcification=calcium, coronaries=coronaries)
    return AnnotationStyle(name=name, annotations=annotations)


def _site_label_of(spec: LandmarkAnnotations) -> dict[str, str]:
    """Canonical name → the site's label (first alias in the map)."""
    out: dict[str, str] = {}
    for site_label, canonical in spec.label_map.items():
        out.setdefault(canonical, site_label)
    return out


def write_case_landmarks(site_dir: Path, spec: LandmarkAnnotations, key: str, points: Mapping[str, Point3]) -> None:
    """Write one case's landmarks in the site's own format (site-wide CSVs are written by :func:`write_site_table`)."""
    names = _site_label_of(spec)
    renamed = {names[name]: xyz for name, xyz in points.items()}
    folder = site_dir / spec.path
    if spec.format == "mps":
        write_mps(folder / spec.file_pattern.format(key=key), renamed, id_of={k: int(k) for k in renamed})
    elif spec.format == "mrk.json":
        write_mrk_json(folder / spec.file_pattern.format(key=key), renamed, coordinate_system=spec.coordinate_system)
    else:
        raise ValueError(f"format {spec.format} is written per site, not per case")


def write_site_table(site_dir: Path, spec: LandmarkAnnotations, rows: Mapping[str, Mapping[str, Point3]]) -> None:
    """Write a site-wide landmark table: ``rows`` maps the case key to its canonical points."""
    if spec.csv is None:
        raise ValueError("a CSV landmark spec needs a csv layout")
    names = _site_label_of(spec)
    renamed = {key: {names[n]: xyz for n, xyz in pts.items()} for key, pts in rows.items()}
    write_csv(site_dir / spec.path, renamed, spec.csv)

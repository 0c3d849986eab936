"""Scanner profiles, study sizes and the series a hospital's PACS holds for one cardiac CT study.

A site has one scanner profile: vendor strings, field of view, slice spacing, noise, contrast level
and timing, patient orientation, slice order, and its own habits for naming series. Every study holds
the contrast-enhanced series fit for TAVI planning (at the site's preferred cardiac phase) plus
distractors: a localizer, a native calcium-scoring series, another cardiac phase, a thick-slice
reconstruction and a derived multiplanar reformat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cardiofm.imaging.geometry import Grid, as_direction, as_point

SeriesKind = Literal["main", "localizer", "calcium-score", "other-phase", "thick", "mpr"]
#: Distractor kinds in the order they are added as ``series_per_study`` grows.
DISTRACTOR_ORDER: tuple[SeriesKind, ...] = ("localizer", "calcium-score", "other-phase", "thick", "mpr")

Orientation = Literal["HFS", "FFS", "HFP"]
_ORIENTATION_AXES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}


@dataclass(frozen=True)
class StudySize:
    """How big the generated studies are.

    ``matrix`` is the in-plane size of the main series; ``slices`` its slice count. The field of view
    and the z coverage stay anatomical (mm), so smaller sizes give coarser spacing.
    """

    name: str
    matrix: int
    slices: int

    @classmethod
    def preset(cls, name: str) -> StudySize:
        """``tiny`` (64² × 40), ``small`` (128² × 80, tests and demo) or ``full`` (512² × 300)."""
        presets = {"tiny": (64, 40), "small": (128, 80), "full": (512, 300)}
        if name not in presets:
            raise ValueError(f"unknown study size {name!r}; choose one of {sorted(presets)}")
        m, s = presets[name]
        return cls(name, m, s)


@dataclass(frozen=True)
class ScannerProfile:
    """One hospital's scanner and reconstruction habits."""

    name: str
    manufacturer: str
    model: str
    kernel: str
    kernel_calcium: str
    kvp: float
    fov_mm: float
    coverage_mm: float
    noise_hu: float
    contrast_hu: float
    timing: Literal["early", "optimal", "late"]
    orientation: Orientation
    slice_order: Literal["ascending", "descending"]
    preferred_phase_percent: int
    other_phase_percent: int
    #: Series-description templates per kind; ``{phase}``, ``{thk}`` and ``{kernel}`` are filled in.
    descriptions: dict[str, str]
    contrast_tag: bool
    layout: Literal["nested", "flat"]


#: The profile pool; sites draw from it in order, jittered per site.
PROFILES: tuple[ScannerProfile, ...] = (
    ScannerProfile(
        name="dual-source-a",
        manufacturer="SIEMENS",
        model="SOMATOM Force",
        kernel="Bv36",
        kernel_calcium="Qr36",
        kvp=100,
        fov_mm=200,
        coverage_mm=170,
        noise_hu=18,
        contrast_hu=420,
        timing="optimal",
        orientation="HFS",
        slice_order="descending",
        preferred_phase_percent=40,
        other_phase_percent=75,
        descriptions={
            "main": "TAVI Herz {thk} {kernel} {phase}%",
            "localizer": "Topogramm 0.6 T80f",
            "calcium-score": "CaScore {thk} {kernel}",
            "other-phase": "TAVI Herz {thk} {kernel} {phase}%",
            "thick": "TAVI Herz {thk} {kernel} {phase}%",
            "mpr": "TAVI MPR sag",
        },
        contrast_tag=True,
        layout="nested",
    ),
    ScannerProfile(
        name="wide-detector-b",
        manufacturer="GE MEDICAL SYSTEMS",
        model="Revolution CT",
        kernel="STANDARD",
        kernel_calcium="STANDARD",
        kvp=120,
        fov_mm=250,
        coverage_mm=160,
        noise_hu=26,
        contrast_hu=360,
        timing="late",
        orientation="FFS",
        slice_order="ascending",
        preferred_phase_percent=75,
        other_phase_percent=40,
        descriptions={
            "main": "Cardiac {phase}% {thk}mm",
            "localizer": "Scout",
            "calcium-score": "SmartScore {thk}mm",
            "other-phase": "Cardiac {phase}% {thk}mm",
            "thick": "Recon 2: Cardiac {thk}mm",
            "mpr": "Reformatted",
        },
        contrast_tag=False,
        layout="flat",
    ),
    ScannerProfile(
        name="spectral-c",
        manufacturer="Philips",
        model="IQon Spectral CT",
        kernel="XCB",
        kernel_calcium="B",
        kvp=120,
        fov_mm=220,
        coverage_mm=180,
        noise_hu=22,
        contrast_hu=390,
        timing="early",
        orientation="HFS",
        slice_order="ascending",
        preferred_phase_percent=40,
        other_phase_percent=78,
        descriptions={
            "main": "CTA Aortic Valve {phase}% iDose {thk}",
            "localizer": "Surview",
            "calcium-score": "Calcium Scoring {thk}",
            "other-phase": "CTA Aortic Valve {phase}% iDose {thk}",
            "thick": "CTA Aortic Valve {thk}mm MIP",
            "mpr": "MPR obl",
        },
        contrast_tag=True,
        layout="nested",
    ),
    ScannerProfile(
        name="area-detector-d",
        manufacturer="Canon Medical Systems",
        model="Aquilion ONE",
        kernel="FC43",
        kernel_calcium="FC12",
        kvp=100,
        fov_mm=240,
        coverage_mm=165,
        noise_hu=30,
        contrast_hu=340,
        timing="optimal",
        orientation="HFP",
        slice_order="descending",
        preferred_phase_percent=75,
        other_phase_percent=35,
        descriptions={
            "main": "Heart  {thk}  CE {phase}%",
            "localizer": "Scanogram",
            "calcium-score": "Heart Ca {thk}",
            "other-phase": "Heart  {thk}  CE {phase}%",
            "thick": "Heart  {thk}  CE",
            "mpr": "MPR",
        },
        contrast_tag=True,
        layout="flat",
    ),
)


def site_profile(index: int, rng: np.random.Generator) -> ScannerProfile:
    """The profile of site ``index``: drawn from the pool in turn, with site-specific jitter."""
    base = PROFILES[index % len(PROFILES)]
    return ScannerProfile(
        **{
            **base.__dict__,
            "name": f"{base.name}-{index + 1:02d}",
            "fov_mm": float(np.clip(base.fov_mm * rng.uniform(0.92, 1.1), 180, 300)),
            "coverage_mm": float(base.coverage_mm * rng.uniform(0.95, 1.08)),
            "noise_hu": float(base.noise_hu * rng.uniform(0.85, 1.2)),
            "contrast_hu": float(base.contrast_hu * rng.uniform(0.9, 1.1)),
        }
    )


@dataclass(frozen=True)
class SeriesPlan:
    """What one series of a study looks like before rendering."""

    kind: SeriesKind
    grid: Grid
    slice_thickness_mm: float
    contrast: bool
    phase_percent: int | None
    image_type: tuple[str, ...]
    description: str
    kernel: str
    noise_hu: float


def _axial_grid(
    centre: np.ndarray, profile: ScannerProfile, matrix: int, fov_mm: float, n_slices: int, spacing_k: float
) -> Grid:
    col_i, col_j = _ORIENTATION_AXES[profile.orientation]
    di, dj = np.asarray(col_i), np.asarray(col_j)
    normal = np.cross(di, dj)
    dk = normal if (normal[2] > 0) == (profile.slice_order == "ascending") else -normal
    spacing = fov_mm / matrix
    direction = np.stack([di, dj, dk], axis=1)
    half = np.array([spacing * (matrix - 1) / 2, spacing * (matrix - 1) / 2, spacing_k * (n_slices - 1) / 2])
    origin = centre - direction @ half
    return Grid(
        shape=(matrix, matrix, n_slices),
        spacing_mm=(spacing, spacing, spacing_k),
        origin_lps_mm=as_point(origin),
        direction=as_direction(direction),
    )


def _inconsistent(text: str, rng: np.random.Generator) -> str:
    """Per-study variation of a description, as technologists type them: case, separators, spacing."""
    roll = rng.random()
    if roll < 0.2:
        text = text.upper()
    elif roll < 0.3:
        text = text.replace(" ", "_")
    elif roll < 0.4:
        text = f" {text}  "
    return text


def plan_series(
    kind: SeriesKind, profile: ScannerProfile, size: StudySize, recon_centre: np.ndarray, rng: np.random.Generator
) -> SeriesPlan:
    """Geometry and tags of one series of ``kind`` for a study centred at ``recon_centre`` (LPS mm)."""
    base_k = profile.coverage_mm / size.slices
    thk_main = round(base_k * 1.1, 2)  # reconstructions overlap slightly: thickness ≥ spacing
    fov = profile.fov_mm
    desc = profile.descriptions[kind]
    phase: int | None = profile.preferred_phase_percent
    contrast = True
    kernel = profile.kernel
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    if kind == "main":
        grid = _axial_grid(recon_centre, profile, size.matrix, fov, size.slices, base_k)
        thk = thk_main
    elif kind == "other-phase":
        phase = profile.other_phase_percent
        grid = _axial_grid(recon_centre, profile, size.matrix, fov, size.slices, base_k)
        thk = thk_main
    elif kind == "thick":
        factor = 3
        grid = _axial_grid(recon_centre, profile, size.matrix, fov, max(size.slices // factor, 2), base_k * factor)
        thk = round(base_k * factor, 2)
    elif kind == "calcium-score":
        contrast = False
        phase = 70
        kernel = profile.kernel_calcium
        n = max(int(size.slices * 0.4), 2)
        grid = _axial_grid(recon_centre, profile, size.matrix, fov, n, base_k * 2.5 * 0.85)
        thk = round(base_k * 2.5, 2)
    elif kind == "localizer":
        contrast, phase = False, None
        image_type = ("ORIGINAL", "PRIMARY", "LOCALIZER")
        m = size.matrix
        spacing = 2.0 * fov / m
        direction = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T  # coronal: rows run feet-ward
        half = np.array([spacing * (m - 1) / 2, spacing * (m - 1) / 2, 0.0])
        origin = recon_centre - direction @ half
        grid = Grid(
            (m, m, 1),
            (spacing, spacing, spacing),
            as_point(origin),
            as_direction(direction),
        )
        thk = round(spacing, 2)
    else:  # mpr: derived sagittal reformat
        image_type = ("DERIVED", "SECONDARY", "MPR")
        m = size.matrix
        spacing = fov / m
        direction = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]).T
        n = max(size.slices // 4, 2)
        half = np.array([spacing * (m - 1) / 2, spacing * (m - 1) / 2, 2.0 * (n - 1) / 2])
        origin = recon_centre - direction @ half
        grid = Grid(
            (m, m, n),
            (spacing, spacing, 2.0),
            as_point(origin),
            as_direction(direction),
        )
        thk = 2.0
    text = _inconsistent(desc.format(phase=phase if phase is not None else "", thk=f"{thk:.1f}", kernel=kernel), rng)
    noise = profile.noise_hu * (1.6 if kind == "calcium-score" else 0.6 if kind == "thick" else 1.0)
    return SeriesPlan(kind, grid, thk, contrast, phase, image_type, text, kernel, float(noise * rng.uniform(0.9, 1.1)))

"""Predicted landmarks as files for viewers: MITK point set, 3D Slicer markups and a CSV table.

All three hold DICOM patient coordinates (LPS, mm) and are written by the project's own annotation writers
(:mod:`cardiofm.labels.formats`), so the importers read them back unchanged:

* ``landmarks.mps``: MITK point ids are the zero-based positions in
  :data:`~cardiofm.constants.LANDMARK_NAMES` (RCC = 0, ..., MS2 = 6; the ``"zero_based"`` label-map
  convention); its ``Geometry3D`` is the CT's grid, so MITK aligns the points with the image. MITK cannot
  store a point without a position, so missing landmarks are left out.
* ``landmarks.mrk.json``: canonical labels, ``coordinateSystem: LPS``; a missing landmark is a control point
  with ``positionStatus: "undefined"`` (what Slicer writes for an unplaced point).
* ``landmarks.csv``: the ``default`` layout (``label,x,y,z``); a missing landmark has empty coordinates.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cardiofm.constants import LANDMARK_NAMES
from cardiofm.contracts.landmarks import Point3
from cardiofm.contracts.measurements import PredictedLandmarks
from cardiofm.imaging.geometry import Grid
from cardiofm.labels.formats import CSV_LAYOUTS, write_csv, write_mps, write_mrk_json

logger = logging.getLogger(__name__)

#: MITK point id of each canonical landmark name.
MITK_IDS: dict[str, int] = {name: n for n, name in enumerate(LANDMARK_NAMES)}


def _with_missing(landmarks: PredictedLandmarks) -> dict[str, Point3 | None]:
    """Placed and missing landmarks in canonical order; missing ones without a position."""
    known: dict[str, Point3 | None] = {**landmarks.points, **dict.fromkeys(landmarks.missing)}
    return {name: known[name] for name in LANDMARK_NAMES if name in known}


def write_viewer_files(
    out_dir: Path, landmarks: PredictedLandmarks, grid: Grid, *, stem: str = "landmarks"
) -> list[Path]:
    """Write ``<stem>.mps``, ``<stem>.mrk.json`` and ``<stem>.csv`` into ``out_dir``.

    Parameters
    ----------
    out_dir:
        Output folder (created when needed).
    landmarks:
        The predicted points, LPS mm.
    grid:
        Grid of the CT the points were predicted on (e.g. the NIfTI from dcm2niix), written as the MITK
        point set's geometry.
    stem:
        Base name of the three files.

    Returns
    -------
    list[Path]
        The files written: MITK, Slicer, CSV.
    """
    out = Path(out_dir)
    points = _with_missing(landmarks)
    paths = [
        write_mps(out / f"{stem}.mps", landmarks.points, id_of=MITK_IDS, geometry=grid),
        write_mrk_json(out / f"{stem}.mrk.json", points, coordinate_system="LPS"),
        write_csv(out / f"{stem}.csv", {"": points}, CSV_LAYOUTS["default"]),
    ]
    logger.info(
        "wrote %d landmark(s) (%d missing) for MITK, Slicer and CSV", len(landmarks.points), len(landmarks.missing)
    )
    return paths

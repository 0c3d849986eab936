"""MITK, 3D Slicer and CSV landmark files, read back through the project's own readers."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from export_cases import MODEL, CtCase

from cardiofm.contracts.measurements import PredictedLandmarks
from cardiofm.exports.viewers import write_viewer_files
from cardiofm.labels.formats import CSV_LAYOUTS, apply_label_map, read_csv, read_mps, read_mrk_json
from cardiofm.labels.labelmap import CONVENTIONS

LANDMARKS = PredictedLandmarks(
    points={"RCC": (1.5, 14.25, 33.0), "NCC": (-2.125, 18.0, 31.75), "MS2": (0.333, 16.1, 36.2)},
    confidence={"RCC": 0.9, "NCC": 0.8, "MS2": 0.7},
    missing=["LCC", "RCO"],
    model=MODEL,
)


def _geometry(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """IndexToWorld matrix and Offset of a MITK point set, as written."""
    element = ET.parse(path).getroot().find("point_set/time_series/Geometry3D")
    assert element is not None
    matrix_el, offset_el = element.find("IndexToWorld"), element.find("Offset")
    assert matrix_el is not None
    assert offset_el is not None
    matrix = np.array([[float(matrix_el.attrib[f"m_{r}_{c}"]) for c in range(3)] for r in range(3)])
    return matrix, np.array([float(offset_el.attrib[a]) for a in "xyz"])


@pytest.mark.parametrize("orientation", ["ffs", "reversed_slices"])
def test_viewer_files_round_trip(make_case: Callable[[str], CtCase], tmp_path: Path, orientation: str) -> None:
    grid = make_case(orientation).nifti_grid
    mps, mrk, csv = write_viewer_files(tmp_path / "viewers", LANDMARKS, grid)
    assert [p.name for p in (mps, mrk, csv)] == ["landmarks.mps", "landmarks.mrk.json", "landmarks.csv"]

    # MITK: the CT's geometry (spacing, direction, origin), ids in the zero-based convention, missing left out
    matrix, offset = _geometry(mps)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=0), grid.spacing_mm, atol=1e-9)
    np.testing.assert_allclose(matrix / np.asarray(grid.spacing_mm), grid.direction_matrix, atol=1e-9)
    np.testing.assert_allclose(offset, grid.origin_lps_mm, atol=1e-9)
    imported = apply_label_map(read_mps(mps), CONVENTIONS["zero_based"])
    assert set(imported.points) == set(LANDMARKS.points)
    for name, xyz in LANDMARKS.points.items():
        np.testing.assert_allclose(imported.points[name], xyz, atol=1e-9)

    # Slicer: LPS, canonical labels, missing ones as unplaced points
    assert json.loads(mrk.read_text())["markups"][0]["coordinateSystem"] == "LPS"
    slicer = dict(read_mrk_json(mrk))
    assert slicer == {**LANDMARKS.points, "LCC": None, "RCO": None}

    # CSV: default layout, the same points, missing ones with empty cells
    table = dict(read_csv(csv, CSV_LAYOUTS["default"])[""])
    assert table == {**LANDMARKS.points, "LCC": None, "RCO": None}

"""The TID 1500 Comprehensive 3D SR: points, measurements and evidence read back with highdicom."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from export_cases import MODEL, CtCase

from cardiofm.contracts.measurements import Measurement, MeasurementReport, PredictedLandmarks
from cardiofm.errors import InputDataError
from cardiofm.exports.seg import write_seg
from cardiofm.exports.sr import PRIVATE_SCHEME, write_sr

LANDMARKS = PredictedLandmarks(
    points={"RCC": (1.5, 14.25, 33.0), "LCC": (-2.125, 18.0, 31.75), "LCO": (0.333, 16.1, 36.2)},
    confidence={"RCC": 0.93, "LCC": 0.61, "LCO": 0.5},
    missing=["NCC", "RCO"],
    model=MODEL,
)
REPORT = MeasurementReport(
    measurements=[
        Measurement(name="annulus_area_mm2", group="annulus", unit="mm2", value=452.5),
        Measurement(name="annulus_perimeter_derived_diameter_mm", group="annulus", unit="mm", value=24.125),
        Measurement(name="rco_height_mm", group="coronaries", unit="mm", available=False, reason="RCO not placed"),
        Measurement(name="lco_height_mm", group="coronaries", unit="mm", value=13.2),
        Measurement(name="implantation_angle_deg", group="projection", unit="deg", value=-12.5),
        Measurement(name="calcium_volume_mm3", group="calcium", unit="mm3", value=87.0, method="HU >= 850"),
    ]
)


def _report(path: Path) -> tuple[hd.sr.Comprehensive3DSR, hd.sr.MeasurementReport]:
    """The SR read back, and its TID 1500 content."""
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    return sr, sr.content


Group = hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations


def _measurements(groups: list[Group]) -> dict[str, tuple[float, str, str]]:
    """``{concept meaning: (value, unit code, coding scheme)}`` of every measurement of the groups."""
    found: dict[str, tuple[float, str, str]] = {}
    for group in groups:
        for m in group.get_measurements():
            assert m.name.scheme_designator == PRIVATE_SCHEME
            assert m.unit.scheme_designator == "UCUM"
            found[m.name.meaning] = (float(m.value), m.unit.value, m.name.value)
    return found


def test_sr_round_trip_points_measurements_and_evidence(make_case: Callable[[str], CtCase], tmp_path: Path) -> None:
    case = make_case("ffs")
    seg = write_seg(tmp_path / "seg.dcm", case.mask_nifti, case.nifti_grid, case.datasets, model=MODEL)
    written = write_sr(tmp_path / "sr.dcm", LANDMARKS, REPORT, case.datasets, seg)
    sr, content = _report(tmp_path / "sr.dcm")
    source = case.datasets[0]
    assert sr.SOPInstanceUID == written.SOPInstanceUID
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID not in {source.SeriesInstanceUID, seg.SeriesInstanceUID}
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    # evidence: every source instance, and the SEG
    evidence = sr.get_evidence()
    assert {e[2] for e in evidence} == {d.SOPInstanceUID for d in case.datasets} | {seg.SOPInstanceUID}
    assert {e[1] for e in evidence} == {source.SeriesInstanceUID, seg.SeriesInstanceUID}

    # landmarks: one SCOORD3D point per placed landmark, in the CT's frame of reference; missing ones absent
    points = content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in points] == list(LANDMARKS.points)
    for group in points:
        name, finding, roi = group.tracking_identifier, group.finding_type, group.roi
        assert name is not None
        assert finding is not None
        assert isinstance(roi, hd.sr.ImageRegion3D)
        assert (finding.value, finding.scheme_designator) == (name, PRIVATE_SCHEME)
        assert roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        assert roi.frame_of_reference_uid == source.FrameOfReferenceUID
        np.testing.assert_allclose(roi.value[0], np.asarray(LANDMARKS.points[name]), atol=1e-4)  # stored as float32
        (confidence,) = group.get_measurements()
        assert confidence.name.meaning == "confidence"
        assert float(confidence.value) == pytest.approx(LANDMARKS.confidence[name])
        assert confidence.unit.value == "1"

    # measurements: available ones, values and UCUM units; the calcium group references the SEG
    plain = content.get_image_measurement_groups()
    (calcium,) = content.get_volumetric_roi_measurement_groups()
    assert sorted(str(g.tracking_identifier) for g in plain) == ["annulus", "coronaries", "projection"]
    assert calcium.tracking_identifier == "calcium"
    referenced = calcium.referenced_segment
    assert referenced is not None
    assert referenced.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert referenced.referenced_segment_numbers == [1]
    found = _measurements([*plain, calcium])
    expected = {m.name: m for m in REPORT.measurements if m.available}
    assert set(found) == set(expected)
    for name, (value, unit, _) in found.items():
        assert value == pytest.approx(expected[name].value)
        assert unit == expected[name].unit
    # a name longer than CodeValue's 16 characters gets a short stable code; shorter ones are their own code
    assert found["annulus_area_mm2"][2] == "annulus_area_mm2"
    long_code = found["annulus_perimeter_derived_diameter_mm"][2]
    assert len(long_code) == 16
    assert long_code.startswith("CFM")


def test_sr_without_seg_or_model(make_case: Callable[[str], CtCase], tmp_path: Path) -> None:
    case = make_case("hfs")
    write_sr(tmp_path / "sr.dcm", LANDMARKS, REPORT, case.datasets)
    sr, content = _report(tmp_path / "sr.dcm")
    assert not content.get_volumetric_roi_measurement_groups()
    assert "calcium" in [g.tracking_identifier for g in content.get_image_measurement_groups()]
    assert {e[2] for e in sr.get_evidence()} == {d.SOPInstanceUID for d in case.datasets}
    anonymous = LANDMARKS.model_copy(update={"model": None})
    with pytest.raises(InputDataError, match="model"):
        write_sr(tmp_path / "none.dcm", anonymous, REPORT, case.datasets)
    write_sr(tmp_path / "explicit.dcm", anonymous, REPORT, case.datasets, model=MODEL)
    assert hd.sr.srread(tmp_path / "explicit.dcm").SoftwareVersions == sr.SoftwareVersions

"""Landmarks and TAVI measurements as a DICOM Comprehensive 3D SR measurement report (TID 1500).

Content tree (one TID 1500 report, observer = the cardiofm device):

* one **Planar ROI group** (TID 1410) per placed landmark: tracking identifier = the canonical name, finding
  type :func:`private_code` of the name, region = SCOORD3D ``POINT`` in LPS mm in the source series' frame of
  reference, and the detection confidence as a measurement ``(confidence, 99CARDIOFM)`` with unit ``1``.
  Landmarks the model could not place (``missing``) are not written as points.
* one **measurement group** (TID 1501) per measurement ``group`` (``annulus``, ``coronaries``, ...), tracking
  identifier = the group name; each available measurement is a TID 300 numeric with concept name
  :func:`private_code` (meaning = the measurement name) and its UCUM unit. No standard code names these TAVI
  measurements unambiguously (a generic "Area" or "Diameter" concept would need finding-site modifiers to tell the
  annulus from the LVOT), so every concept name is private; units are standard UCUM.
* with a SEG, the ``calcium`` group is a **Volumetric ROI group** (TID 1411) referencing its segment.

Measurements that are ``available: false`` are left out: TID 300 has no numeric without a value in
highdicom, and ``measurements.json`` keeps the reason. Every source instance (and the SEG) is listed in the
evidence (``CurrentRequestedProcedureEvidenceSequence``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cardiofm.contracts.measurements import Measurement, MeasurementReport, ModelInfo, PredictedLandmarks
from cardiofm.errors import InputDataError
from cardiofm.exports._source import MANUFACTURER, check_source_series, software_versions
from cardiofm.exports.seg import CALCIFICATION

logger = logging.getLogger(__name__)

#: Coding scheme designator of cardiofm's private concepts (measurement and landmark names).
PRIVATE_SCHEME = "99CARDIOFM"
#: Concept name of a landmark's detection confidence (peak heatmap probability, 0..1).
CONFIDENCE = Code("confidence", PRIVATE_SCHEME, "confidence")
#: UCUM meaning of each unit a measurement may carry.
UCUM_MEANINGS: dict[str, str] = {
    "mm": "millimeter",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "deg": "degree",
    "1": "no units",
    "{score}": "score",
    "{present}": "present",
}
#: Default SeriesNumber of the SR series.
DEFAULT_SR_SERIES_NUMBER = 902
_CALCIUM_GROUP = "calcium"
_Group: TypeAlias = (
    hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)
_MAX_CODE_VALUE = 16
_MAX_MEANING = 64


def private_code(name: str) -> Code:
    """The private concept of a measurement or landmark name: meaning = ``name``, scheme ``99CARDIOFM``.

    The code value is ``name`` itself when it fits CodeValue (16 characters); a longer name gets the stable
    value ``CFM`` + the first 13 hex digits of its SHA-256, because LongCodeValue breaks common SR readers.
    """
    if len(name) > _MAX_MEANING:
        raise InputDataError(f"measurement or landmark name {name!r} is longer than {_MAX_MEANING} characters")
    value = name if len(name) <= _MAX_CODE_VALUE else "CFM" + hashlib.sha256(name.encode()).hexdigest()[:13]
    return Code(value, PRIVATE_SCHEME, name)


def ucum(unit: str) -> Code:
    """The UCUM code of a measurement unit (``"mm2"`` → ``(mm2, UCUM, square millimeter)``)."""
    return Code(unit, "UCUM", UCUM_MEANINGS[unit])


def _algorithm(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=MANUFACTURER, version=model.version)


def _landmark_groups(
    landmarks: PredictedLandmarks, frame_of_reference_uid: str, model: ModelInfo
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    groups = []
    for name, xyz in landmarks.points.items():
        region = hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([xyz], dtype=np.float64),
            frame_of_reference_uid=frame_of_reference_uid,
        )
        measurements = []
        if name in landmarks.confidence:
            measurements.append(
                hd.sr.Measurement(name=CONFIDENCE, value=float(landmarks.confidence[name]), unit=ucum("1"))
            )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name),
                referenced_region=region,
                finding_type=private_code(name),
                algorithm_id=_algorithm(model),
                measurements=measurements or None,
            )
        )
    return groups


def _numeric(m: Measurement) -> hd.sr.Measurement:
    value = m.value if m.value is not None else float("nan")  # never NaN: only available measurements come here
    return hd.sr.Measurement(name=private_code(m.name), value=float(value), unit=ucum(m.unit))


def _referenced_segment(seg: hd.seg.Segmentation) -> hd.sr.ReferencedSegment:
    # built by hand: ReferencedSegment.from_segmentation fails on a one-segment SEG, whose
    # SegmentIdentificationSequence is in the shared functional groups
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=1,
        source_series=hd.sr.SourceSeriesForSegmentation(source_series),
    )


def _measurement_groups(report: MeasurementReport, model: ModelInfo, seg: hd.seg.Segmentation | None) -> list[_Group]:
    by_group: dict[str, list[Measurement]] = {}
    for m in report.measurements:
        if m.available:
            by_group.setdefault(m.group, []).append(m)
    groups: list[_Group] = []
    if seg is not None and _CALCIUM_GROUP not in by_group:
        by_group[_CALCIUM_GROUP] = []  # the SEG is still referenced, as the calcification finding
    for group, items in by_group.items():
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=group)
        numerics = [_numeric(m) for m in items] or None
        if group == _CALCIUM_GROUP and seg is not None:
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    referenced_segment=_referenced_segment(seg),
                    finding_type=CALCIFICATION,
                    algorithm_id=_algorithm(model),
                    measurements=numerics,
                )
            )
        else:
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking, algorithm_id=_algorithm(model), measurements=numerics
                )
            )
    return groups


def write_sr(
    path: Path,
    landmarks: PredictedLandmarks,
    measurements: MeasurementReport,
    source_datasets: Sequence[Dataset],
    seg: hd.seg.Segmentation | None = None,
    *,
    model: ModelInfo | None = None,
    series_number: int = DEFAULT_SR_SERIES_NUMBER,
) -> hd.sr.Comprehensive3DSR:
    """Write landmarks and measurements as a Comprehensive 3D SR of the source study (new series).

    Parameters
    ----------
    path:
        Output file; parent folders are created.
    landmarks:
        Placed points (LPS mm) with confidence; ``missing`` ones are not written.
    measurements:
        The measurement report; available measurements are written with their UCUM units.
    source_datasets:
        The source CT instances (one series; headers suffice). Every one is listed in the evidence; the
        points are in their frame of reference.
    seg:
        The calcification SEG (:func:`~cardiofm.exports.seg.write_seg`), referenced by the calcium group.
    model:
        The model that made the prediction; default ``landmarks.model``.
    series_number:
        SeriesNumber of the new SR series.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The written SR.

    Raises
    ------
    InputDataError
        If the source instances are not one series, no model is known, or the SEG belongs to another study
        or frame of reference.
    """
    check_source_series(source_datasets)
    model = model or landmarks.model
    if model is None:
        raise InputDataError("the SR needs the model that made the prediction: pass model= or set landmarks.model")
    first = source_datasets[0]
    if seg is not None and (
        seg.StudyInstanceUID != first.StudyInstanceUID or seg.FrameOfReferenceUID != first.FrameOfReferenceUID
    ):
        raise InputDataError("the SEG belongs to another study or frame of reference than the source series")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=model.name
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ComputedTomographyOfHeart,
        imaging_measurements=[
            *_landmark_groups(landmarks, str(first.FrameOfReferenceUID), model),
            *_measurement_groups(measurements, model, seg),
        ],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source_datasets, *([seg] if seg is not None else [])],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="cardiofm TAVI measurements",
        manufacturer_model_name=model.name,
        software_versions=software_versions(model),
        coding_schemes=[CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME, name="cardiofm private concepts")],
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out, enforce_file_format=True)
    logger.info(
        "wrote an SR with %d landmark(s) and %d measurement(s), %d evidence instance(s)",
        len(landmarks.points),
        sum(m.available for m in measurements.measurements),
        len(source_datasets) + (seg is not None),
    )
    return sr

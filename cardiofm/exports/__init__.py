"""Exports of a prediction: DICOM SEG and SR for the PACS, point files for MITK and 3D Slicer, sending to a PACS.

All functions take the prediction's objects (mask and :class:`~cardiofm.imaging.geometry.Grid`,
:class:`~cardiofm.contracts.measurements.PredictedLandmarks`,
:class:`~cardiofm.contracts.measurements.MeasurementReport`, the source series' pydicom datasets) plus an output
path.
"""

from __future__ import annotations

from cardiofm.exports.seg import mask_to_source_frames, write_seg
from cardiofm.exports.send import SendResult, dicom_files, send_files
from cardiofm.exports.sr import write_sr
from cardiofm.exports.viewers import write_viewer_files

__all__ = [
    "SendResult",
    "dicom_files",
    "mask_to_source_frames",
    "send_files",
    "write_seg",
    "write_sr",
    "write_viewer_files",
]

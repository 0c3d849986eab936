"""The source CT series an export refers to: checks shared by the SEG and SR writers (internal).

Messages name counts and attribute keywords only, never UIDs or patient attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from cardiofm import __version__
from cardiofm.contracts.measurements import ModelInfo
from cardiofm.errors import InputDataError

#: Manufacturer written into every exported object (the software, not a device vendor).
MANUFACTURER = "cardiofm"
#: Attributes every source instance must carry for an export to reference it.
_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
#: Attributes that must be the same in every instance of the source series.
_SHARED = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns")


def check_source_series(datasets: Sequence[Dataset]) -> None:
    """Raise :class:`InputDataError` unless ``datasets`` are the single-frame instances of one image series.

    Parameters
    ----------
    datasets:
        The source CT instances (headers suffice; pixel data is not read).
    """
    if not datasets:
        raise InputDataError("no source DICOM instances given: pass the instances of the CT series")
    for n, ds in enumerate(datasets, start=1):
        absent = [k for k in _REQUIRED if k not in ds]
        if absent:
            raise InputDataError(f"source instance {n} of {len(datasets)} lacks {', '.join(absent)}")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise InputDataError(f"source instance {n} is a multi-frame image; export needs single-frame CT slices")
    for keyword in _SHARED:
        if len({str(ds.get(keyword)) for ds in datasets}) != 1:
            raise InputDataError(f"the source instances differ in {keyword}: pass the instances of one series only")
    if len({str(ds.SOPInstanceUID) for ds in datasets}) != len(datasets):
        raise InputDataError("a source instance is given twice (repeated SOPInstanceUID)")


def software_versions(model: ModelInfo) -> str:
    """SoftwareVersions of an exported object: cardiofm's version and the model's, e.g. ``cardiofm 0.1.0; m 1.2``."""
    return f"cardiofm {__version__}; {model.name} {model.version}"

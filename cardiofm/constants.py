"""Physical facts and the label vocabulary shared by every part of cardiofm.

Nothing here depends on torch, numpy or any imaging library, so the Airflow image can import it.
"""

from __future__ import annotations

from typing import Final

#: Canonical landmark names, in the order every file, tensor and table uses.
#: RCC, LCC, NCC: hinge points (cusp nadirs) of the right, left and non-coronary cusps.
#: RCO, LCO: right and left coronary ostia. MS1, MS2: upper and lower membranous-septum points.
LANDMARK_NAMES: Final[tuple[str, ...]] = ("RCC", "LCC", "NCC", "RCO", "LCO", "MS1", "MS2")

#: Tasks (model heads) and the landmarks each one predicts.
TASK_LANDMARKS: Final[dict[str, tuple[str, ...]]] = {
    "landmarks": ("RCC", "LCC", "NCC", "RCO", "LCO"),
    "septum": ("MS1", "MS2"),
}
#: Every task a site can hold labels for, in canonical order.
TASKS: Final[tuple[str, ...]] = ("landmarks", "septum", "calcification")
#: Downstream tasks: heads added to a trained foundation model by fine-tuning (never distilled, not in
#: :data:`TASKS`). ``coronaries``: binary coronary-artery mask.
DOWNSTREAM_TASKS: Final[tuple[str, ...]] = ("coronaries",)
#: Tasks labelled by a binary mask (``labels/<task>.nii.gz`` in a site dataset), in canonical order.
MASK_TASKS: Final[tuple[str, ...]] = ("calcification", "coronaries")

#: Heart label map written by the phantoms' ``heart.nii.gz`` (same ids as the reference work's chambers model).
HEART_LABELS: Final[dict[str, int]] = {
    "myocardium": 1,
    "left_atrium": 2,
    "left_ventricle": 3,
    "right_atrium": 4,
    "right_ventricle": 5,
    "aorta": 6,
    "pulmonary_artery": 7,
}

#: Target value no hard loss reads: where a teacher's pseudo-label is not confident enough to say either
#: "landmark" or "background" (the soft term still applies there).
IGNORE_LABEL: Final[int] = 255

#: Hounsfield units of reference materials.
HU_AIR: Final[float] = -1000.0
HU_WATER: Final[float] = 0.0
#: Lowest value a CT scanner stores (padding outside the reconstruction circle).
HU_MIN_STORED: Final[float] = -1024.0
#: Agatston threshold: voxels at or above it count as calcium.
HU_CALCIUM_THRESHOLD: Final[float] = 130.0

#: DICOM SOP class of CT Image Storage.
CT_IMAGE_STORAGE_UID: Final[str] = "1.2.840.10008.5.1.4.1.1.2"

#: Coordinate system of every point that leaves memory (DICOM patient coordinates).
COORDINATE_SYSTEM: Final[str] = "LPS"

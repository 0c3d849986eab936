"""``cardiofm-predict``: landmarks, calcium and TAVI measurements for CT series, back into the PACS.

stage-series → convert → crop-heart → predict → measure → export-dicom → send-results.

The series are retrieved from the PACS (or found in a DICOM folder), converted and cropped exactly as for
training, predicted by the model release, measured; the DICOM SEG (calcification) and the TID 1500 SR
(points and measurements) are stored in the PACS next to the CT. Each batch folder also keeps
landmarks.json, measurements.json, report.png and the MITK / 3D Slicer files.

An Airflow DAG (Kaapana's Workflow Execution); each task runs one cardiofm step.
"""

from __future__ import annotations

from cardiofm_forms import PACS_FIELDS, cardiofm_dag, workflow_form
from cardiofm_operators import step_task

FORM = workflow_form(
    {
        "model": {
            "title": "Model",
            "description": "The model release folder (or one checkpoint per head), relative to the site's data folder.",
            "type": "array",
            "items": {"type": "string"},
            "default": ["cardiofm/models/release"],
        },
        "series_uids": {
            "title": "CT series (Series Instance UIDs)",
            "description": "The contrast CT series to predict, one UID per entry (copy it from the viewer).",
            "type": "array",
            "items": {"type": "string"},
            "default": [],
        },
        "dicom_folder": {
            "title": "DICOM folder (without a PACS)",
            "description": "Find the series in this folder instead of the PACS; empty: the PACS below.",
            "type": "string",
            "default": "",
        },
        **PACS_FIELDS,
        "segmenter": {
            "title": "Heart segmenter",
            "type": "string",
            "enum": ["totalsegmentator", "fallback"],
            "default": "totalsegmentator",
        },
        "min_confidence": {"title": "Lowest landmark confidence (0–1)", "type": "number", "default": 0.3},
        "non_contrast": {
            "title": "Non-contrast calcium-scoring series",
            "description": "Only a non-contrast series gets an Agatston score; leave off for the contrast CT.",
            "type": "boolean",
            "default": False,
        },
        "device": {"title": "Device", "type": "string", "enum": ["auto", "cpu", "cuda"], "default": "auto"},
    },
    required=["model", "series_uids"],
)

dag = cardiofm_dag("cardiofm-predict", FORM, __doc__)
stage = step_task(dag, "stage-series")
convert = step_task(dag, "convert", input_operator=stage)
crop = step_task(dag, "crop-heart", input_operator=convert)
predict = step_task(dag, "predict", input_operator=crop)
measure = step_task(dag, "measure", input_operator=predict)
export = step_task(dag, "export-dicom", input_operator=measure)
send = step_task(dag, "send-results", input_operator=export)
stage >> convert >> crop >> predict >> measure >> export >> send

"""``cardiofm-prepare``: one site's data preparation from its PACS (what ``cardiofm prepare`` runs).

stage-studies → select-series → convert → crop-heart → import-labels → build-dataset → prepare-report.

An Airflow DAG (Kaapana's Workflow Execution); each task runs one cardiofm step.
"""

from __future__ import annotations

from cardiofm_forms import DATASET_DIR, PACS_FIELDS, SITE_CONFIG, cardiofm_dag, workflow_form
from cardiofm_operators import step_task

FORM = workflow_form(
    {
        "site_config": SITE_CONFIG,
        "dataset_dir": DATASET_DIR,
        **PACS_FIELDS,
        "segmenter": {
            "title": "Heart segmenter",
            "type": "string",
            "enum": ["totalsegmentator", "fallback"],
            "default": "totalsegmentator",
        },
        "margin_mm": {"title": "Margin around the heart (mm)", "type": "number", "default": 20.0},
        "spacing_mm": {"title": "Crop spacing (mm)", "type": "number", "default": 1.0},
        "test_fraction": {"title": "Test share of the cases", "type": "number", "default": 0.2},
        "split_seed": {"title": "Split seed", "type": "integer", "default": 0},
    },
    required=["site_config", "dataset_dir"],
)

dag = cardiofm_dag("cardiofm-prepare", FORM, __doc__)
stage = step_task(dag, "stage-studies")
select = step_task(dag, "select-series", input_operator=stage)
convert = step_task(dag, "convert", input_operator=select)
crop = step_task(dag, "crop-heart", input_operator=convert)
labels = step_task(dag, "import-labels", input_operator=crop)
dataset = step_task(dag, "build-dataset", input_operator=labels)
report = step_task(dag, "prepare-report", input_operator=dataset, trigger_rule="all_done")
stage >> select >> convert >> crop >> labels >> dataset >> report

"""``cardiofm-pseudolabel``: the site's step between the teacher stages and distill (``cardiofm site pseudolabel``).

An Airflow DAG (Kaapana's Workflow Execution); each task runs one cardiofm step.
"""

from __future__ import annotations

from cardiofm_forms import DATASET_DIR, WORK_DIR, cardiofm_dag, workflow_form
from cardiofm_operators import step_task

FORM = workflow_form(
    {
        "dataset": DATASET_DIR,
        "work_dir": WORK_DIR,
        "teachers_dir": {
            "title": "Teacher checkpoints (optional)",
            "description": "Folder of teacher-<task>.pt files; empty: those the federation sent (WORK_DIR/models).",
            "type": "string",
            "default": "",
        },
        "tasks": {
            "title": "Tasks (optional)",
            "description": "Only these tasks' teachers; empty: every teacher found.",
            "type": "array",
            "items": {"type": "string"},
            "default": [],
        },
    },
    required=["dataset", "work_dir"],
)

dag = cardiofm_dag("cardiofm-pseudolabel", FORM, __doc__)
step_task(dag, "site-pseudolabel")

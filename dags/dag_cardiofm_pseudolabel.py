"""``cardiofm-pseudolabel``: the site's step between the teacher stages and distill (``cardiofm site pseudolabel``)."""

from __future__ import annotations

from airflow.models import DAG

from cardiofm_forms import DATASET_DIR, WORK_DIR, default_args, workflow_form
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

with DAG(
    dag_id="cardiofm-pseudolabel",
    default_args=default_args(FORM),
    schedule=None,
    max_active_runs=1,
    catchup=False,
    tags=["cardiofm"],
    doc_md=__doc__,
) as dag:
    step_task(dag, "site-pseudolabel")

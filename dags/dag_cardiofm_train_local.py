"""``cardiofm-train-local``: a local-only teacher on this site's data alone, the baseline the federation must beat.

The teacher has the federated teacher's model and settings (give the same run config the coordinator uses);
compare it with the federated teacher on the same test cases (``cardiofm evaluate``).

An Airflow DAG (Kaapana's Workflow Execution); each task runs one cardiofm step.
"""

from __future__ import annotations

from cardiofm_forms import DATASET_DIR, cardiofm_dag, workflow_form
from cardiofm_operators import step_task

FORM = workflow_form(
    {
        "dataset": DATASET_DIR,
        "task": {
            "title": "Task",
            "type": "string",
            "enum": ["landmarks", "septum", "calcification"],
            "default": "landmarks",
        },
        "out": {
            "title": "Checkpoint to write",
            "type": "string",
            "default": "cardiofm/local-teachers/teacher.pt",
        },
        "steps": {"title": "Training steps", "type": "integer", "default": 200},
        "run_config": {
            "title": "The federated teacher's run config (JSON)",
            "description": 'The keys of the coordinator run --run-config option, e.g. {"patch-size-vox": 96}.',
            "type": "string",
            "default": "{}",
        },
    },
    required=["dataset", "task", "out"],
)

dag = cardiofm_dag("cardiofm-train-local", FORM, __doc__)
step_task(dag, "train-local")

"""``cardiofm-federated-join``: this site's SuperNode for one federated stage (``cardiofm site join``).

The task ends when the coordinator's run ends, with the site's exit codes: 0 finished; 5 SuperNode refused
or died (TLS, key, allowlist); 7 app bundle not pinned (nothing of it ran); 8 timeout; 2/6 invalid or missing
inputs. Its TLS material comes from the site bundle (the ``cardiofm-site-bundle`` Secret in Kaapana).

An Airflow DAG (Kaapana's Workflow Execution); each task runs one cardiofm step.
"""

from __future__ import annotations

from datetime import timedelta

from cardiofm_forms import DATASET_DIR, WORK_DIR, cardiofm_dag, workflow_form
from cardiofm_operators import step_task

#: A stage of the paper's profile runs for hours; the SuperNode stops itself at TIMEOUT_S (exit 8) before this.
TASK_TIMEOUT = timedelta(hours=49)

FORM = workflow_form(
    {
        "superlink": {
            "title": "Coordinator address (host:port)",
            "description": "The coordinator's proxy, from the site bundle. Empty: the extension's install setting.",
            "type": "string",
            "default": "",
        },
        "pinned_fab_sha256": {
            "title": "Approved app bundle (SHA-256)",
            "description": "SHA-256 of the app bundle the consortium approved (any other is refused). Empty: the "
            "extension's install setting.",
            "type": "array",
            "items": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
            "default": [],
        },
        "dataset": DATASET_DIR,
        "work_dir": WORK_DIR,
        "timeout_s": {"title": "Give up after (s)", "type": "number", "default": 172800},
    },
    required=["dataset", "work_dir"],
)

dag = cardiofm_dag("cardiofm-federated-join", FORM, __doc__)
step_task(dag, "site-join", execution_timeout=TASK_TIMEOUT)

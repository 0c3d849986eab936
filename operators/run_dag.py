"""Run one cardiofm DAG with ``dag.test()`` in the Airflow environment; print its task states as JSON.

Usage: ``.venvs/airflow/bin/python operators/run_dag.py DAG_ID CONF_JSON``, with ``AIRFLOW_HOME`` set to a
scratch folder and ``PYTHONPATH`` holding the repository root, ``operators`` and ``dags``; ``CARDIOFM_BACKEND``
names the backend (``local`` here: every step a subprocess in cardiofm's own environment). Exit 0 when the run
succeeded, 1 when not. ``cardiofm demo`` and the integration tests start it through
:mod:`cardiofm.pipeline.dag_runner`, so that Airflow itself runs the DAGs, as in a clinic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1] / "dags"


def main(dag_id: str, conf: str) -> int:
    """Migrate the scratch database, run the DAG, print ``{"state": ..., "tasks": {task: state}}``."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    from airflow.models import DagBag

    bag = DagBag(str(DAGS), include_examples=False)
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: v[-2000:] for k, v in bag.import_errors.items()}}))
        return 1
    if dag_id not in bag.dags:
        print(json.dumps({"error": f"no DAG {dag_id} in {DAGS}; found: {sorted(bag.dags)}"}))
        return 1
    run = bag.dags[dag_id].test(run_conf=json.loads(conf))
    tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print(json.dumps({"state": str(run.state), "tasks": tasks}))
    return 0 if str(run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

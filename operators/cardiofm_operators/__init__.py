"""cardiofm's Airflow operators: one generic step operator, three backends chosen by configuration.

``step_task(dag, "convert", input_operator=select)`` makes the task that runs ``cardiofm step convert`` in
the backend named by ``CARDIOFM_BACKEND`` in the Airflow environment (see :mod:`.step_operator`). The
package is copied by the DAG-installer image to Kaapana's dags folder, beside the ``cardiofm`` contracts it
imports; it never imports the rest of cardiofm (no torch, no DICOM libraries in the Airflow image).
"""

from cardiofm_operators.step_operator import step_task

__all__ = ["step_task"]

"""Form fields and default arguments the cardiofm DAGs share (Kaapana's ``ui_forms`` JSON schemas).

Every form key reaches every task of a run as an environment variable (``key.upper()``); each key is a
field of the params model of at least one of the DAG's steps (:mod:`cardiofm.contracts.steps`), so the
step that needs it reads it and the others ignore it. Relative paths are relative to the site's data
root (``CARDIOFM_DATA_ROOT``: Kaapana's workflow-data volume in a cluster).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.models import DAG

SITE_CONFIG = {
    "title": "Site configuration (site.yaml)",
    "description": "The site's site.yaml: its id, PACS folder, label map and annotation files.",
    "type": "string",
    "default": "cardiofm/site/site.yaml",
}
DATASET_DIR = {
    "title": "Site dataset folder",
    "description": "Where the prepared dataset (manifest.json, cases/) is written; re-runs keep its split.",
    "type": "string",
    "default": "cardiofm/dataset",
}
WORK_DIR = {
    "title": "Federation work folder",
    "description": "The site's federation folder: received models, pseudo-labels, the SuperNode's log.",
    "type": "string",
    "default": "cardiofm/federation",
}

#: The PACS a DAG reads from (and the predict DAG stores its results in); fields of ``PacsParams``.
PACS_FIELDS: dict[str, dict[str, Any]] = {
    "dicomweb_url": {
        "title": "DICOMweb URL of the PACS",
        "description": "Read the studies over DICOMweb (QIDO-RS/WADO-RS). Empty: DIMSE, or the site folder.",
        "type": "string",
        "default": "",
    },
    "pacs_user": {"title": "DICOMweb user", "type": "string", "default": ""},
    "pacs_password_env": {
        "title": "Variable holding the DICOMweb password",
        "description": "In Kaapana the 'password' of the cardiofm-pacs Secret arrives as CARDIOFM_PACS_PASSWORD.",
        "type": "string",
        "default": "CARDIOFM_PACS_PASSWORD",
    },
    "dimse": {
        "title": "DIMSE PACS (host:port)",
        "description": "Read the studies over DIMSE (C-FIND, then C-GET or C-MOVE) instead of DICOMweb.",
        "type": "string",
        "default": "",
    },
    "dimse_mode": {"title": "DIMSE retrieval", "type": "string", "enum": ["c-get", "c-move"], "default": "c-get"},
    "called_ae": {"title": "PACS AE title", "type": "string", "default": "ORTHANC"},
    "calling_ae": {"title": "Our AE title", "type": "string", "default": "CARDIOFM"},
}


def workflow_form(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """Kaapana's ``ui_forms`` for a DAG: the workflow form, and no dataset picker (the DAG reads the PACS)."""
    return {
        "workflow_form": {"type": "object", "properties": properties, "required": required},
        "data_form": {},
    }


def default_args(forms: dict[str, Any]) -> dict[str, Any]:
    """Kaapana's DAG conventions: visible in the UI, no automatic retry of a step that failed for a reason."""
    return {
        "ui_visible": True,
        "ui_forms": forms,
        "owner": "kaapana",
        "start_date": datetime(2024, 1, 1),
        "retries": 0,
        "retry_delay": timedelta(seconds=30),
    }


def cardiofm_dag(dag_id: str, form: dict[str, Any], doc: str | None) -> DAG:
    """A cardiofm DAG: triggered from the UI only (no schedule), one run at a time, its form and documentation."""
    return DAG(
        dag_id=dag_id,
        default_args=default_args(form),
        schedule=None,
        max_active_runs=1,
        catchup=False,
        tags=["cardiofm"],
        doc_md=doc,
    )

"""The demo's results.json: every model, task and group present, numbers from the evaluation, null + n=0 when empty.

``test_report_schema_on_prepared_data`` builds the report on two small prepared sites (one of them held
out) with a local teacher trained for a few steps, and checks the schema and the counts against the
cases actually evaluated. ``test_demo_cli_writes_results`` runs the whole ``cardiofm demo`` chain on a
real loopback federation (opt-in: ``CARDIOFM_DEMO_TEST=1``, 10-20 min on 2 CPU cores).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cardiofm.constants import MASK_TASKS, TASK_LANDMARKS, TASKS
from cardiofm.evaluation.evaluate import phantom_truth
from cardiofm.evaluation.report import (
    GROUPS,
    MODELS,
    DemoModels,
    Evaluator,
    case_views,
    model_results,
    results_table,
)
from cardiofm.federated.loopback import ChainSettings, train_local_teacher
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.pipeline.prepare import prepare_site

pytestmark = [pytest.mark.integration]

FIGURES = ("median_mm", "mean_mm", "failure_rate")


def _check_schema(results: dict[str, Any]) -> None:
    assert set(results) == set(MODELS)
    for model in MODELS:
        assert set(results[model]) == set(TASKS), model
        for task in TASKS:
            assert set(results[model][task]) == set(GROUPS), (model, task)
            for group in GROUPS:
                fig = results[model][task][group]
                if task in TASK_LANDMARKS:
                    assert set(fig) == {"n_cases", "per_landmark", "pooled"}
                    assert list(fig["per_landmark"]) == list(TASK_LANDMARKS[task])
                    for entry in [*fig["per_landmark"].values(), fig["pooled"]]:
                        assert set(entry) == {*FIGURES, "n"}
                        assert isinstance(entry["n"], int)
                        if entry["n"] == 0:
                            assert all(entry[f] is None for f in FIGURES), (model, task, group, entry)
                        else:
                            rate = entry["failure_rate"]
                            assert isinstance(rate, float)
                            assert 0.0 <= rate <= 1.0
                    for entry in fig["per_landmark"].values():
                        assert entry["n"] == fig["n_cases"]
                else:
                    assert task in MASK_TASKS
                    assert set(fig) == {"dice", "n"}
                    if fig["n"] == 0:
                        assert fig["dice"] is None
                    else:
                        assert 0.0 <= fig["dice"] <= 1.0


@pytest.mark.slow
def test_report_schema_on_prepared_data(tmp_path: Path) -> None:
    fed_dir = tmp_path / "federation"
    record = generate_federation(
        fed_dir, FederationSettings(sites=2, cases_per_site=3, seed=2, held_out_sites=1, series_per_study=1)
    )
    train_site, held_site = record.sites
    assert not train_site.held_out
    assert held_site.held_out
    datasets = {}
    for site in record.sites:
        datasets[site.site_id] = tmp_path / "datasets" / site.site_id
        test_fraction = 0.34 if not site.held_out else 0.0
        assert prepare_site(fed_dir / site.folder, datasets[site.site_id], test_fraction=test_fraction).prepared == 3

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = ChainSettings(num_rounds=1, local_steps=2)
        teacher = train_local_teacher(
            datasets[train_site.site_id], "landmarks", settings, tmp_path / "teacher-landmarks.pt"
        )
        views = tmp_path / "views"
        train_views = {train_site.site_id: case_views(datasets[train_site.site_id], views, "test")}
        heldout_views = case_views(datasets[held_site.site_id], views, "all")
        n_test = len(train_views[train_site.site_id])
        assert n_test >= 1
        assert len(heldout_views) == 3
        models = DemoModels(
            local_teachers={"landmarks": {train_site.site_id: teacher}},
            federated_teachers={"landmarks": teacher},
            student_distilled=None,
            student_finetuned=None,
        )
        evaluator = Evaluator(phantom_truth(fed_dir))
        results = model_results(models, train_views, heldout_views, evaluator)
    finally:
        torch.set_num_threads(threads)

    results = json.loads(json.dumps(results))  # what results.json holds
    _check_schema(results)
    for model in ("local_teacher", "federated_teacher"):
        landmarks = results[model]["landmarks"]
        assert landmarks["train_sites_test"]["n_cases"] == n_test
        assert landmarks["heldout_sites"]["n_cases"] == 3  # generator truth: held-out sites hold no labels
        assert landmarks["heldout_sites"]["pooled"]["n"] == 3 * len(TASK_LANDMARKS["landmarks"])
        # one checkpoint under two names: the same cases give the same numbers
    assert results["local_teacher"]["landmarks"] == results["federated_teacher"]["landmarks"]
    for model in ("student_distilled", "student_finetuned"):
        for task in TASKS:
            for group in GROUPS:
                fig = results[model][task][group]
                assert fig.get("n", fig.get("n_cases")) == 0  # no model: null with n=0, never dropped
    assert results["local_teacher"]["calcification"]["heldout_sites"] == {"dice": None, "n": 0}
    # each (checkpoint, case) pair was evaluated once, shared by both model names
    assert len(evaluator._cache) == n_test + 3
    mean = results["federated_teacher"]["landmarks"]["heldout_sites"]["pooled"]["mean_mm"]
    assert mean is None or math.isfinite(mean)
    for task in TASKS:
        assert results_table(results, task).row_count == len(MODELS)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("CARDIOFM_DEMO_TEST") != "1",
    reason="the whole demo chain takes 10-20 min on 2 CPU cores; set CARDIOFM_DEMO_TEST=1 to run it",
)
def test_demo_cli_writes_results(tmp_path: Path) -> None:
    """The whole chain through the CLI on a real loopback federation (TLS, keys, proxy, pinned bundle)."""
    out = tmp_path / "demo"
    cmd = [str(Path(sys.executable).parent / "cardiofm"), "demo", "--out", str(out)]
    cmd += ["--sites", "3", "--cases", "2", "--rounds", "1", "--local-steps", "1", "--seed", "1"]
    cmd += ["--airflow-python", str(Path(__file__).resolve().parents[2] / ".venvs" / "airflow" / "bin" / "python")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    _check_schema(saved["results"])
    runs = saved["federation"]["runs"]
    assert all(r["status"] == "finished:completed" for r in runs)
    stages = [r["stage"] for r in runs]
    assert stages[-2:] == ["distill", "finetune"]
    assert all(s.startswith("teacher:") for s in stages[:-2])
    assert saved["results"]["student_finetuned"]["landmarks"]["heldout_sites"]["n_cases"] == 2
    assert "total" in saved["seconds"]
    # Airflow ran each site's preparation and pseudo-labelling DAG (its workflow folders are Kaapana's layout)
    for site in ("site-01", "site-02", "site-03"):
        assert list((out / "airflow" / f"prepare-{site}" / "workflows").glob("*/build-dataset/summary.json"))
        assert list((out / "airflow" / f"pseudolabel-{site}" / "workflows").iterdir())
    assert "cardiofm-prepare DAG in Airflow" in proc.stdout
    for task in TASKS:
        assert task in proc.stdout
    # one line per round on stdout (not a terminal here), the curves in results.json, the page with its plots
    for stage in stages:
        assert f"{stage} round 1/1, " in proc.stdout, stage
    curves = saved["curves"]
    assert set(curves["federated"]) == set(stages)
    assert all(len(rounds) == 1 for rounds in curves["federated"].values())
    assert curves["local"]
    assert "expected_gpu_hours_per_site" in saved["federation"]
    assert (out / "report.html").read_text().count("<svg") == 2

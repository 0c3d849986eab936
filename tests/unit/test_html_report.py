"""The demo's report.html: plots of the loss per round and the errors per model, rendered by a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from cardiofm.evaluation.html_report import render_report, write_report
from cardiofm.evaluation.report import GROUPS, MODELS


def _figures(task: str, value: float | None) -> dict[str, object]:
    if task == "calcification":
        return {"dice": value, "n": 2}
    pooled = {"median_mm": value, "mean_mm": value, "failure_rate": 0.25, "n": 10}
    return {"n_cases": 2, "pooled": pooled, "per_landmark": {}}


def _results() -> dict[str, object]:
    results = {
        m: {
            t: {g: _figures(t, None if m == "student_finetuned" else 3.0 + i) for g in GROUPS}
            for t in ("landmarks", "septum", "calcification")
        }
        for i, m in enumerate(MODELS)
    }
    rounds = [
        {
            "stage": "teacher:landmarks",
            "round": r,
            "rounds": 3,
            "loss": 2.0 / r,
            "sites_answered": 2,
            "sites_asked": 2,
            "seconds": 4.0,
        }
        for r in (1, 2, 3)
    ]
    return {
        "seed": 7,
        "sites": 3,
        "cases": 6,
        "seconds": {"generate": 10.0, "total": 100.0},
        "federation": {"settings": {"rounds": 3, "local_steps": 20}},
        "results": results,
        "curves": {
            "federated": {"teacher:landmarks": rounds, "distill": [{**rounds[0], "stage": "distill", "loss": None}]},
            "local": {"landmarks": {"site-01": [{"round": r, "loss": 2.5 / r} for r in (1, 2, 3)]}},
        },
    }


def test_report_holds_both_plots_and_every_model() -> None:
    page = render_report(_results())
    assert page.count("<svg") == 2  # loss per round, errors per model and group
    assert "teacher:landmarks" in page
    assert "local only, site-01" in page
    assert "distill" not in page.split("<h2>Errors")[0].split("<svg", 1)[1]  # a stage with no loss gets no panel
    for title in ("local-only teacher", "federated teacher", "distilled student", "fine-tuned student"):
        assert title in page
    assert "n/a" in page  # a model without a figure is marked, not drawn as 0
    assert not re.search(r"""(src|href)=["']?https?:|url\(https?:|<script""", page)  # self-contained, no script


def test_report_without_any_loss_says_so() -> None:
    data = _results()
    data["curves"] = {"federated": {}, "local": {}}
    assert "No round recorded a training loss" in render_report(data)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium is missing: run `make deps`"
    page = write_report(_results(), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert dom.count("<svg") == 2
    assert "fine-tuned student" in dom
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1300,1800",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 80)  # the federated loss line and the first group's bars
    assert blue.sum() > 500, "the plots were not drawn"

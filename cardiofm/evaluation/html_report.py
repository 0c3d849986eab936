"""``report.html``: the demo's results as a page a person would rather look at than read.

One self-contained file (plots inlined as SVG, no script, no external resource): the training loss per
round of every federated stage beside the local-only teachers' loss over the same number of steps, the
held-out and test errors of every model per site group, and the time per phase. Built from the demo's
``results.json`` content only (numbers, no case or patient data).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cardiofm.constants import MASK_TASKS, TASK_LANDMARKS, TASKS
from cardiofm.evaluation.report import GROUP_TITLES, GROUPS, MODEL_TITLES, MODELS

#: The demo's held-out targets, drawn as dashed lines: median error (mm) of the landmark tasks, Dice of calcium.
TARGETS: dict[str, float] = {"landmarks": 5.0, "septum": 6.0, "calcification": 0.4}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; } td, th { padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.figure { margin: 0.5rem 0; } .note { color: #555; font-size: 0.9rem; }
"""


def _svg(fig: Any) -> str:
    """A matplotlib figure as inline SVG markup (the XML header dropped)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.find("<svg") :]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    return plt


def loss_figure(curves: Mapping[str, Any]) -> str:
    """One panel per federated stage: the mean training loss per round (local-only teachers dashed)."""
    plt = _pyplot()
    federated: Mapping[str, Sequence[Mapping[str, Any]]] = curves.get("federated", {})
    local: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]] = curves.get("local", {})
    stages = [s for s, rounds in federated.items() if any(r.get("loss") is not None for r in rounds)]
    if not stages:
        return '<p class="note">No round recorded a training loss.</p>'
    cols = min(3, len(stages))
    rows = -(-len(stages) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(stages) :]:
        ax.set_visible(False)
    for ax, stage in zip(axes.flat, stages, strict=False):
        points = [(r["round"], r["loss"]) for r in federated[stage] if r.get("loss") is not None]
        ax.plot(*zip(*points, strict=True), marker="o", label="federated", color="#1f77b4")
        task = stage.removeprefix("teacher:")
        for site, site_rounds in local.get(task, {}).items() if stage.startswith("teacher:") else ():
            pts = [(r["round"], r["loss"]) for r in site_rounds if r.get("loss") is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), linestyle="--", label=f"local only, {site}")
        ax.set_title(stage)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("round")
        ax.set_ylabel("mean training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    text = _svg(fig)
    plt.close(fig)
    return text


def _value(figures: Mapping[str, Any], task: str) -> float | None:
    if task in MASK_TASKS:
        dice = figures.get("dice")
        return float(dice) if isinstance(dice, int | float) else None
    pooled = figures.get("pooled") or {}
    median = pooled.get("median_mm")
    return float(median) if isinstance(median, int | float) else None


def error_figure(results: Mapping[str, Any], tasks: Sequence[str] = TASKS) -> str:
    """One panel per task: each model's held-out and test figure (median mm, or Dice) side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
    width = 0.38
    for ax, task in zip(axes.flat, tasks, strict=True):
        for g, group in enumerate(GROUPS):
            values = [_value(results.get(m, {}).get(task, {}).get(group, {}), task) for m in MODELS]
            xs = [i + (g - 0.5) * width for i in range(len(MODELS))]
            bars = ax.bar(xs, [v or 0.0 for v in values], width, label=GROUP_TITLES[group])
            for bar, v in zip(bars, values, strict=True):
                if v is None:
                    ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom", fontsize=7)
        if task in TARGETS:
            ax.axhline(TARGETS[task], color="#444", linestyle="--", linewidth=1, label="held-out target")
        ax.set_xticks(range(len(MODELS)), [MODEL_TITLES[m].replace(" ", "\n", 1) for m in MODELS], fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("Dice (higher is better)" if task in MASK_TASKS else "median error, mm (lower is better)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    text = _svg(fig)
    plt.close(fig)
    return text


def _results_rows(results: Mapping[str, Any]) -> str:
    rows = []
    for task in TASKS:
        for model in MODELS:
            cells = [html.escape(task), html.escape(MODEL_TITLES[model])]
            for group in GROUPS:
                figures = results.get(model, {}).get(task, {}).get(group, {})
                if task in TASK_LANDMARKS:
                    pooled = figures.get("pooled") or {}
                    median, failure = pooled.get("median_mm"), pooled.get("failure_rate")
                    cells.append("—" if median is None else f"{median:.1f} mm")
                    cells.append("—" if failure is None else f"{100 * failure:.0f} %")
                else:
                    dice = figures.get("dice")
                    cells += ["—" if dice is None else f"Dice {dice:.2f}", ""]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "<tr><th>task</th><th>model</th>" + "".join(
        f"<th>{html.escape(GROUP_TITLES[g])}</th><th>failure</th>" for g in GROUPS
    )
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def render_report(data: Mapping[str, Any]) -> str:
    """The page for the demo's ``results.json`` content."""
    seconds: Mapping[str, float] = data.get("seconds", {})
    settings = data.get("federation", {}).get("settings", {})
    title = f"cardiofm demo: seed {data.get('seed')}, {data.get('sites')} sites × {data.get('cases')} cases"
    timing = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.0f} s</td></tr>" for k, v in seconds.items())
    setting_rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in settings.items()
    )
    results = data.get("results", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Synthetic hospitals; errors are measured against the generator's truth, which the federation never
reads. Held-out sites hold no labels and trained no model head: their figures show how the models generalise.</p>
<h2>Training loss per round</h2>
<div class="figure">{loss_figure(data.get("curves", {}))}</div>
<h2>Errors per model and site group</h2>
<div class="figure">{error_figure(results)}</div>
{_results_rows(results)}
<h2>Settings and time</h2>
<table>{setting_rows}</table>
<table><tr><th>phase</th><th>time</th></tr>{timing}</table>
</body></html>
"""


def write_report(data: Mapping[str, Any], out: Path) -> Path:
    """Write ``out`` (the page for ``data``) and return it."""
    out.write_text(render_report(data), encoding="utf-8")
    return out

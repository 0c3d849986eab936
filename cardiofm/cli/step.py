"""``cardiofm step <name>``: run one processing step as a Kaapana container would (env contract)."""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(
    help="Run one processing step over a Kaapana batch (reads WORKFLOW_DIR, OPERATOR_IN_DIR, ...).",
    no_args_is_help=True,
)


def _run(name: str) -> None:
    import logging

    # a step runs in a container: its log is the operator's record, so progress is logged at INFO
    logging.getLogger("cardiofm").setLevel(logging.INFO)
    from cardiofm.contracts.kaapana import KaapanaContext
    from cardiofm.contracts.steps import STEPS
    from cardiofm.pipeline import case_steps, labels_step
    from cardiofm.pipeline.dataset_step import build_dataset
    from cardiofm.pipeline.runner import run_batch

    ctx = KaapanaContext.from_env(os.environ)
    params = STEPS[name].from_env(os.environ)
    if name == "build-dataset":
        summary, _ = build_dataset(ctx, params)  # type: ignore[arg-type]
    else:
        work = {
            "select-series": case_steps.select_case,
            "convert": case_steps.convert_case,
            "crop-heart": case_steps.crop_case,
            "import-labels": labels_step.import_labels_case,
        }[name]
        summary = run_batch(ctx, params, work)  # type: ignore[arg-type]
    typer.echo(f"{name}: {summary.total} in, {len(summary.done)} done, {len(summary.quarantined)} quarantined")
    sys.exit(summary.exit_code())


def _command(name: str) -> None:
    def command() -> None:
        _run(name)

    command.__doc__ = f"Run the {name} step (parameters from the environment, upper-cased field names)."
    app.command(name)(command)


for _name in ("select-series", "convert", "crop-heart", "import-labels", "build-dataset"):
    _command(_name)

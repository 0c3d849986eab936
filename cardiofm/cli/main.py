"""The ``cardiofm`` command line: one Typer app, sub-commands grouped by concern."""

from __future__ import annotations

import logging
import sys

import typer

from cardiofm import __version__
from cardiofm.cli import coordinator, demo, measure, phantoms, predict, prepare, send, site, step, train
from cardiofm.errors import CardioFMError

app = typer.Typer(
    name="cardiofm",
    help="Federated cardiac-CT foundation model: data preparation, training, federation, prediction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(phantoms.app, name="phantoms")
app.add_typer(step.app, name="step")
app.add_typer(coordinator.app, name="coordinator")
app.add_typer(site.app, name="site")
app.command("prepare")(prepare.prepare)
app.command("train")(train.train)
app.command("pseudolabel")(train.pseudolabel)
app.command("evaluate")(train.evaluate)
app.command("demo")(demo.demo)
app.command("send")(send.send)
app.command("measure")(measure.measure)
app.command("predict")(predict.predict)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cardiofm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages (default: warnings only)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    """Console-script entry point: run the app and turn cardiofm errors into their exit codes."""
    try:
        app()
    except CardioFMError as exc:
        logging.getLogger("cardiofm").error("%s", exc)
        sys.exit(exc.exit_code)

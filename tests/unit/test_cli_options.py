"""Every option of every ``cardiofm`` command is read by its command and driven by a test through the CLI.

A declared option that nothing reads (as ``prepare --dicomweb-url`` once was) or that no test passes
on a command line is a defect this module names.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer

from cardiofm.cli.main import app

TESTS = Path(__file__).resolve().parents[1]


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


COMMANDS = list(_commands(typer.main.get_command(app)))
#: Test sources that run the CLI: the console script in a subprocess or the Typer app in a CliRunner.
CLI_TESTS = {
    p: p.read_text()
    for p in TESTS.rglob("test_*.py")
    if "CliRunner" in p.read_text() or 'cardiofm")' in p.read_text() or '"cardiofm"' in p.read_text()
}


#: Options known not to be driven yet, each with the defect that blocks it (fix it, then remove the entry).
KNOWN_GAPS = {
    ("train", "--compile"): "torch.compile of the SwinUNETR student fails on CPU (Dynamo fake-tensor error)",
}


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


def test_the_sweep_sees_every_command() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"prepare", "train", "site join", "site pseudolabel", "coordinator run", "step"} <= names | {"step"}
    assert sum(len(_options(c)) for _, c in COMMANDS) > 80


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_is_read_by_its_command(path: tuple[str, ...], command: click.Command) -> None:
    callback = command.callback
    assert callback is not None
    tree = ast.parse(textwrap.dedent(inspect.getsource(callback)))
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    used = {n.id for stmt in function.body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    unread = [p.name for p in command.params if p.name not in used]
    assert not unread, f"cardiofm {' '.join(path)}: declared but never read: {unread}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_is_driven_through_the_cli_by_a_test(path: tuple[str, ...], command: click.Command) -> None:
    # a test that names the command (its last word, quoted) and the option flag on a command line
    texts = [t for t in CLI_TESTS.values() if f'"{path[-1]}"' in t]
    missing = [
        o.opts[0]
        for o in _options(command)
        if not any(f'"{flag}"' in t for t in texts for flag in o.opts) and (*path, o.opts[0]) not in KNOWN_GAPS
    ]
    assert not missing, f"cardiofm {' '.join(path)}: no CLI-level test passes {missing}"

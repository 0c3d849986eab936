"""``cardiofm step [<name>]``: run one step as a Kaapana container would (env contract).

Every container image's entrypoint is ``cardiofm step``; with no name it runs the step named by
``CARDIOFM_STEP`` (Kaapana's ``KaapanaBaseOperator`` does not pass ``cmds``/``arguments`` to the pod, so the
step is chosen through the environment). Parameters come from the environment, upper-cased field names of
the step's params model (:data:`cardiofm.contracts.steps.STEPS`). Relative paths in them are relative to
``CARDIOFM_DATA_ROOT`` when it is set (the site's persistent data folder), else to the working directory.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import typer

from cardiofm.contracts.steps import STEPS

STEP_VAR = "CARDIOFM_STEP"
DATA_ROOT_VAR = "CARDIOFM_DATA_ROOT"
#: Install-time defaults (Kaapana's extension settings): ``CARDIOFM_DEFAULT_SUPERLINK`` fills ``SUPERLINK``
#: when the run's form leaves it empty.
DEFAULT_PREFIX = "CARDIOFM_DEFAULT_"

app = typer.Typer(
    help=f"Run one step over a Kaapana workflow folder; with no name, the step named by ${STEP_VAR}.",
    invoke_without_command=True,
)


@app.callback()
def _from_env(ctx: typer.Context) -> None:
    """Run the step named by $CARDIOFM_STEP (the images' entrypoint), or the named sub-command."""
    if ctx.invoked_subcommand is not None:
        return
    name = os.environ.get(STEP_VAR, "").strip()
    if not name:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if name not in STEPS:
        from cardiofm.errors import ConfigError

        raise ConfigError(f"{STEP_VAR}={name!r} is not a step; known steps: {', '.join(sorted(STEPS))}")
    _run(name)


def _batch_step(name: str) -> Callable[[Mapping[str, str]], int]:
    def run(env: Mapping[str, str]) -> int:
        from cardiofm.contracts.kaapana import KaapanaContext
        from cardiofm.pipeline import case_steps, labels_step
        from cardiofm.pipeline.dataset_step import build_dataset
        from cardiofm.pipeline.report_step import prepare_report
        from cardiofm.pipeline.runner import run_batch
        from cardiofm.pipeline.stage_step import stage_studies

        ctx = KaapanaContext.from_env(env)
        params = STEPS[name].from_env(env)
        if name == "stage-studies":
            summary = stage_studies(ctx, params, env)  # type: ignore[arg-type]
        elif name == "stage-series":
            from cardiofm.pipeline.stage_series import stage_series

            summary = stage_series(ctx, params, env)  # type: ignore[arg-type]
        elif name == "build-dataset":
            summary, _ = build_dataset(ctx, params)  # type: ignore[arg-type]
        elif name == "prepare-report":
            result = prepare_report(ctx, params)  # type: ignore[arg-type]
            n_q = sum(1 for q in result.quarantined if q["kind"] == "study")
            typer.echo(f"{name}: {result.studies_in} in = {result.prepared} prepared + {n_q} quarantined")
            return result.exit_code()
        else:
            prepare_work = {
                "select-series": case_steps.select_case,
                "convert": case_steps.convert_case,
                "crop-heart": case_steps.crop_case,
                "import-labels": labels_step.import_labels_case,
            }
            if name == "send-results" and params.kind == "folder":  # type: ignore[attr-defined]
                from cardiofm.errors import NothingToDoError

                raise NothingToDoError(
                    "send-results: no PACS to store into (DICOMWEB_URL or DIMSE); the results stay in the run's folders"
                )
            work = prepare_work[name] if name in prepare_work else _predict_work(name)
            summary = run_batch(ctx, params, work)  # type: ignore[arg-type]
        typer.echo(f"{name}: {summary.total} in, {len(summary.done)} done, {len(summary.quarantined)} quarantined")
        return summary.exit_code()

    return run


def _predict_work(name: str) -> Callable[..., list[str]]:
    """The per-series work of a predict-chain step (imported only for those steps: predict needs torch)."""
    from cardiofm.prediction import chain

    work: dict[str, Callable[..., list[str]]] = {
        "predict": chain.predict_case,
        "measure": chain.measure_case,
        "export-dicom": chain.export_dicom_case,
        "send-results": chain.send_results_case,
    }
    return work[name]


def _site_pseudolabel(env: Mapping[str, str]) -> int:
    from cardiofm.contracts.coordinator import SitePseudolabelParams
    from cardiofm.contracts.federated_run import SiteNodeConfig
    from cardiofm.federated.task import pseudolabel_site

    params = SitePseudolabelParams.from_env(env)
    params.check()
    site = SiteNodeConfig(dataset=params.dataset.resolve(), work_dir=params.work_dir.resolve())
    written = pseudolabel_site(site, params.tasks or None, params.teachers_dir)
    typer.echo(f"site-pseudolabel: {', '.join(f'{t} {n} case(s)' for t, n in written.items())}")
    return 0


#: The site bundle as environment secrets (Kaapana's pods get them so): field → variable holding the PEM text.
TLS_ENV = {"ca_cert": "CARDIOFM_CA_CERT_PEM", "private_key": "CARDIOFM_SITE_KEY_PEM"}


def _tls_from_env(params: object, env: Mapping[str, str], folder: Path) -> dict[str, Path]:
    """Write TLS material given as env secrets into ``folder`` (private: 0700, files 0600) for the SuperNode."""
    given = {field: env[var] for field, var in TLS_ENV.items() if env.get(var) and getattr(params, field) is None}
    if not given:
        return {}
    os.chmod(folder, 0o700)
    paths = {}
    for field, text in given.items():
        path = folder / f"{field}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        paths[field] = path
    return paths


def _site_join(env: Mapping[str, str]) -> int:
    from cardiofm.contracts.coordinator import SiteJoinParams
    from cardiofm.federated.supernode import join

    params = SiteJoinParams.from_env(env)
    update: dict[str, object] = {"work_dir": params.work_dir.resolve()}
    # the key material lives only as long as the SuperNode: removed when the join ends
    with tempfile.TemporaryDirectory(prefix="cardiofm-tls-") as folder:
        update.update(_tls_from_env(params, env, Path(folder)))
        result = join(params.model_copy(update=update))
    typer.echo(f"site-join: run {result.run_id} finished after {result.seconds:.0f} s")
    return 0


def _train_local(env: Mapping[str, str]) -> int:
    from cardiofm.contracts.federated_run import TEACHER_PREFIX, FederatedRunConfig
    from cardiofm.contracts.steps import TrainLocalParams
    from cardiofm.errors import MissingResourceError
    from cardiofm.federated.task import train_local_teacher

    params = TrainLocalParams.from_env(env)
    if not (params.dataset / "manifest.json").is_file():
        raise MissingResourceError(f"site dataset {params.dataset} has no manifest.json: run cardiofm-prepare first")
    out = params.out.resolve()
    values = {**params.run_config, "stage": TEACHER_PREFIX + params.task, "out-dir": str(out.parent)}
    run = FederatedRunConfig.from_run_config(values)
    checkpoint = train_local_teacher(params.dataset.resolve(), run, params.steps, out)
    typer.echo(f"train-local: teacher for {params.task}, {params.steps} steps: {checkpoint}")
    return 0


_RUNNERS: dict[str, Callable[[Mapping[str, str]], int]] = {
    **{name: _batch_step(name) for name, params in STEPS.items() if params.batch},
    "site-pseudolabel": _site_pseudolabel,
    "site-join": _site_join,
    "train-local": _train_local,
}


def _run(name: str) -> None:
    import logging

    # a step runs in a container: its log is the operator's record, so progress is logged at INFO
    logging.getLogger("cardiofm").setLevel(logging.INFO)
    root = os.environ.get(DATA_ROOT_VAR, "").strip()
    if root:
        from cardiofm.errors import ConfigError

        if not os.path.isdir(root):
            raise ConfigError(f"{DATA_ROOT_VAR}={root} is not a folder: mount the site's data folder there")
        os.chdir(root)
    sys.exit(_RUNNERS[name](with_defaults(name, os.environ)))


def with_defaults(name: str, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with each of the step's variables that is unset or empty filled from ``CARDIOFM_DEFAULT_<VAR>``."""
    filled = dict(env)
    for var in STEPS[name].env_names():
        default = env.get(DEFAULT_PREFIX + var, "").strip()
        if default and not env.get(var, "").strip():
            filled[var] = default
    return filled


def _command(name: str) -> None:
    def command() -> None:
        _run(name)

    command.__doc__ = f"Run the {name} step (parameters from the environment, upper-cased field names)."
    app.command(name)(command)


for _name in STEPS:
    _command(_name)

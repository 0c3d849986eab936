"""Heart segmentation with TotalSegmentator (``--fast --roi_subset heart``), offline and on CPU.

TotalSegmentator and its dependencies live in their own virtual environment (``.venvs/segmenter``,
built by ``make segmenter``); the main venv never imports them. The crop-heart step calls
:func:`run_in_segmenter_venv`, which runs ``python -m cardiofm.imaging.totalseg IN OUT`` with the
segmenter venv's interpreter. This module therefore imports nothing heavy at module level.

Offline rules enforced here
---------------------------
* Weights are never downloaded. :func:`check_weights` requires ``TOTALSEG_WEIGHTS_PATH`` or
  ``TOTALSEG_HOME_DIR`` (weights in ``$TOTALSEG_HOME_DIR/nnunet/results``) to hold the dataset folders
  of the fast model (297) and of the crop model (298); else it raises :class:`MissingResourceError`.
  Inside the segmenter process TotalSegmentator's download function is replaced by a check that
  raises the same error.
* Usage statistics are off: ``$TOTALSEG_HOME_DIR/config.json`` gets ``send_usage_stats: false`` and the
  in-process statistics call is replaced by a no-op.
* torchvision does not import beside torch 2.13.0+cpu (``operator torchvision::nms does not exist``);
  nnU-Net's trainer search would import it. The trainer classes the models need are registered in
  TotalSegmentator's ``custom_trainers`` mapping first, so the search is skipped.
* nnU-Net uses spawn multiprocessing: the entry point runs under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cardiofm import errors
from cardiofm.errors import CardioFMError, ConfigError, ExternalToolError, InputDataError, MissingResourceError

logger = logging.getLogger(__name__)

ENV_HOME = "TOTALSEG_HOME_DIR"
ENV_WEIGHTS = "TOTALSEG_WEIGHTS_PATH"

#: ``--fast`` model of the ``total`` task (3 mm).
DATASET_FAST = "Dataset297_TotalSegmentator_total_3mm_1559subj"
#: Crop model used with ``roi_subset`` (6 mm).
DATASET_CROP = "Dataset298_TotalSegmentator_total_6mm_1559subj"
FAST_DATASETS: tuple[str, str] = (DATASET_FAST, DATASET_CROP)
#: nnU-Net trainer, plans and configuration of both models (folder ``<trainer>__<plans>__<configuration>``).
TRAINER_FAST = "nnUNetTrainer_4000epochs_NoMirroring"
PLANS_NAME = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
#: Dataset folders each supported task needs.
TASK_DATASETS: dict[str, tuple[str, ...]] = {
    "total_fast": FAST_DATASETS,
    "total_fastest": (DATASET_CROP,),
}
WEIGHTS_URL = "https://github.com/wasserth/TotalSegmentator/releases/download/v2.0.0-weights/{folder}.zip"
HEART_LABEL = "heart"
#: Marker of the one-line JSON error report the segmenter process writes to stderr.
ERROR_MARKER = "CARDIOFM_ERROR "
MAKE_HINT = "run `make segmenter` to build the segmenter venv (.venvs/segmenter)"
_TAIL_LINES = 40
_TAIL_CHARS = 4000


def model_subfolder(trainer: str = TRAINER_FAST) -> str:
    """nnU-Net result subfolder name of a model: ``<trainer>__nnUNetPlans__3d_fullres``."""
    return f"{trainer}__{PLANS_NAME}__{CONFIGURATION}"


def default_home_dir() -> Path:
    """TotalSegmentator's own default home (used when ``TOTALSEG_HOME_DIR`` is unset)."""
    home = Path.home()
    return (Path("/tmp") if str(home) == "/" else home) / ".totalsegmentator"


def tail(text: str, lines: int = _TAIL_LINES, chars: int = _TAIL_CHARS) -> str:
    """The last ``lines`` lines (at most ``chars`` characters) of ``text``."""
    kept = "\n".join(text.rstrip().splitlines()[-lines:])
    return kept[-chars:]


def _provisioning_hint(folders: Iterable[str]) -> str:
    names = list(folders)
    urls = ", ".join(WEIGHTS_URL.format(folder=f) for f in names)
    return (
        "cardiofm never downloads weights. Provision them offline: fetch the zip files on a connected machine "
        f"({urls}), then inside the segmenter venv run `totalseg_import_weights -i <zip>` with {ENV_HOME} set, "
        f"or unzip/copy the folders so that <weights dir>/{names[0] if names else '<DatasetXXX>'}/ exists; "
        "on Kaapana, install the TotalSegmentator models with the platform's model installer. "
        f"Then set {ENV_HOME} (weights in ${ENV_HOME}/nnunet/results) or {ENV_WEIGHTS} (the results folder itself)."
    )


def _required_datasets(tasks: Sequence[str]) -> list[str]:
    needed: list[str] = []
    for task in tasks:
        if task not in TASK_DATASETS:
            raise ConfigError(f"unknown TotalSegmentator task {task!r}; supported: {sorted(TASK_DATASETS)}")
        needed.extend(d for d in TASK_DATASETS[task] if d not in needed)
    return needed


def _model_complete(dataset_dir: Path) -> bool:
    model = dataset_dir / model_subfolder()
    return all((model / name).is_file() for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"))


def write_private_config(home_dir: Path) -> Path:
    """Create or update ``home_dir/config.json`` so that TotalSegmentator sends no usage statistics."""
    path = home_dir / "config.json"
    config: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                config = loaded
        except (OSError, ValueError):
            logger.warning("replacing unreadable TotalSegmentator config %s", path)
    wanted = {"send_usage_stats": False, "statistics_disclaimer_shown": True}
    if all(config.get(k) == v for k, v in wanted.items()):
        return path
    config.setdefault("totalseg_id", "totalseg_cardiofm")
    config.setdefault("prediction_counter", 0)
    config.update(wanted)
    home_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".config.json.{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=4))
    tmp.replace(path)
    logger.info("TotalSegmentator usage statistics disabled in %s", path)
    return path


def check_weights(tasks: Sequence[str] = ("total_fast",), env: Mapping[str, str] | None = None) -> Path:
    """Resolve TotalSegmentator's weights folder and check that ``tasks`` can run offline.

    Parameters
    ----------
    tasks:
        Task names from :data:`TASK_DATASETS` (``"total_fast"`` needs datasets 297 and 298).
    env:
        Environment to read ``TOTALSEG_WEIGHTS_PATH`` / ``TOTALSEG_HOME_DIR`` from (default ``os.environ``).

    Returns
    -------
    pathlib.Path
        The weights folder (``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``).

    Raises
    ------
    MissingResourceError
        If neither variable is set, or a needed dataset folder is missing or incomplete. Nothing is
        downloaded.
    ConfigError
        If a task name is unknown.

    Notes
    -----
    On success ``config.json`` in the TotalSegmentator home (``$TOTALSEG_HOME_DIR``, else TotalSegmentator's
    default ``~/.totalsegmentator``) is created or updated with ``send_usage_stats: false``.
    """
    environ = os.environ if env is None else env
    needed = _required_datasets(tasks)
    weights_var = environ.get(ENV_WEIGHTS, "").strip()
    home_var = environ.get(ENV_HOME, "").strip()
    if weights_var:
        weights_dir, source = Path(weights_var), ENV_WEIGHTS
    elif home_var:
        weights_dir, source = Path(home_var) / "nnunet" / "results", f"{ENV_HOME}/nnunet/results"
    else:
        raise MissingResourceError(
            f"TotalSegmentator weights not configured: neither {ENV_WEIGHTS} nor {ENV_HOME} is set; "
            f"needed dataset folders: {', '.join(needed)}. {_provisioning_hint(needed)}"
        )
    missing = [d for d in needed if not (weights_dir / d).is_dir()]
    incomplete = [d for d in needed if d not in missing and not _model_complete(weights_dir / d)]
    if missing or incomplete:
        parts = []
        if missing:
            parts.append(f"missing dataset folder(s) {', '.join(missing)}")
        if incomplete:
            parts.append(
                f"incomplete dataset folder(s) {', '.join(incomplete)} "
                f"(expected {model_subfolder()}/dataset.json, plans.json and fold_0/checkpoint_final.pth)"
            )
        raise MissingResourceError(
            f"TotalSegmentator weights not usable in {weights_dir} (from {source}; "
            f"{ENV_WEIGHTS}={'set' if weights_var else 'unset'}, {ENV_HOME}={'set' if home_var else 'unset'}): "
            f"{'; '.join(parts)}. {_provisioning_hint(missing + incomplete)}"
        )
    home_dir = Path(home_var) if home_var else default_home_dir()
    try:
        write_private_config(home_dir)
    except OSError as exc:
        # the in-process statistics call is disabled as well (see _prepare_totalsegmentator)
        logger.warning("cannot write %s (%s); usage statistics stay disabled in-process", home_dir, exc)
    return weights_dir


def _prepare_totalsegmentator() -> Any:
    """Import TotalSegmentator's Python API with trainers pre-registered, downloads and statistics disabled."""
    from totalsegmentator import config as ts_config  # type: ignore[import-not-found,unused-ignore]

    ts_config.setup_nnunet()  # sets nnUNet_results before nnU-Net is imported
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (  # type: ignore[import-not-found,unused-ignore]
        nnUNetTrainerNoMirroring,
    )
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring import (  # type: ignore[import-not-found,unused-ignore]
        nnUNetTrainer_4000epochs_NoMirroring,
    )
    from totalsegmentator import nnunet as ts_nnunet  # type: ignore[import-not-found,unused-ignore]
    from totalsegmentator import python_api  # type: ignore[import-not-found,unused-ignore]
    from totalsegmentator.map_tasks_config import (  # type: ignore[import-not-found,unused-ignore]
        TASK_ID_WEIGHTS_CONFIGS,
    )

    ts_nnunet.custom_trainers.setdefault("nnUNetTrainer_4000epochs_NoMirroring", nnUNetTrainer_4000epochs_NoMirroring)
    ts_nnunet.custom_trainers.setdefault("nnUNetTrainerNoMirroring", nnUNetTrainerNoMirroring)

    def no_download(task_id: int | str) -> None:
        folder = str(TASK_ID_WEIGHTS_CONFIGS.get(task_id, {}).get("foldername", f"task {task_id}"))
        weights_dir = Path(ts_config.get_weights_dir())
        if not (weights_dir / folder).is_dir():
            raise MissingResourceError(
                f"TotalSegmentator wants weights {folder} (task {task_id}), which are not in {weights_dir}. "
                f"{_provisioning_hint([folder])}"
            )

    def no_stats(*_args: object, **_kwargs: object) -> None:
        return None

    python_api.download_pretrained_weights = no_download
    python_api.send_usage_stats = no_stats
    return python_api.totalsegmentator


def _load_nifti(path: Path) -> tuple[Any, Any]:
    """(data array with a trailing singleton 4th axis dropped, affine) of a NIfTI file, unchanged."""
    import nibabel as nib
    import numpy as np

    img: Any = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, np.asarray(img.affine, dtype=np.float64)


def _save_mask(path: Path, mask: Any, affine: Any) -> None:
    """Write a uint8 mask with exactly ``affine`` (qform and sform, code 1, mm)."""
    import nibabel as nib

    make_image: Any = nib.Nifti1Image
    img = make_image(mask, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def segment_heart_totalseg(input_nifti: Path, output_mask: Path, *, device: str = "cpu") -> Path:
    """Segment the heart of a CT NIfTI with TotalSegmentator (fast model, ``roi_subset=["heart"]``).

    Runs only where TotalSegmentator is installed (the segmenter venv); from the main venv use
    :func:`run_in_segmenter_venv`. Must be called under ``if __name__ == "__main__"`` (spawn).

    Parameters
    ----------
    input_nifti:
        CT volume in HU (``.nii`` / ``.nii.gz``).
    output_mask:
        Where to write the binary heart mask (uint8, 1 = heart) on exactly the input grid.
    device:
        TotalSegmentator device (``"cpu"``, ``"gpu"``, ``"gpu:N"``, ``"mps"``).

    Raises
    ------
    InputDataError
        If the input does not exist.
    MissingResourceError
        If the weights are missing (see :func:`check_weights`).
    ExternalToolError
        If TotalSegmentator fails or writes no usable mask; ``log_tail`` holds its last output lines.
    """
    import numpy as np

    input_nifti = Path(input_nifti).resolve()
    output_mask = Path(output_mask).resolve()
    if not input_nifti.is_file():
        raise InputDataError(f"input NIfTI {input_nifti} does not exist")
    check_weights(("total_fast",))
    t0 = time.perf_counter()
    run_totalsegmentator = _prepare_totalsegmentator()
    captured = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="cardiofm-totalseg-") as tmp:
        out_dir = Path(tmp) / "seg"
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                run_totalsegmentator(
                    input_nifti,
                    out_dir,
                    fast=True,
                    roi_subset=[HEART_LABEL],
                    ml=False,
                    device=device,
                    nr_thr_resamp=1,
                    nr_thr_saving=1,
                )
        except CardioFMError:
            raise
        except (Exception, SystemExit) as exc:
            log = captured.getvalue() + "\n" + traceback.format_exc()
            raise ExternalToolError(
                f"TotalSegmentator failed on {input_nifti.name}: {type(exc).__name__}: {exc}", log_tail=tail(log)
            ) from exc
        logger.debug("TotalSegmentator output:\n%s", tail(captured.getvalue()))
        heart_file = out_dir / f"{HEART_LABEL}.nii.gz"
        if not heart_file.is_file():
            raise ExternalToolError(
                f"TotalSegmentator wrote no {heart_file.name} for {input_nifti.name}",
                log_tail=tail(captured.getvalue()),
            )
        src_data, src_affine = _load_nifti(input_nifti)
        seg_data, seg_affine = _load_nifti(heart_file)
        src_shape = tuple(src_data.shape[:3])
        if tuple(seg_data.shape) != src_shape or not np.allclose(seg_affine, src_affine, atol=1e-3):
            raise ExternalToolError(
                f"TotalSegmentator mask grid {seg_data.shape} does not match the input grid {src_shape}",
                log_tail=tail(captured.getvalue()),
            )
        mask = (seg_data > 0).astype(np.uint8)
    _save_mask(output_mask, mask, src_affine)
    voxels = int(mask.sum())
    if voxels == 0:
        logger.warning("TotalSegmentator found no heart in %s (empty mask written)", input_nifti.name)
    logger.info("TotalSegmentator heart mask: %d voxels in %.1f s -> %s", voxels, time.perf_counter() - t0, output_mask)
    return output_mask


def _error_from_report(report: Mapping[str, Any]) -> CardioFMError:
    """Rebuild the CardioFMError a segmenter process reported."""
    name = str(report.get("type", ""))
    message = str(report.get("message", "segmenter failed"))
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, CardioFMError)):
        return ExternalToolError(f"segmenter failed ({name}): {message}", log_tail=str(report.get("log_tail", "")))
    if issubclass(cls, ExternalToolError):
        return cls(message, log_tail=str(report.get("log_tail", "")))
    return cls(message)


def _find_report(stderr: str) -> dict[str, Any] | None:
    for line in reversed(stderr.splitlines()):
        if line.startswith(ERROR_MARKER):
            try:
                report = json.loads(line[len(ERROR_MARKER) :])
            except ValueError:
                return None
            return report if isinstance(report, dict) else None
    return None


def _as_text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def run_in_segmenter_venv(
    python: Path,
    input_nifti: Path,
    output_mask: Path,
    timeout_s: float,
    *,
    device: str = "cpu",
    env: Mapping[str, str | None] | None = None,
) -> Path:
    """Run :func:`segment_heart_totalseg` in the segmenter venv (``python -m cardiofm.imaging.totalseg``).

    Parameters
    ----------
    python:
        Interpreter of the segmenter venv (``.venvs/segmenter/bin/python``).
    input_nifti, output_mask:
        As for :func:`segment_heart_totalseg`.
    timeout_s:
        Wall-clock limit of the subprocess, s.
    device:
        TotalSegmentator device.
    env:
        Variables to set (value ``None``: remove) on top of this process's environment, which is passed
        through (``TOTALSEG_HOME_DIR``, ``TOTALSEG_WEIGHTS_PATH``, proxies, ``PATH``).

    Raises
    ------
    MissingResourceError
        If the interpreter does not exist (run ``make segmenter``) or the weights are missing.
    ExternalToolError
        If the process fails, times out or writes no mask.
    InputDataError, ConfigError
        As reported by the segmenter process.
    """
    python = Path(python)
    if not python.exists():
        raise MissingResourceError(f"segmenter interpreter {python} not found: {MAKE_HINT}")
    child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    child_env["PYTHONUNBUFFERED"] = "1"
    output_mask = Path(output_mask).resolve()
    cmd = [
        str(python),
        "-m",
        "cardiofm.imaging.totalseg",
        str(Path(input_nifti).resolve()),
        str(output_mask),
        "--device",
        device,
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=child_env, check=False)
    except subprocess.TimeoutExpired as exc:
        log = _as_text(exc.stdout) + "\n" + _as_text(exc.stderr)
        raise ExternalToolError(f"segmenter timed out after {timeout_s:.0f} s", log_tail=tail(log)) from exc
    except OSError as exc:
        raise MissingResourceError(f"cannot start segmenter interpreter {python} ({exc}): {MAKE_HINT}") from exc
    elapsed = time.perf_counter() - t0
    log = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        report = _find_report(proc.stderr)
        if report is not None:
            raise _error_from_report(report)
        raise ExternalToolError(f"segmenter exited with status {proc.returncode}", log_tail=tail(log))
    if not output_mask.is_file():
        raise ExternalToolError(f"segmenter exited 0 but wrote no {output_mask.name}", log_tail=tail(log))
    logger.info("segmenter venv run: %.1f s", elapsed)
    return output_mask


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m cardiofm.imaging.totalseg IN OUT [--device cpu]`` (segmenter venv)."""
    parser = argparse.ArgumentParser(
        prog="python -m cardiofm.imaging.totalseg", description="Binary heart mask with TotalSegmentator (offline)."
    )
    parser.add_argument("input", type=Path, help="CT NIfTI (HU)")
    parser.add_argument("output", type=Path, help="heart mask NIfTI to write (uint8, input grid)")
    parser.add_argument("--device", default="cpu", help="cpu (default), gpu, gpu:N, mps, or auto (gpu if CUDA works)")
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "gpu" if torch.cuda.is_available() else "cpu"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        segment_heart_totalseg(args.input, args.output, device=args.device)
    except CardioFMError as exc:
        report = {
            "type": type(exc).__name__,
            "message": str(exc),
            "log_tail": getattr(exc, "log_tail", ""),
        }
        logger.error("%s: %s", type(exc).__name__, exc)
        sys.stderr.write(ERROR_MARKER + json.dumps(report) + "\n")
        sys.stderr.flush()
        sys.exit(exc.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()

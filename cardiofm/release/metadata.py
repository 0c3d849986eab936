"""The MONAI bundle's two configs: ``configs/metadata.json`` and ``configs/inference.json``.

The inference config is plain data whose ``_target_`` entries name :mod:`cardiofm.release.bundle`
(``load_network``, ``run_inference``); MONAI's ``run`` instantiates them, nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

from cardiofm import __version__
from cardiofm.release.card import CardFacts
from cardiofm.training.checkpoint import Checkpoint

#: Any size: the model runs by sliding windows of the training patch size.
ANY_SHAPE = ["*", "*", "*"]


def metadata(ckpt: Checkpoint, facts: CardFacts, schema: str) -> dict[str, Any]:
    """The bundle's ``metadata.json`` (MONAI bundle specification), validated by the shipped schema.

    Parameters
    ----------
    ckpt
        The released model.
    facts
        Card facts (version, authors, metrics, changelog).
    schema
        The ``schema`` entry: the shipped schema's path in the release (verify_metadata reads it offline).
    """
    import monai
    import numpy
    import safetensors
    import torch

    pre = ckpt.train_config.preprocessing
    outputs = {
        task: {
            "type": "image",
            "format": "labels",
            "num_channels": len(names),
            "spatial_shape": ANY_SHAPE,
            "dtype": "float32",
            "value_range": [0, 1],
            "is_patch_data": False,
            "channel_def": {str(i): name for i, name in enumerate(names)},
        }
        for task, names in ckpt.label_names.items()
    }
    metrics = {group: dict(result.metrics) for group, result in facts.metrics.items()}
    return {
        "schema": schema,
        "version": facts.version,
        "changelog": facts.changelog or {facts.version: "release written by cardiofm"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {
            "cardiofm": __version__,
            "nibabel": _version("nibabel"),
            "safetensors": safetensors.__version__,
        },
        "name": facts.name,
        "task": "Aortic-root landmarks, membranous septum and calcification in pre-TAVI cardiac CT",
        "description": facts.description,
        "authors": facts.authors,
        "copyright": facts.copyright,
        "data_type": "nifti",
        "image_classes": (
            f"one channel, CT in HU, resampled to {pre.spacing_mm:g} mm; clipped to "
            f"[{pre.hu_clip_low:g}, {pre.hu_clip_high:g}] and standardised inside the runner"
        ),
        "pred_classes": "per head: softmax channels, channel 0 background (see channel_def)",
        "eval_metrics": metrics,
        "intended_use": "Research and TAVI planning support; not a diagnostic device",
        "references": ["Tölle et al. 2024, Federated Foundation Model for Cardiac CT Imaging, arXiv 2407.07557"],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": ANY_SHAPE,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {"0": "CT (HU)"},
                }
            },
            "outputs": outputs,
        },
        "cardiofm_heart_conditioning": ckpt.model_config.heart_conditioning,
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def inference_config() -> dict[str, Any]:
    """The bundle's ``inference.json``: ``run`` predicts ``input_image`` into ``output_dir``.

    Every top-level key can be overridden on MONAI's command line (``--input_image ct.nii.gz``).
    """
    return {
        "bundle_root": ".",
        "input_image": "",
        "heart_image": None,
        "output_dir": "$@bundle_root + '/eval'",
        "device": "cpu",
        "network_def": {"_target_": "cardiofm.release.bundle.load_network", "bundle_root": "@bundle_root"},
        "predict": {
            "_target_": "cardiofm.release.bundle.run_inference",
            "bundle_root": "@bundle_root",
            "input_image": "@input_image",
            "output_dir": "@output_dir",
            "device": "@device",
            "heart_image": "@heart_image",
        },
        "run": ["@predict"],
    }

"""STAND-IN TotalSegmentator weights for offline integration tests. THEY PRODUCE MEANINGLESS MASKS.

!!! NEVER USE THESE FOLDERS FOR ANY REAL SEGMENTATION, CLINICAL OR RESEARCH !!!

:func:`write_standin_weights` writes nnU-Net v2 result folders that look like TotalSegmentator's
``Dataset297_TotalSegmentator_total_3mm_1559subj`` (``--fast`` model) and
``Dataset298_TotalSegmentator_total_6mm_1559subj`` (crop model): ``dataset.json`` with the 117 labels of
the ``total`` task, ``plans.json`` describing a tiny 3-stage ``PlainConvUNet`` and
``fold_0/checkpoint_final.pth`` with **random** weights whose final-layer bias favours the ``heart``
label, so the crop is never empty. They exist only so that the real TotalSegmentator / nnU-Net code path
(crop model → crop → fast model → ``heart.nii.gz``) can run offline in CI; the resulting "heart" mask
covers (nearly) the whole volume regardless of the anatomy.

This module imports torch and TotalSegmentator and therefore runs only inside the segmenter venv
(``.venvs/segmenter``, built by ``make segmenter``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cardiofm.imaging.totalseg import (
    FAST_DATASETS,
    PLANS_NAME,
    TRAINER_FAST,
    model_subfolder,
    write_private_config,
)

logger = logging.getLogger(__name__)

#: Seed of the random weights (the stand-in output is deterministic).
STANDIN_SEED = 297
#: Final-layer bias added to the ``heart`` logit; large enough that random features never beat it.
HEART_BIAS = 8.0
#: Marker written into every stand-in folder so that nobody mistakes it for real weights.
STANDIN_MARKER = "STANDIN_WEIGHTS_MEANINGLESS.txt"

_NETWORK = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
_FEATURES = [4, 8, 16]


def _arch_kwargs() -> dict[str, Any]:
    return {
        "n_stages": 3,
        "features_per_stage": _FEATURES,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def _plans(dataset_name: str, spacing_mm: float) -> dict[str, Any]:
    resample_kwargs = {"order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name,
        "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": [spacing_mm] * 3,
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": f"{PLANS_NAME}_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [32, 32, 32],
                "median_image_size_in_voxels": [64, 64, 64],
                "spacing": [spacing_mm] * 3,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resample_kwargs},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resample_kwargs},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resample_kwargs},
                "architecture": {
                    "network_class_name": _NETWORK,
                    "arch_kwargs": _arch_kwargs(),
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 3000.0,
                "mean": 100.0,
                "median": 80.0,
                "min": -1024.0,
                "percentile_00_5": -1000.0,
                "percentile_99_5": 1500.0,
                "std": 300.0,
            }
        },
    }


def write_standin_weights(home_dir: Path) -> Path:
    """Write STAND-IN (random, meaningless) weights for datasets 297 and 298 under ``home_dir``.

    Layout: ``home_dir/nnunet/results/<Dataset…>/<trainer>__nnUNetPlans__3d_fullres/`` plus
    ``home_dir/config.json`` with ``send_usage_stats: false``; point ``TOTALSEG_HOME_DIR`` at ``home_dir``.
    Returns the weights folder (``home_dir/nnunet/results``).
    """
    import torch  # type: ignore[import-not-found,unused-ignore]
    from dynamic_network_architectures.architectures.unet import (  # type: ignore[import-not-found,unused-ignore]
        PlainConvUNet,
    )
    from totalsegmentator.map_to_binary import class_map  # type: ignore[import-not-found,unused-ignore]

    labels: dict[int, str] = dict(class_map["total"])
    heart_id = next(k for k, v in labels.items() if v == "heart")
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: idx for idx, name in sorted(labels.items())}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "name": "STANDIN - random weights, meaningless output",
    }
    n_out = len(labels) + 1
    results = home_dir / "nnunet" / "results"
    spacings = {FAST_DATASETS[0]: 3.0, FAST_DATASETS[1]: 6.0}
    for dataset_name, spacing in spacings.items():
        folder = results / dataset_name / model_subfolder(TRAINER_FAST)
        (folder / "fold_0").mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
        (folder / "plans.json").write_text(json.dumps(_plans(dataset_name, spacing), indent=1))
        (results / dataset_name / STANDIN_MARKER).write_text(
            "Random stand-in weights written by cardiofm.imaging.totalseg_standin for offline tests.\n"
            "The masks they produce are MEANINGLESS. Replace with the real TotalSegmentator weights.\n"
        )
        torch.manual_seed(STANDIN_SEED)
        kw = _arch_kwargs()
        net = PlainConvUNet(
            input_channels=1,
            n_stages=kw["n_stages"],
            features_per_stage=kw["features_per_stage"],
            conv_op=torch.nn.Conv3d,
            kernel_sizes=kw["kernel_sizes"],
            strides=kw["strides"],
            n_conv_per_stage=kw["n_conv_per_stage"],
            num_classes=n_out,
            n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
            conv_bias=True,
            norm_op=torch.nn.InstanceNorm3d,
            norm_op_kwargs=kw["norm_op_kwargs"],
            nonlin=torch.nn.LeakyReLU,
            nonlin_kwargs=kw["nonlin_kwargs"],
            deep_supervision=False,
        )
        with torch.no_grad():
            for seg_layer in net.decoder.seg_layers:
                seg_layer.bias.zero_()
                seg_layer.bias[heart_id] = HEART_BIAS
        checkpoint = {
            "network_weights": net.state_dict(),
            "trainer_name": TRAINER_FAST,
            "init_args": {"plans": None, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json},
            "inference_allowed_mirroring_axes": None,
        }
        torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    write_private_config(home_dir)
    logger.warning("wrote STAND-IN TotalSegmentator weights (random, meaningless masks) to %s", results)
    return results

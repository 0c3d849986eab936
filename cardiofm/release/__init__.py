"""The model release: a folder a clinic loads (safetensors weights, configs, model card, MONAI bundle).

:func:`write_release` writes it, :func:`load_release` reads it back as a checkpoint, :func:`load_model`
takes either a checkpoint file or a release folder.
"""

from cardiofm.release.card import CardFacts, GroupMetrics, TaskData
from cardiofm.release.folder import load_model, load_release, write_release

__all__ = ["CardFacts", "GroupMetrics", "TaskData", "load_model", "load_release", "write_release"]

"""One error hierarchy for cardiofm; every class carries the process exit code it maps to.

Exit codes follow the step contract: 0 ok, 126 skip (Kaapana treats it as a skipped task), and one
code per error class so an operator log tells at a glance what kind of failure happened.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_SKIP = 126


class CardioFMError(Exception):
    """Base class of every error cardiofm raises on purpose.

    Messages say what was wrong and what to do about it; they never contain patient data.
    """

    exit_code: ClassVar[int] = 1


class ConfigError(CardioFMError):
    """A setting, option, form field or config file is missing or invalid."""

    exit_code = 2


class InputDataError(CardioFMError):
    """An input (DICOM series, NIfTI, annotation file, dataset) is unusable."""

    exit_code = 3


class LabelError(InputDataError):
    """An annotation is unusable: unknown id, duplicate point, point outside the image."""

    exit_code = 4


class MalformedUpdateError(InputDataError):
    """A site's federated update is unusable: unknown tensor, wrong shape or dtype, non-finite values, bad counts.

    The message names the tensor (or metric) and the problem, never patient data. The coordinator leaves the
    update out of the round and aggregates the other sites' updates.
    """


class ExternalToolError(CardioFMError):
    """An external program (dcm2niix, TotalSegmentator, a PACS) failed.

    ``log_tail`` keeps the last lines the tool printed, for the operator log.
    """

    exit_code = 5

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class MissingResourceError(CardioFMError):
    """Something that must be provisioned beforehand (model weights, a binary) is absent."""

    exit_code = 6


class UntrustedAppError(CardioFMError):
    """The coordinator shipped an app bundle whose SHA-256 this site did not pin; nothing of it ran."""

    exit_code = 7


class FederationTimeoutError(CardioFMError):
    """A federated run did not finish within the configured time limit; its processes were stopped."""

    exit_code = 8


class NothingToDoError(CardioFMError):
    """Nothing to do for this input; the step is skipped, not failed."""

    exit_code = EXIT_SKIP


def describe_exit_code(code: int) -> str:
    """What a cardiofm process's exit code means (for an operator's log), e.g. ``3: InputDataError (...)``."""
    if code == EXIT_OK:
        return "0: success"
    classes: list[type[CardioFMError]] = [CardioFMError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    for cls in classes[1:]:
        # the first class with the code (a subclass that keeps its parent's code is not listed)
        if cls.exit_code == code and cls.exit_code != getattr(cls.__base__, "exit_code", None):
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            return f"{code}: {cls.__name__} ({doc})"
    if code < 0 or code > 128:
        return f"{code}: killed by a signal (out of memory, timeout or a stop request)"
    return f"{code}: unexpected failure (see the log above)"

"""Site configuration (``site.yaml``): what a hospital's admin knows about its own data.

Where the PACS data lies, how the site's annotation files are named and labelled, and which cardiac
phase the site reconstructs for TAVI planning. Nothing here is shared outside the site.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cardiofm.constants import LANDMARK_NAMES


class CsvLayout(BaseModel):
    """How a site lays out its landmark table.

    Attributes
    ----------
    delimiter:
        Field separator: ``","``, ``";"`` (German Excel) or a tab.
    label_column, x_column, y_column, z_column:
        Header names of the label and coordinate columns (matched after stripping spaces, case-sensitive).
    case_column:
        Header of the case (study) id column for site-wide tables; ``None`` for one table per case.
    coordinate_system:
        System of the coordinates in the file, ``"LPS"`` or ``"RAS"``; the Python side is always LPS mm.
    decimal:
        Decimal separator, ``"."`` or ``","``; a decimal comma needs a delimiter other than ``","``.
    encoding:
        Text encoding; ``"utf-8"`` also accepts a byte-order mark on reading.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    delimiter: Literal[",", ";", "\t"] = ","
    label_column: str = "label"
    x_column: str = "x"
    y_column: str = "y"
    z_column: str = "z"
    case_column: str | None = None
    coordinate_system: Literal["LPS", "RAS"] = "LPS"
    decimal: Literal[".", ","] = "."
    encoding: Literal["utf-8", "cp1252", "latin-1"] = "utf-8"

    @model_validator(mode="after")
    def _consistent(self) -> CsvLayout:
        if self.decimal == "," and self.delimiter == ",":
            raise ValueError("a decimal comma needs a ';' or tab delimiter")
        columns = [self.label_column, self.x_column, self.y_column, self.z_column]
        if self.case_column is not None:
            columns.append(self.case_column)
        if any(not c.strip() for c in columns):
            raise ValueError("column names must not be empty")
        if len({c.strip() for c in columns}) != len(columns):
            raise ValueError(f"column names must differ, got {columns}")
        return self

    @property
    def columns(self) -> list[str]:
        """Header written by :func:`write_csv`: case column (if any), label, x, y, z."""
        head = [self.case_column] if self.case_column is not None else []
        return [*head, self.label_column, self.x_column, self.y_column, self.z_column]


#: Layouts seen at sites; the phantom generator picks among them.


class LandmarkAnnotations(BaseModel):
    """Where and how a site keeps landmark annotations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["mps", "mrk.json", "csv"]
    #: Folder (per-case files) or file (a site-wide CSV), relative to the site folder.
    path: str
    #: Per-case file name; ``{key}`` is the study's match key. Unused for a site-wide CSV.
    file_pattern: str = "{key}"
    coordinate_system: Literal["LPS", "RAS"] = "LPS"
    #: The site's ids/names (as written in its files) → canonical landmark names.
    label_map: dict[str, str]
    csv: CsvLayout | None = None

    @field_validator("label_map")
    @classmethod
    def _canonical_targets(cls, label_map: dict[str, str]) -> dict[str, str]:
        bad = sorted({v for v in label_map.values() if v not in LANDMARK_NAMES})
        if bad:
            raise ValueError(f"label_map targets {bad} are not landmark names {list(LANDMARK_NAMES)}")
        return label_map


class MaskAnnotations(BaseModel):
    """Where a site keeps binary mask annotations of one task (calcification, coronary arteries)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``"nifti"``: a 3-D NIfTI per case (non-zero = foreground); ``"dicom-seg"``: a DICOM SEG per case.
    format: Literal["nifti", "dicom-seg"] = "nifti"
    #: Folder of the per-case files, relative to the site folder.
    path: str
    #: Per-case file name; ``{key}`` is the study's match key.
    file_pattern: str = "{key}.nii.gz"
    #: DICOM SEG only: segment number or label to import; None: the only segment, or else the one
    #: labelled "calc…".
    segment: int | str | None = None


class SiteAnnotations(BaseModel):
    """All annotation sources of a site; a task the site does not label is None."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: DICOM attribute that names a study in annotation file names.
    match_by: Literal["PatientID", "AccessionNumber"] = "PatientID"
    landmarks: LandmarkAnnotations | None = None
    calcification: MaskAnnotations | None = None
    #: Coronary-artery masks, the labels of the downstream ``coronaries`` head.
    coronaries: MaskAnnotations | None = None

    def mask_spec(self, task: str) -> MaskAnnotations | None:
        """The mask source of a mask task (``calcification``, ``coronaries``), or None when the site has none."""
        return {"calcification": self.calcification, "coronaries": self.coronaries}.get(task)


class PacsFolder(BaseModel):
    """A local folder of DICOM files (any layout), relative to the site folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["folder"] = "folder"
    path: str = "pacs"


class SiteConfig(BaseModel):
    """Contents of a site's ``site.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    pacs: PacsFolder = PacsFolder()
    annotations: SiteAnnotations = SiteAnnotations()
    preferred_phase_percent: int | None = Field(default=None, ge=0, le=100)

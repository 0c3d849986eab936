"""``prepare_site`` on compressed transfer syntaxes: re-encoded phantom studies and real vendor files.

One synthetic site (3 studies of 5 series, 96² × 80 slices) is prepared twice: as generated, and as a
copy whose studies are re-encoded losslessly — every file of study 1 as RLE (pydicom's own encoder),
study 2 as JPEG-LS (pyjpegls), study 3 as JPEG 2000 (Pillow's OpenJPEG encoder, encapsulated here as
pydicom 3 has no JPEG 2000 encoder without pylibjpeg-openjpeg). The compressed copy must prepare exactly
like the original: the same chosen series, the same blood-pool estimates, the same crop voxels.

The compressed copy also holds the vendor files pydicom ships (CT slices in JPEG 2000 and uncompressed,
MR in RLE / JPEG-LS / JPEG 2000, a deflated image, an RGB JPEG written implicit VR under an explicit-VR
meta header) and three 20-slice series built from real encoded frames, which pass every header rule so
that their pixels must be decoded for the contrast check:

* the JPEG 2000 CT frame of ``693_J2KI.dcm`` (decodable wherever Pillow has OpenJPEG),
* the JPEG Lossless SV1 frame of ``SC_rgb_jpeg_gdcm.dcm`` (needs pylibjpeg-libjpeg or python-gdcm),
* the JPEG 2000 frame relabelled as JPEG 2000 Part 2 multi-component, for which pydicom has no decoder.

Each of them must be quarantined at select-series with a reason that says what is wrong (naming the
transfer syntax and what to install where a decoder is missing), and the batch must balance.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless, generate_uid

from cardiofm.contracts.federation import FederationRecord, SiteRecord
from cardiofm.dicom.index import file_key, index_folder
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.pipeline.prepare import PrepareResult, prepare_site

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # SC_rgb_jpeg.dcm is written implicit VR under an explicit-VR meta header on purpose
    pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR:UserWarning"),
]

SETTINGS = FederationSettings(sites=1, cases_per_site=3, seed=4, size=StudySize("t", 96, 80), held_out_sites=0)
#: Transfer syntax of each phantom study (in federation order) in the compressed copy.
CODECS = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
#: Vendor files mixed into the compressed copy's PACS folder as they are.
VENDOR_FILES = (
    "693_J2KI.dcm",  # CT, JPEG 2000, one 5 mm slice
    "J2K_pixelrep_mismatch.dcm",  # CT, JPEG 2000 lossless, tilted gantry
    "CT_small.dcm",  # CT, uncompressed
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",  # the same image as the two above: duplicate SOP instances
    "image_dfl.dcm",  # deflated explicit VR little endian
    "SC_rgb_jpeg.dcm",  # JPEG baseline, written implicit VR under an explicit-VR meta header
    "examples_ybr_color.dcm",  # US, 30-frame JPEG baseline
)
PART2_MULTICOMPONENT = UID("1.2.840.10008.1.2.4.92")
SERIES_SLICES = 20


@dataclass(frozen=True)
class FakeSeries:
    """A 20-slice CT series made of one vendor file's encoded frame."""

    name: str
    source: str
    transfer_syntax: UID

    @property
    def study_uid(self) -> str:
        return str(generate_uid(entropy_srcs=["cardiofm-test-compressed", self.name, "study"]))


FAKES = (
    FakeSeries("j2k", "693_J2KI.dcm", JPEG2000),
    FakeSeries("jpeg-lossless", "SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1),
    FakeSeries("no-decoder", "693_J2KI.dcm", PART2_MULTICOMPONENT),
)


@dataclass
class Run:
    """One prepare run of a site folder."""

    site_dir: Path
    out: Path
    result: PrepareResult

    def selection(self) -> dict[str, dict[str, Any]]:
        studies = json.loads((self.out / "selection.json").read_text())["studies"]
        return {s["study_uid"]: s for s in studies}

    def quarantine(self) -> list[dict[str, str]]:
        return list(json.loads((self.out / "quarantine.json").read_text()))


@dataclass
class Runs:
    site: SiteRecord
    plain: Run
    compressed: Run


def _vendor(name: str) -> Path:
    """A test file pydicom ships (offline, in its package)."""
    path = get_testdata_file(name)
    if not isinstance(path, str):
        pytest.fail(f"pydicom {pydicom.__version__} ships no {name}")
    return Path(path)


def _j2k_lossless(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG2000", no_jp2=True, irreversible=False)
    return buf.getvalue()


def _compress_studies(pacs: Path, codec_of_study: dict[str, UID]) -> None:
    for path in sorted(p for p in pacs.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        codec = codec_of_study[str(ds.StudyInstanceUID)]
        if codec == JPEG2000Lossless:
            ds.PixelData = encapsulate([_j2k_lossless(ds.pixel_array)])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        else:
            ds.compress(codec)
        ds.save_as(path, enforce_file_format=True)


def _write_fake_series(folder: Path, fake: FakeSeries) -> None:
    """``SERIES_SLICES`` copies of a vendor frame with the headers of an axial 1 mm contrast-less CT series."""
    folder.mkdir(parents=True)
    series_uid = generate_uid(entropy_srcs=["cardiofm-test-compressed", fake.name, "series"])
    for i in range(SERIES_SLICES):
        ds = pydicom.dcmread(_vendor(fake.source))
        ds.file_meta.TransferSyntaxUID = fake.transfer_syntax
        ds.StudyInstanceUID = fake.study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["cardiofm-test-compressed", fake.name, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesDescription = f"vendor frame {fake.name}"
        ds.SeriesNumber = 7
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -100.0, float(i)]
        ds.PixelSpacing = ds.get("PixelSpacing") or [0.5, 0.5]
        ds.SliceThickness = 1.0
        for keyword in ("ContrastBolusAgent", "NumberOfFrames"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(folder / f"IM{i:04d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("compressed")
    record: FederationRecord = generate_federation(root / "federation", SETTINGS)
    site = record.sites[0]
    plain_dir = root / "federation" / site.folder
    compressed_dir = root / "compressed-site"
    shutil.copytree(plain_dir, compressed_dir)
    _compress_studies(compressed_dir / "pacs", dict(zip((s.study_uid for s in site.studies), CODECS, strict=True)))
    vendor = compressed_dir / "pacs" / "vendor"
    vendor.mkdir()
    for name in VENDOR_FILES:
        shutil.copy(_vendor(name), vendor / name)
    for fake in FAKES:
        _write_fake_series(vendor / fake.name, fake)
    plain = Run(plain_dir, root / "out-plain", prepare_site(plain_dir, root / "out-plain"))
    compressed = Run(compressed_dir, root / "out-compressed", prepare_site(compressed_dir, root / "out-compressed"))
    return Runs(site, plain, compressed)


def _candidate(run: Run, study_uid: str) -> dict[str, Any]:
    (candidate,) = run.selection()[study_uid]["candidates"]
    return dict(candidate)


# --- the phantom studies, compressed, prepare exactly like the originals ------------------------------


def test_phantom_studies_are_stored_compressed(runs: Runs) -> None:
    wanted = {s.study_uid: codec for s, codec in zip(runs.site.studies, CODECS, strict=True)}
    found: dict[str, set[str]] = {}
    for path in sorted((runs.compressed.site_dir / "pacs").rglob("*.dcm")):
        if "vendor" in path.parts:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    assert found == {uid: {str(codec)} for uid, codec in wanted.items()}


def test_compressed_studies_choose_the_correct_series_from_the_same_pixels(runs: Runs) -> None:
    plain, compressed = runs.plain.selection(), runs.compressed.selection()
    for study in runs.site.studies:
        assert plain[study.study_uid]["chosen_series_uid"] == study.correct_series_uid
        assert compressed[study.study_uid]["chosen_series_uid"] == study.correct_series_uid
        # the blood-pool estimates come from decoded pixels: equal estimates mean equal pixels
        hu_plain = {c["uid"]: c["contrast_hu"] for c in plain[study.study_uid]["candidates"]}
        hu_compressed = {c["uid"]: c["contrast_hu"] for c in compressed[study.study_uid]["candidates"]}
        assert hu_compressed == hu_plain
        chosen = hu_compressed[study.correct_series_uid]
        assert chosen is not None, "the chosen series' pixels were not decoded"


def test_compressed_studies_give_identical_crops(runs: Runs) -> None:
    assert runs.plain.result.manifest is not None
    assert runs.compressed.result.manifest is not None
    plain_cases = {c.case_id: c for c in runs.plain.result.manifest.cases}
    compressed_cases = {c.case_id: c for c in runs.compressed.result.manifest.cases}
    assert sorted(plain_cases) == sorted(compressed_cases)
    assert len(plain_cases) == len(runs.site.studies)
    for case_id, case in plain_cases.items():
        assert compressed_cases[case_id].source == case.source
        for name in ("image.nii.gz", "heart.nii.gz"):
            a = nib.load(runs.plain.out / "cases" / case_id / name)
            b = nib.load(runs.compressed.out / "cases" / case_id / name)
            assert isinstance(a, nib.Nifti1Image)
            assert isinstance(b, nib.Nifti1Image)
            np.testing.assert_array_equal(b.affine, a.affine, err_msg=f"{case_id} {name}")
            np.testing.assert_array_equal(np.asanyarray(b.dataobj), np.asanyarray(a.dataobj), err_msg=case_id)


# --- vendor files: quarantined with a reason, the batch goes on ---------------------------------------


def test_vendor_studies_are_quarantined_and_the_batch_balances(runs: Runs) -> None:
    result = runs.compressed.result
    assert result.balanced
    assert result.prepared == len(runs.site.studies)
    index = index_folder(runs.compressed.site_dir / "pacs")
    phantom = {s.study_uid for s in runs.site.studies}
    vendor_studies = {s.study_uid for s in index.studies} - phantom
    assert {f.study_uid for f in FAKES} <= vendor_studies
    quarantined = {q["item"]: q for q in result.quarantined if q["kind"] == "study"}
    assert set(quarantined) == vendor_studies
    assert result.studies_in == len(phantom) + len(vendor_studies)
    for q in quarantined.values():
        assert q["step"] == "select-series", q
        assert q["reason"].startswith("no series fit for TAVI planning: none of the"), q


def test_single_vendor_ct_slices_are_rejected_for_their_slice_count(runs: Runs) -> None:
    for name in ("693_J2KI.dcm", "CT_small.dcm", "J2K_pixelrep_mismatch.dcm"):
        uid = str(pydicom.dcmread(_vendor(name), stop_before_pixels=True).StudyInstanceUID)
        candidate = _candidate(runs.compressed, uid)
        assert "1 slice < 16 required" in candidate["reasons"], (name, candidate["reasons"])
        assert not candidate["accepted"]


def test_reports_name_no_vendor_patient(runs: Runs) -> None:
    identifiers: set[str] = set()
    for name in VENDOR_FILES:
        ds = pydicom.dcmread(_vendor(name), stop_before_pixels=True)
        for value in (ds.get("PatientName"), ds.get("PatientID")):
            identifiers |= {v for v in str(value or "").split("^") if len(v) >= 4}
    assert identifiers, "the vendor files name no patient: this test would check nothing"
    for report in ("quarantine.json", "selection.json", "prepare-summary.json", "manifest.json"):
        text = (runs.compressed.out / report).read_text()
        assert not [i for i in identifiers if i in text], report


def test_deflated_and_mislabelled_vendor_files_are_not_called_truncated(runs: Runs) -> None:
    pacs = runs.compressed.site_dir / "pacs"
    problems = {q["item"]: q["reason"] for q in runs.compressed.quarantine() if q["kind"] == "file"}
    for name in ("image_dfl.dcm", "SC_rgb_jpeg.dcm"):
        assert file_key(pacs, pacs / "vendor" / name) not in problems, (name, problems)
    # a vendor file cut short is still caught (the check is not simply off)
    cut = runs.compressed.out.parent / "cut"
    cut.mkdir(exist_ok=True)
    data = _vendor("CT_small.dcm").read_bytes()
    (cut / "ct.dcm").write_bytes(data[:-1000])  # beyond its trailing padding
    (problem,) = index_folder(cut).problems
    assert problem.problem == "truncated file: pixel data runs past the end of the file"


# --- series that must be decoded for the contrast check ---------------------------------------------


def _fake_reasons(runs: Runs, fake: FakeSeries) -> tuple[list[str], float | None]:
    candidate = _candidate(runs.compressed, fake.study_uid)
    assert candidate["slices"] == SERIES_SLICES
    assert not candidate["accepted"]
    return list(candidate["reasons"]), candidate["contrast_hu"]


def test_decodable_vendor_jpeg2000_series_is_measured(runs: Runs) -> None:
    fake = FAKES[0]
    reasons, hu = _fake_reasons(runs, fake)
    if get_decoder(fake.transfer_syntax).is_available:
        assert hu is not None
        assert reasons == [f"no contrast: blood-pool estimate {hu:.0f} HU < 180 HU"]
    else:
        assert hu is None
        assert reasons == [
            (
                "contrast not confirmed (no ContrastBolusAgent): pixel data in JPEG 2000 Image Compression cannot be "
                "decoded here: install python-gdcm>=3.0.10 or pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"
            )
        ]


def test_jpeg_lossless_series_says_what_to_install(runs: Runs) -> None:
    fake = FAKES[1]
    reasons, hu = _fake_reasons(runs, fake)
    assert hu is None
    if get_decoder(fake.transfer_syntax).is_available:  # decodable, but an RGB frame is no CT slice
        assert reasons == [
            (
                "contrast not confirmed (no ContrastBolusAgent): pixel data is not a single-channel 2-D image "
                "(array shape (100, 100, 3))"
            )
        ]
    else:
        (reason,) = reasons
        assert reason.startswith(
            "contrast not confirmed (no ContrastBolusAgent): pixel data in JPEG Lossless, Non-Hierarchical, "
            "First-Order Prediction "
            "(Process 14 [Selection Value 1]) cannot be decoded here: install "
        )
        assert "pylibjpeg-libjpeg" in reason
        assert "python-gdcm" in reason
    entry = next(q for q in runs.compressed.quarantine() if q.get("item") == fake.study_uid)
    assert reasons[0] in entry["reason"]


def test_transfer_syntax_without_any_decoder_gives_a_clear_reason(runs: Runs) -> None:
    reasons, hu = _fake_reasons(runs, FAKES[2])
    assert hu is None
    assert reasons == [
        (
            "contrast not confirmed (no ContrastBolusAgent): pixel data in JPEG 2000 Part 2 Multi-component Image "
            "Compression (Lossless Only) (1.2.840.10008.1.2.4.92) cannot be decoded: pydicom has no decoder for this "
            "transfer syntax; export the series uncompressed or as JPEG 2000, JPEG-LS, JPEG lossless or RLE"
        )
    ]

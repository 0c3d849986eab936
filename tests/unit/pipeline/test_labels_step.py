"""Annotation lookup by keyed hash: the study's patient id is never written, its annotations still found."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cardiofm.contracts.site import SiteConfig
from cardiofm.errors import ConfigError, InputDataError
from cardiofm.pipeline.labels_step import _match_key
from cardiofm.pipeline.match_keys import (
    PREFIX,
    find_file,
    find_row,
    key_file_for,
    load_or_create_secret,
    match_hash,
    redact,
)

SITE = SiteConfig(site_id="site-01")


def test_match_key_is_the_hash_of_the_configured_attribute() -> None:
    study = {"match_hmac": {"PatientID": "hmac-sha256:aa", "AccessionNumber": "hmac-sha256:bb"}}
    assert _match_key(SITE, study) == "hmac-sha256:aa"
    with pytest.raises(InputDataError, match="PatientID"):
        _match_key(SITE, {"match_hmac": {"PatientID": ""}})
    with pytest.raises(InputDataError, match=r"without the site's site\.yaml"):
        _match_key(SITE, {"study_uid": "1.2"})


def test_secret_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = key_file_for(str(tmp_path / "site.yaml"), None)
    assert path == tmp_path / ".cardiofm" / "match.key"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["match.key"]  # nothing left aside
    assert key_file_for(None, None) is None
    assert key_file_for(None, str(tmp_path / "k")) == tmp_path / "k"


def test_hash_is_keyed_and_never_the_id(tmp_path: Path) -> None:
    a, b = load_or_create_secret(tmp_path / "a.key"), load_or_create_secret(tmp_path / "b.key")
    h = match_hash(a, "P010001-1234")
    assert h.startswith(PREFIX)
    assert "P010001" not in h
    assert h == match_hash(a, "P010001-1234") != match_hash(b, "P010001-1234")
    assert match_hash(a, "") == ""


def test_files_and_rows_are_found_by_hash_only(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path / "s.key")
    folder = tmp_path / "mps"
    folder.mkdir()
    for key in ("P1", "P2", "P2x"):
        (folder / f"{key}.mps").write_text("<x/>")
    (folder / "P1.txt").write_text("other")
    assert find_file(folder, "{key}.mps", match_hash(secret, "P2"), secret) == (folder / "P2.mps", "P2")
    assert find_file(folder, "{key}.mps", match_hash(secret, "P3"), secret) is None
    assert find_file(folder, "{key}.mps", "", secret) is None
    assert find_file(tmp_path / "absent", "{key}.mps", match_hash(secret, "P1"), secret) is None
    nested = tmp_path / "nested" / "P7"
    nested.mkdir(parents=True)
    (nested / "calc.nii.gz").write_bytes(b"")
    found = find_file(tmp_path / "nested", "{key}/calc.nii.gz", match_hash(secret, "P7"), secret)
    assert found == (nested / "calc.nii.gz", "P7")
    with pytest.raises(ConfigError, match="no \\{key\\}"):
        find_file(folder, "fixed.mps", match_hash(secret, "P1"), secret)
    assert find_row(["A1", "A2"], match_hash(secret, "A2"), secret) == "A2"
    assert find_row(["A1"], match_hash(secret, "A9"), secret) is None


def test_a_site_folder_where_the_key_cannot_be_created_says_what_to_set(tmp_path: Path) -> None:
    (tmp_path / "site").write_text("a file where the site folder should be")  # fails for root too
    with pytest.raises(ConfigError, match="MATCH_KEY_FILE"):
        load_or_create_secret(tmp_path / "site" / ".cardiofm" / "match.key")


def test_redact_replaces_every_raw_key() -> None:
    msg = "annotation file 'P010001-5435.mps' has a duplicate id; P010001-5435 again"
    assert redact(msg, {"P010001-5435"}, "PatientID") == (
        "annotation file '<PatientID of this case>.mps' has a duplicate id; <PatientID of this case> again"
    )

"""Tests of site label maps and the named conventions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cardiofm.constants import LANDMARK_NAMES
from cardiofm.errors import ConfigError
from cardiofm.labels.labelmap import CONVENTIONS, LabelMap, normalize_label, site_names


def test_identity_maps_every_canonical_name_to_itself() -> None:
    label_map = LabelMap.identity()
    assert {name: label_map.canonical(name) for name in LANDMARK_NAMES} == {n: n for n in LANDMARK_NAMES}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("RCC", "RCC"),
        ("rcc", "RCC"),
        ("  Ms1\t", "MS1"),
        ("XYZ", None),
        ("", None),
        ("RC C", None),
    ],
    ids=["exact", "lower-case", "padded-mixed-case", "unknown", "empty", "inner-space-differs"],
)
def test_canonical_ignores_case_and_surrounding_whitespace(raw: str, expected: str | None) -> None:
    assert LabelMap.identity().canonical(raw) == expected


def test_normalize_label() -> None:
    assert normalize_label("  MS Oben ") == "ms oben"


def test_several_aliases_may_name_one_landmark() -> None:
    label_map = LabelMap(aliases={"ACC": "NCC", "NCC": "NCC", "acc": "NCC"})
    assert label_map.canonical("acc") == "NCC"
    assert label_map.canonical("ncc") == "NCC"
    assert label_map.site_names() == {"NCC": "ACC"}


@pytest.mark.parametrize(
    ("aliases", "fragment"),
    [
        ({"1": "RCA"}, "not a canonical landmark name"),
        ({"1": "rcc"}, "not a canonical landmark name"),
        ({"Rca": "RCO", "RCA ": "LCO"}, "same label when case and surrounding spaces are ignored"),
        ({"  ": "RCC"}, "empty"),
    ],
    ids=["non-canonical-target", "target-wrong-case", "case-insensitive-collision", "blank-alias"],
)
def test_invalid_label_maps_are_rejected(aliases: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        LabelMap(aliases=aliases)


def test_label_map_is_frozen_and_strict() -> None:
    label_map = LabelMap.identity()
    with pytest.raises(ValidationError):
        label_map.aliases = {}  # type: ignore[misc,unused-ignore]
    with pytest.raises(ValidationError):
        LabelMap.model_validate({"aliases": {}, "comment": "x"})


def test_label_map_survives_json_round_trip() -> None:
    label_map = CONVENTIONS["german"]
    restored = LabelMap.model_validate_json(label_map.model_dump_json())
    assert restored == label_map
    assert restored.canonical("ms UNTEN") == "MS2"


@pytest.mark.parametrize("convention", sorted(CONVENTIONS), ids=sorted(CONVENTIONS))
def test_each_convention_names_every_landmark_and_inverts(convention: str) -> None:
    names = site_names(convention)
    assert list(names) == list(LANDMARK_NAMES)
    assert len(set(names.values())) == len(LANDMARK_NAMES)
    for canonical, site_label in names.items():
        assert CONVENTIONS[convention].canonical(site_label) == canonical


@pytest.mark.parametrize(
    ("convention", "site_label", "canonical"),
    [
        ("canonical", "NCC", "NCC"),
        ("reference", "ACC", "NCC"),
        ("reference", "RCA", "RCO"),
        ("reference", "LCA", "LCO"),
        ("numeric", "1", "RCC"),
        ("numeric", "7", "MS2"),
        ("zero_based", "0", "RCC"),
        ("zero_based", "6", "MS2"),
        ("verbose", "non-coronary cusp hinge", "NCC"),
        ("verbose", "MS lower", "MS2"),
        ("german", "AKS", "NCC"),
        ("german", "RCA-Abgang", "RCO"),
        ("german", "MS oben", "MS1"),
    ],
    ids=str,
)
def test_convention_contents(convention: str, site_label: str, canonical: str) -> None:
    assert CONVENTIONS[convention].canonical(site_label) == canonical


def test_conventions_make_sites_differ() -> None:
    spellings = {tuple(site_names(c).values()) for c in CONVENTIONS}
    assert len(spellings) == len(CONVENTIONS)


def test_unknown_convention_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown label convention 'klingon'"):
        site_names("klingon")

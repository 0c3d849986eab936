"""Tests of the landmark geometry QA on the synthetic anatomy: no false positives, swaps found and named."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from cardiofm.labels.qa import HANDEDNESS_SIGN, HINGES, check_landmark_geometry, swap_candidates
from cardiofm.phantoms.anatomy import sample_anatomy

Point3 = tuple[float, float, float]
PATIENTS = 500
#: Swapped labels must be found, and named as exactly that pair, in at least this share of patients.
MIN_DETECTION = 0.99


@cache
def _sampled() -> tuple[tuple[dict[str, Point3], tuple[float, float, float]], ...]:
    """Each sampled patient's landmarks and annulus normal (pointing into the aorta)."""
    out = []
    for seed in range(PATIENTS):
        anatomy = sample_anatomy(np.random.default_rng(seed))
        marks = {name: (float(v[0]), float(v[1]), float(v[2])) for name, v in anatomy.landmarks.items()}
        normal = anatomy.root.normal
        out.append((marks, (float(normal[0]), float(normal[1]), float(normal[2]))))
    return tuple(out)


def _patients() -> tuple[dict[str, Point3], ...]:
    return tuple(marks for marks, _ in _sampled())


def _swap(points: dict[str, Point3], a: str, b: str) -> dict[str, Point3]:
    out = dict(points)
    out[a], out[b] = points[b], points[a]
    return out


def test_handedness_sign_holds_for_every_sampled_patient() -> None:
    for marks, normal in _sampled():
        rcc, lcc, ncc = (np.asarray(marks[h]) for h in HINGES)
        assert np.sign(np.cross(lcc - rcc, ncc - rcc) @ np.asarray(normal)) == HANDEDNESS_SIGN


SUBSETS: dict[str, tuple[str, ...]] = {
    "all": ("RCC", "LCC", "NCC", "RCO", "LCO", "MS1", "MS2"),
    "hinges": ("RCC", "LCC", "NCC"),
    "hinges-septum": ("RCC", "LCC", "NCC", "MS1", "MS2"),
    "hinges-ostia": ("RCC", "LCC", "NCC", "RCO", "LCO"),
    "hinges-rco": ("RCC", "LCC", "NCC", "RCO"),
    "hinges-lco": ("RCC", "LCC", "NCC", "LCO"),
    "two-hinges-ostia": ("RCC", "LCC", "RCO", "LCO"),
    "two-hinges-septum": ("RCC", "LCC", "MS1", "MS2"),
    "ostia-only": ("RCO", "LCO"),
    "septum-only": ("MS1", "MS2"),
    "one-point": ("NCC",),
    "none": (),
}


@pytest.mark.parametrize("names", list(SUBSETS.values()), ids=list(SUBSETS))
def test_correct_points_give_no_findings(names: tuple[str, ...]) -> None:
    flagged = [
        (seed, found)
        for seed, points in enumerate(_patients())
        if (found := check_landmark_geometry({n: points[n] for n in names}))
    ]
    assert flagged == []


SWAPS: list[tuple[str, str]] = [
    ("RCC", "LCC"),
    ("RCC", "NCC"),
    ("LCC", "NCC"),
    ("RCO", "LCO"),
    ("MS1", "MS2"),
    ("RCC", "RCO"),
    ("LCC", "LCO"),
]


@pytest.mark.parametrize("pair", SWAPS, ids=[f"{a}-{b}" for a, b in SWAPS])
def test_swap_is_found_and_named(pair: tuple[str, str]) -> None:
    named = 0
    for points in _patients():
        found = check_landmark_geometry(_swap(points, *pair))
        named += any(f.kind == "swapped" and set(f.names) == set(pair) for f in found)
    assert named / PATIENTS >= MIN_DETECTION


@pytest.mark.parametrize("pair", SWAPS[:3], ids=[f"{a}-{b}" for a, b in SWAPS[:3]])
def test_hinge_swap_with_hinges_only_is_flagged_without_guessing_the_pair(pair: tuple[str, str]) -> None:
    for points in _patients()[:100]:
        found = check_landmark_geometry(_swap({h: points[h] for h in HINGES}, *pair))
        assert [(f.kind, f.names) for f in found] == [("swapped", HINGES)]
        assert "cannot tell" in found[0].message


def test_mirrored_image_is_flagged() -> None:
    for points in _patients()[:100]:
        mirrored = {n: (-x, y, z) for n, (x, y, z) in points.items()}
        assert check_landmark_geometry(mirrored) != []


def test_swap_candidates_names_the_pair_and_nothing_for_correct_points() -> None:
    points = _patients()[0]
    assert swap_candidates(points) == []
    assert swap_candidates(_swap(points, "RCO", "LCO")) == [("RCO", "LCO")]


def test_point_from_another_scan_is_implausible() -> None:
    points = dict(_patients()[1])
    x, y, z = points["LCO"]
    points["LCO"] = (x + 80.0, y, z)
    found = check_landmark_geometry(points)
    assert any(f.kind == "implausible-size" and "LCO" in f.names for f in found)


def test_hinges_of_implausible_size_are_reported() -> None:
    points = _patients()[2]
    centre = np.mean([points[h] for h in HINGES], axis=0)
    shrunk: dict[str, Point3] = {}
    for h in HINGES:
        x, y, z = centre + 0.3 * (np.asarray(points[h]) - centre)
        shrunk[h] = (float(x), float(y), float(z))
    found = check_landmark_geometry(shrunk)
    assert found
    assert all(f.kind == "implausible-size" for f in found)
    assert {f.names for f in found} == {("RCC", "LCC"), ("RCC", "NCC"), ("LCC", "NCC")}


def test_duplicate_click_is_reported() -> None:
    points = dict(_patients()[3])
    points["MS2"] = points["MS1"]
    found = check_landmark_geometry(points)
    assert any(f.kind == "duplicate" and f.names == ("MS1", "MS2") for f in found)


def test_unknown_names_are_ignored_and_bad_coordinates_rejected() -> None:
    points = dict(_patients()[4])
    assert check_landmark_geometry({**points, "XYZ": (1e6, 0.0, 0.0)}) == []
    with pytest.raises(ValueError, match="RCC"):
        check_landmark_geometry({**points, "RCC": (float("nan"), 0.0, 0.0)})


def test_import_hook_drops_swapped_points_and_reports_every_finding() -> None:
    from cardiofm.pipeline.labels_step import _geometry_qa

    points = _patients()[5]
    kept, problems = _geometry_qa(_swap(points, "RCO", "LCO"))
    assert set(kept) == set(points) - {"RCO", "LCO"}
    assert len(problems) == 1
    assert "not used for training; fix the annotation" in problems[0]
    assert _geometry_qa(dict(points)) == (dict(points), [])

"""Geometric quality checks of a case's aortic-root landmarks: swapped labels, wrong sides, implausible sizes.

Only geometry that does not depend on where the patient lies in the scanner is used: distances between
points, the annulus plane through the three hinge points (RCC, LCC, NCC) and its normal, oriented from
the left ventricle into the aorta. The orientation comes from the points themselves (the coronary ostia lie
above the annulus, the membranous septum below it); only when those do not decide it, the anatomical prior
that the aortic valve faces the patient's head (LPS +z) is used. Every check runs on whatever subset of
points is present and checks only what that subset allows.

When some checks fail and exchanging the labels of exactly one commonly confused pair (RCC↔LCC, RCO↔LCO,
MS1↔MS2, RCC↔RCO, …) makes every check pass, a single ``"swapped"`` finding names that pair; otherwise each
failed check is reported on its own. Thresholds are wide enough for real anatomical variation (elliptic
annuli, low or high coronary take-offs) and annotation noise of a few millimetres.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from cardiofm.contracts.landmarks import Point3

Vec = npt.NDArray[np.float64]

QaKind = Literal[
    "implausible-size",
    "implausible-shape",
    "duplicate",
    "wrong-side",
    "wrong-order",
    "handedness",
    "swapped",
]

HINGES: Final[tuple[str, str, str]] = ("RCC", "LCC", "NCC")
OSTIA: Final[tuple[str, str]] = ("RCO", "LCO")
SEPTUM: Final[tuple[str, str]] = ("MS1", "MS2")
#: Each coronary ostium, its own cusp's hinge and the other coronary cusp's hinge.
OSTIUM_CUSPS: Final[dict[str, tuple[str, str]]] = {"RCO": ("RCC", "LCC"), "LCO": ("LCC", "RCC")}
#: Label pairs annotators commonly confuse, tried (one at a time) to explain failed checks.
SWAP_PAIRS: Final[tuple[tuple[str, str], ...]] = (
    ("RCC", "LCC"),
    ("RCC", "NCC"),
    ("LCC", "NCC"),
    ("RCO", "LCO"),
    ("MS1", "MS2"),
    ("RCC", "RCO"),
    ("LCC", "LCO"),
)

#: Hinge-to-hinge distance (mm): annulus diameters 16–35 mm and elliptic annuli give sides of about 12–35 mm.
HINGE_SIDE_MM: Final[tuple[float, float]] = (10.0, 38.0)
#: Smallest angle (deg) of the hinge triangle; a flatter triangle defines no reliable annulus plane.
MIN_HINGE_ANGLE_DEG: Final[float] = 25.0
#: Height (mm) of a coronary ostium above the annulus plane (typical 8–22 mm; very low/high take-offs exist).
OSTIUM_HEIGHT_MM: Final[tuple[float, float]] = (4.0, 32.0)
#: How far (mm) a membranous-septum point may lie above the annulus plane (annotation noise at the hinge level).
SEPTUM_MAX_ABOVE_MM: Final[float] = 2.0
#: How deep (mm) a membranous-septum point may lie below the annulus plane.
SEPTUM_MAX_DEPTH_MM: Final[float] = 30.0
#: MS1 may lie at most this much (mm) below MS2 along the normal before the order counts as reversed.
SEPTUM_ORDER_TOL_MM: Final[float] = 0.5
#: Largest membranous-septum length MS1–MS2 (mm).
SEPTUM_MAX_LENGTH_MM: Final[float] = 25.0
#: Largest distance (mm) of any landmark from the annulus centre (the whole root fits in ~35 mm).
MAX_FROM_ANNULUS_MM: Final[float] = 50.0
#: Largest distance (mm) between any two landmarks (used when there is no annulus centre).
MAX_PAIR_MM: Final[float] = 75.0
#: Two different landmarks closer than this (mm) are the same click.
DUPLICATE_MM: Final[float] = 1.0
#: Height (mm) from which a point counts as a vote for the orientation of the annulus normal.
VOTE_MIN_HEIGHT_MM: Final[float] = 1.0
#: Smallest |z| of the unit annulus normal for the head-up prior to orient it (the valve faces the head).
PRIOR_MIN_Z: Final[float] = 0.25
#: Candidate swaps whose hinge triangles' side ratios differ by less than this are equally likely.
IRREGULARITY_TIE: Final[float] = 0.05
#: Sign of ((LCC - RCC) x (NCC - RCC)) . normal in every patient, with the normal pointing into the aorta:
#: looking down the aorta towards the ventricle, R -> L -> N runs clockwise.
HANDEDNESS_SIGN: Final[int] = 1


@dataclass(frozen=True)
class QaFinding:
    """One problem of a case's landmark geometry.

    Attributes
    ----------
    kind
        ``"implausible-size"``, ``"implausible-shape"``, ``"duplicate"``, ``"wrong-side"``, ``"wrong-order"``,
        ``"handedness"`` or ``"swapped"``.
    names
        The canonical landmark names involved.
    message
        What looks wrong and what to check (no patient data).
    """

    kind: QaKind
    names: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class _Plane:
    centre: Vec
    normal: Vec  # unit, oriented towards the aorta
    how: str  # how the orientation was decided
    handedness_ok: bool


def _as_vectors(points: Mapping[str, Point3]) -> dict[str, Vec]:
    known = set(HINGES + OSTIA + SEPTUM)
    out: dict[str, Vec] = {}
    for name, xyz in points.items():
        if name not in known:
            continue
        v = np.asarray(xyz, dtype=np.float64)
        if v.shape != (3,) or not np.all(np.isfinite(v)):
            raise ValueError(f"landmark {name} must be three finite coordinates (LPS mm)")
        out[name] = v
    return out


def _dist_mm(a: Vec, b: Vec) -> float:
    return float(np.linalg.norm(a - b))


def _plane(p: dict[str, Vec]) -> _Plane | None:
    """The annulus plane through the three hinges with its normal oriented into the aorta, or None."""
    if not all(h in p for h in HINGES):
        return None
    rcc, lcc, ncc = (p[h] for h in HINGES)
    cross = np.cross(lcc - rcc, ncc - rcc)
    norm = float(np.linalg.norm(cross))
    if norm < 1e-6:
        return None
    n0 = cross / norm  # R -> L -> N handedness as labelled
    centre = (rcc + lcc + ncc) / 3.0
    up = down = 0
    lift_mm = 0.0  # ostia heights minus septum heights along n0
    for name in OSTIA + SEPTUM:
        if name in p:
            h = float((p[name] - centre) @ n0) * (1.0 if name in OSTIA else -1.0)
            lift_mm += h
            if abs(h) >= VOTE_MIN_HEIGHT_MM:
                up, down = (up + 1, down) if h > 0 else (up, down + 1)
    if up != down:
        sign, how = (1.0 if up > down else -1.0), "the ostia and septum points"
    elif abs(n0[2]) >= PRIOR_MIN_Z:
        sign, how = float(np.sign(n0[2])), "the head-up direction (LPS +z)"
    elif up > 0:  # contradictory votes: some points are on the wrong side either way
        sign, how = (1.0 if lift_mm >= 0 else -1.0), "the ostia and septum heights"
    else:
        return None
    return _Plane(centre=centre, normal=sign * n0, how=how, handedness_ok=int(sign) == HANDEDNESS_SIGN)


def _triangle_angles_deg(a: Vec, b: Vec, c: Vec) -> list[float]:
    out = []
    for p, q, s in ((a, b, c), (b, c, a), (c, a, b)):
        u, v = q - p, s - p
        cos = float(u @ v) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12)
        out.append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
    return out


def _violations(p: dict[str, Vec]) -> list[QaFinding]:
    """Every failed check of the points as labelled."""
    found: list[QaFinding] = []
    names = list(p)
    index = {name: i for i, name in enumerate(names)}
    coords = np.array([p[n] for n in names], dtype=np.float64).reshape(len(names), 3)
    matrix_mm = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1).tolist()

    def dist_mm(a: str, b: str) -> float:
        return float(matrix_mm[index[a]][index[b]])

    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if dist_mm(a, b) < DUPLICATE_MM:
                found.append(
                    QaFinding("duplicate", (a, b), f"{a} and {b} are the same point; one of them was clicked twice")
                )
    lo, hi = HINGE_SIDE_MM
    present = [h for h in HINGES if h in p]
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            d = dist_mm(a, b)
            if not lo <= d <= hi:
                found.append(
                    QaFinding(
                        "implausible-size",
                        (a, b),
                        f"{a}-{b} distance {d:.1f} mm is outside {lo:.0f}-{hi:.0f} mm for hinge points of one "
                        "annulus; check that both are cusp hinges of this scan",
                    )
                )
    if len(present) == 3:
        smallest = min(_triangle_angles_deg(*(p[h] for h in HINGES)))
        if smallest < MIN_HINGE_ANGLE_DEG:
            found.append(
                QaFinding(
                    "implausible-shape",
                    HINGES,
                    f"the hinge points are nearly in a line (smallest angle {smallest:.0f} deg); check the three "
                    "cusp hinges",
                )
            )
    centre = np.mean([p[h] for h in present], axis=0) if len(present) == 3 else None
    if centre is not None:
        for name in names:
            d = _dist_mm(p[name], centre)
            if d > MAX_FROM_ANNULUS_MM:
                found.append(
                    QaFinding(
                        "implausible-size",
                        (name,),
                        f"{name} lies {d:.0f} mm from the annulus centre (> {MAX_FROM_ANNULUS_MM:.0f} mm); "
                        "check that it was placed on this scan",
                    )
                )
    else:
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                d = dist_mm(a, b)
                if d > MAX_PAIR_MM:
                    found.append(
                        QaFinding(
                            "implausible-size",
                            (a, b),
                            f"{a} and {b} are {d:.0f} mm apart (> {MAX_PAIR_MM:.0f} mm); check that both were "
                            "placed on this scan",
                        )
                    )
    if all(s in p for s in SEPTUM) and dist_mm("MS1", "MS2") > SEPTUM_MAX_LENGTH_MM:
        found.append(
            QaFinding(
                "implausible-size",
                SEPTUM,
                f"MS1-MS2 is {dist_mm('MS1', 'MS2'):.0f} mm long (> {SEPTUM_MAX_LENGTH_MM:.0f} mm); check "
                "both membranous-septum points",
            )
        )
    for ostium, (own, other) in OSTIUM_CUSPS.items():
        if ostium in p and own in p and other in p and dist_mm(ostium, own) >= dist_mm(ostium, other):
            found.append(
                QaFinding(
                    "wrong-side",
                    (ostium, own, other),
                    f"{ostium} is nearer the {other} hinge than the {own} hinge; check the coronary ostium and "
                    "cusp labels",
                )
            )
    if "LCC" in p and ("RCC" in p or "NCC" in p):
        for ms in SEPTUM:
            if ms in p:
                d_l = dist_mm(ms, "LCC")
                d_rn = min(dist_mm(ms, h) for h in ("RCC", "NCC") if h in p)
                if d_l <= d_rn:
                    found.append(
                        QaFinding(
                            "wrong-side",
                            (ms, "LCC"),
                            f"{ms} is nearer the LCC hinge than the right/non-coronary side where the membranous "
                            "septum lies; check the septum and cusp labels",
                        )
                    )
    plane = _plane(p) if len(present) == 3 and not any(f.kind == "implausible-shape" for f in found) else None
    if plane is None:
        return found
    if not plane.handedness_ok:
        found.append(
            QaFinding(
                "handedness",
                HINGES,
                "going R -> L -> N around the annulus turns the wrong way (normal oriented by "
                f"{plane.how}): two hinge labels are swapped or the image is mirrored",
            )
        )

    def height(name: str) -> float:
        return float((p[name] - plane.centre) @ plane.normal)

    h_lo, h_hi = OSTIUM_HEIGHT_MM
    for ostium in OSTIA:
        if ostium in p and not h_lo <= height(ostium) <= h_hi:
            found.append(
                QaFinding(
                    "wrong-side",
                    (ostium,),
                    f"{ostium} lies {height(ostium):+.1f} mm from the annulus plane, outside {h_lo:.0f}-{h_hi:.0f} "
                    "mm above it; check that it is a coronary ostium and not a cusp hinge",
                )
            )
    for ms in SEPTUM:
        if ms in p and not -SEPTUM_MAX_DEPTH_MM <= height(ms) <= SEPTUM_MAX_ABOVE_MM:
            found.append(
                QaFinding(
                    "wrong-side",
                    (ms,),
                    f"{ms} lies {height(ms):+.1f} mm from the annulus plane; the membranous septum lies below "
                    f"it (0-{SEPTUM_MAX_DEPTH_MM:.0f} mm); check the point",
                )
            )
    if all(s in p for s in SEPTUM) and height("MS1") < height("MS2") - SEPTUM_ORDER_TOL_MM:
        found.append(
            QaFinding(
                "wrong-order",
                SEPTUM,
                "MS1 (upper septum point) lies below MS2 (lower) along the annulus normal; check their order",
            )
        )
    return found


def _swapped(p: dict[str, Vec], a: str, b: str) -> dict[str, Vec]:
    q = dict(p)
    q[a], q[b] = p[b], p[a]
    return q


def _irregularity(p: dict[str, Vec]) -> float:
    """Longest over shortest side of the hinge triangle (1 without three hinges): real annuli stay near 1."""
    if not all(h in p for h in HINGES):
        return 1.0
    sides = [_dist_mm(p[a], p[b]) for a, b in (("RCC", "LCC"), ("LCC", "NCC"), ("NCC", "RCC"))]
    return max(sides) / max(min(sides), 1e-9)


def _fixes(p: dict[str, Vec]) -> list[tuple[str, str]]:
    """Swaps that make every check pass; of several, those leaving the most regular hinge triangle.

    Exchanging a hinge with an ostium can tilt the annulus plane far enough for every check to pass; such a
    fix leaves a lopsided hinge triangle, so it loses against a fix that keeps the triangle regular.
    """
    fixes = [(a, b) for a, b in SWAP_PAIRS if a in p and b in p and not _violations(_swapped(p, a, b))]
    if len(fixes) < 2:
        return fixes
    score = {pair: _irregularity(_swapped(p, *pair)) for pair in fixes}
    best = min(score.values())
    return [pair for pair in fixes if score[pair] <= best + IRREGULARITY_TIE]


def swap_candidates(points: Mapping[str, Point3]) -> list[tuple[str, str]]:
    """Commonly confused label pairs whose exchange alone makes every geometry check pass.

    Parameters
    ----------
    points
        Canonical landmark name → LPS position (mm); any subset, other names are ignored.

    Returns
    -------
    list of tuple of str
        The pairs (in :data:`SWAP_PAIRS` order); empty when the points pass as labelled or no single swap helps.
        Of several fitting pairs only those leaving the most regular hinge triangle are kept.

    Raises
    ------
    ValueError
        When a landmark is not three finite coordinates.
    """
    p = _as_vectors(points)
    return _fixes(p) if _violations(p) else []


def check_landmark_geometry(points: Mapping[str, Point3]) -> list[QaFinding]:
    """Check the geometry of a case's landmarks and explain failures by a label swap where one fits.

    Parameters
    ----------
    points
        Canonical landmark name → LPS position (mm); any subset, other names are ignored.

    Returns
    -------
    list of QaFinding
        Empty when everything the present points allow to check is plausible. When exchanging one commonly
        confused pair makes every check pass, a single ``"swapped"`` finding (names: that pair, or the union of
        the pairs when several fit equally); otherwise one finding per failed check.

    Raises
    ------
    ValueError
        When a landmark is not three finite coordinates.
    """
    p = _as_vectors(points)
    failed = _violations(p)
    if not failed:
        return []
    fixes = _fixes(p)
    if not fixes:
        return failed
    involved = tuple(n for n in HINGES + OSTIA + SEPTUM if any(n in pair for pair in fixes))
    what = "; ".join(f.message for f in failed)
    if len(fixes) == 1:
        a, b = fixes[0]
        lead = f"{a} and {b} look swapped: exchanging their labels makes the geometry consistent"
    else:
        options = ", ".join(f"{a}<->{b}" for a, b in fixes)
        lead = f"two labels look swapped, one of {options} (the present points cannot tell which)"
    return [QaFinding("swapped", involved, f"{lead} ({what})")]

"""Patient anatomy of a synthetic TAVI candidate: sampled from a few coupled latent factors.

All positions are LPS millimetres (+x left, +y posterior, +z superior). The aortic root is described
in its own frame: ``e1, e2`` span the annulus plane, ``normal`` points from the left ventricle into
the aorta; a point of the root is given by a radius ρ, an angle φ (from ``e1`` towards ``e2``) and a
height w above the annulus plane.

Variation is *coupled*, as in real patients: body size drives heart size, heart size the annulus
radius, the annulus radius the sinus size and the coronary heights; the annulus tilt drives the
direction of the left-ventricular long axis; an age factor drives the calcium burden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cardiofm.constants import LANDMARK_NAMES

Vec = npt.NDArray[np.float64]

#: Calcium burden categories and the nodule counts they produce.
CALCIUM_BURDENS: dict[str, tuple[int, int]] = {"none": (0, 0), "mild": (1, 3), "moderate": (4, 8), "severe": (9, 18)}


@dataclass(frozen=True)
class Nodule:
    """A calcified nodule: an ellipsoid with a peak attenuation."""

    centre: Vec
    radii_mm: tuple[float, float, float]
    axes: Vec
    peak_hu: float


@dataclass(frozen=True)
class RootGeometry:
    """Aortic root in its own frame (see module docstring)."""

    centre: Vec
    e1: Vec
    e2: Vec
    normal: Vec
    annulus_radius_mm: float
    #: Angles (rad) of the right, left and non-coronary cusp centres, measured from e1 towards e2.
    cusp_angles: tuple[float, float, float]
    #: Outward bulge of each sinus at mid-height, mm (R, L, N).
    sinus_bulge_mm: tuple[float, float, float]
    commissure_height_mm: float
    coaptation_height_mm: float
    stj_height_mm: float
    stj_radius_mm: float
    leaflet_thickness_mm: float

    def direction(self, phi: float) -> Vec:
        """Unit vector in the annulus plane at angle ``phi``."""
        return math.cos(phi) * self.e1 + math.sin(phi) * self.e2

    def point(self, rho: float, phi: float, w: float) -> Vec:
        """LPS point at radius ``rho``, angle ``phi``, height ``w`` (mm) in the root frame."""
        return self.centre + rho * self.direction(phi) + w * self.normal

    def angular_offset(
        self, phi: float | npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Signed angular distance to the nearest cusp centre and that cusp's index (0 R, 1 L, 2 N)."""
        ph = np.asarray(phi, dtype=np.float32)
        best = np.full(ph.shape, np.float32(np.pi), dtype=np.float32)
        idx = np.zeros(ph.shape, dtype=np.int64)
        for k, c in enumerate(self.cusp_angles):
            d = wrap_angle(ph - np.float32(c))
            closer = np.abs(d) < np.abs(best)
            best = np.where(closer, d, best)
            idx[closer] = k
        return best, idx

    def wall_radius(
        self, phi: float | npt.NDArray[np.float32], w: float | npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Lumen radius of the root (mm) at angle ``phi`` and height ``w`` (0 ≤ w ≤ STJ height)."""
        d, k = self.angular_offset(phi)
        ww = np.clip(np.asarray(w, dtype=np.float32), 0.0, self.stj_height_mm)
        bulge = np.asarray(self.sinus_bulge_mm, dtype=np.float32)[k]
        taper = self.annulus_radius_mm + (self.stj_radius_mm - self.annulus_radius_mm) * ww / self.stj_height_mm
        # sinus profile: zero at the annulus and the STJ, full at mid-height; zero at the commissures
        profile = (
            np.clip(np.sin(np.pi * ww / self.stj_height_mm), 0.0, 1.0) ** 0.8
            * np.cos(np.clip(1.5 * d, -np.pi / 2, np.pi / 2)) ** 2
        )
        return (taper + bulge * profile).astype(np.float32)

    def attachment_height(self, phi: float | npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Height (mm) of the leaflet attachment line: 0 at each cusp nadir, the commissure height between cusps."""
        d, _ = self.angular_offset(phi)
        return (self.commissure_height_mm * np.sin(np.clip(1.5 * d, -np.pi / 2, np.pi / 2)) ** 2).astype(np.float32)


@dataclass(frozen=True)
class Anatomy:
    """Everything needed to render one patient, plus the ground-truth landmarks (LPS mm)."""

    body_centre: Vec
    body_half_axes_mm: tuple[float, float]
    fat_thickness_mm: float
    heart_scale: float
    apex_direction: Vec
    root: RootGeometry
    lv_centre: Vec
    rv_centre: Vec
    la_centre: Vec
    ra_centre: Vec
    heart_centre: Vec
    ascending_path: Vec
    descending_x_y: tuple[float, float]
    aorta_radius_mm: float
    pa_path: Vec
    rca_path: Vec
    lca_paths: tuple[Vec, Vec]
    coronary_radius_mm: float
    ms_window_half_angle: float
    ms_depths_mm: tuple[float, float]
    ms_angle: float
    nodules: tuple[Nodule, ...]
    calcium_burden: str
    sex: str
    age_years: int
    landmarks: dict[str, Vec] = field(default_factory=dict)


def wrap_angle(angle: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Angles (rad) wrapped into [-π, π)."""
    a = np.asarray(angle, dtype=np.float32)
    return ((a + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)).astype(np.float32, copy=False)


def _unit(v: npt.ArrayLike) -> Vec:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _rotate(v: Vec, axis: Vec, angle: float) -> Vec:
    """Rodrigues rotation of ``v`` about unit ``axis``."""
    k = _unit(axis)
    return v * math.cos(angle) + np.cross(k, v) * math.sin(angle) + k * (k @ v) * (1 - math.cos(angle))


def sample_anatomy(rng: np.random.Generator, z_annulus_mm: float = 0.0) -> Anatomy:
    """Draw one patient. ``z_annulus_mm`` places the annulus centre's height in LPS."""
    sex = "M" if rng.random() < 0.55 else "F"
    age = int(np.clip(rng.normal(80, 6), 60, 95))
    size = float(np.clip(rng.normal(0.35 if sex == "M" else -0.35, 0.9), -2.5, 2.5))
    heart_scale = float(np.clip(1.0 + 0.055 * size + 0.035 * rng.normal(), 0.82, 1.2))

    body_half = (float(150 + 14 * size + 6 * rng.normal()), float(108 + 9 * size + 5 * rng.normal()))
    body_centre = np.array([rng.normal(0, 3), rng.normal(0, 3), z_annulus_mm])
    fat = float(np.clip(14 + 6 * size + 4 * rng.normal(), 5, 35))

    # --- annulus plane: tilt from the axial plane, towards the patient's right-anterior
    tilt = math.radians(float(np.clip(rng.normal(47, 7), 28, 66)))
    azimuth = math.radians(float(rng.normal(200, 12)))  # 180° = patient right (-x); >180 turns anterior (-y)
    horizontal = np.array([math.cos(azimuth), math.sin(azimuth), 0.0])
    normal = _unit(math.sin(tilt) * horizontal + math.cos(tilt) * np.array([0.0, 0.0, 1.0]))

    # in-plane reference: anterior (-y) projected into the plane -> right coronary cusp sits anteriorly
    anterior = np.array([0.0, -1.0, 0.0])
    e1 = _unit(anterior - (anterior @ normal) * normal)
    e2 = np.cross(normal, e1)
    # choose the rotation sense so the left cusp (at +120°) lies towards the patient's left (+x)
    if (math.cos(2 * math.pi / 3) * e1 + math.sin(2 * math.pi / 3) * e2)[0] < 0:
        e2 = -e2
    jitter = np.radians(rng.normal(0, 7, size=3))
    cusp_angles = (float(jitter[0]), float(2 * math.pi / 3 + jitter[1]), float(-2 * math.pi / 3 + jitter[2]))

    r_ann = float(np.clip(11.6 * heart_scale + 0.7 * rng.normal(), 9.0, 15.5))
    bulge = tuple(float(np.clip(0.45 * r_ann * (1 + 0.15 * rng.normal()), 2.5, 9.0)) for _ in range(3))
    stj_h = float(np.clip(1.75 * r_ann + 1.5 * rng.normal(), 15, 28))
    comm_h = float(np.clip(0.62 * stj_h + rng.normal(), 9, 19))
    root_centre = np.array(
        [body_centre[0] - 8 + 4 * rng.normal(), body_centre[1] - 12 + 5 * rng.normal(), z_annulus_mm]
    )
    root = RootGeometry(
        centre=root_centre,
        e1=e1,
        e2=e2,
        normal=normal,
        annulus_radius_mm=r_ann,
        cusp_angles=cusp_angles,
        sinus_bulge_mm=(bulge[0], bulge[1], bulge[2]),
        commissure_height_mm=comm_h,
        coaptation_height_mm=float(0.55 * comm_h),
        stj_height_mm=stj_h,
        stj_radius_mm=float(r_ann * (1.08 + 0.05 * rng.normal())),
        leaflet_thickness_mm=1.2,
    )

    # --- ventricles and atria, coupled to the annulus normal and the heart scale
    s = heart_scale
    apex = _unit(-normal + np.array([0.75, -0.55, -0.15]) + 0.12 * rng.normal(size=3))
    lv_centre = root_centre + apex * 42 * s
    rv_centre = lv_centre + _unit(np.array([-0.7, -0.7, -0.2])) * 24 * s
    la_centre = root_centre + np.array([8.0, 34.0, 2.0]) * s
    ra_centre = root_centre + np.array([-34.0, 14.0, -12.0]) * s
    heart_centre = (lv_centre + rv_centre + la_centre + ra_centre) / 4

    # --- great vessels
    stj = root.point(0.0, 0.0, stj_h)
    up = np.array([0.0, 0.0, 1.0])
    asc1 = stj + normal * 18 * s
    asc2 = asc1 + _unit(normal + 2 * up) * 30 * s
    desc_xy = (float(body_centre[0] + 22 + 3 * rng.normal()), float(body_centre[1] + 0.42 * body_half[1]))
    arch_top = np.array([(asc2[0] + desc_xy[0]) / 2, (asc2[1] + desc_xy[1]) / 2, asc2[2] + 22 * s])
    desc_top = np.array([desc_xy[0], desc_xy[1], asc2[2] + 2])
    ascending = np.stack([stj, asc1, asc2, arch_top, desc_top])
    aorta_r = float(root.stj_radius_mm * (1.05 + 0.05 * rng.normal()))
    pa0 = root_centre + np.array([12.0, -28.0, -6.0]) * s
    pa_path = np.stack([pa0, pa0 + np.array([6.0, -2.0, 22.0]) * s, pa0 + np.array([22.0, 18.0, 38.0]) * s])

    # --- coronary ostia on the sinus wall and the arteries leaving them
    h_rco = float(np.clip(0.62 * stj_h + 1.2 * rng.normal(), 7, stj_h - 3))
    h_lco = float(np.clip(0.58 * stj_h + 1.2 * rng.normal(), 7, stj_h - 3))
    phi_r = cusp_angles[0] + math.radians(rng.normal(0, 6))
    phi_l = cusp_angles[1] + math.radians(rng.normal(0, 6))
    rco = root.point(float(root.wall_radius(phi_r, h_rco)), phi_r, h_rco)
    lco = root.point(float(root.wall_radius(phi_l, h_lco)), phi_l, h_lco)
    cor_r = float(np.clip(1.7 * s + 0.2 * rng.normal(), 1.2, 2.4))
    out_r = root.direction(phi_r)
    rca = np.stack(
        [
            rco - out_r * 1.5,
            rco + out_r * 9,
            rco + out_r * 18 + np.array([-6.0, 0.0, -8.0]) * s,
            rco + out_r * 20 + np.array([-18.0, 8.0, -30.0]) * s,
            rco + out_r * 16 + np.array([-22.0, 20.0, -55.0]) * s,
        ]
    )
    out_l = root.direction(phi_l)
    lm_end = lco + out_l * 10
    lad = np.stack(
        [lco - out_l * 1.5, lm_end, lm_end + apex * 30 * s + np.array([0.0, -8.0, 0.0]), lm_end + apex * 70 * s]
    )
    lcx = np.stack([lm_end, lm_end + np.array([12.0, 10.0, -6.0]) * s, lm_end + np.array([22.0, 30.0, -20.0]) * s])

    # --- membranous septum below the right/non-coronary commissure
    d_r, d_n = cusp_angles[0], cusp_angles[2]
    ms_angle = float(np.angle(np.exp(1j * d_r) + np.exp(1j * d_n)))
    d1 = float(np.clip(rng.normal(3.0, 1.0), 1.0, 6.0))
    length = float(np.clip(rng.normal(8.0, 1.8) * s, 4.0, 13.0))
    ms1 = root.point(r_ann, ms_angle, -d1)
    ms2 = root.point(r_ann, ms_angle, -(d1 + length))

    # --- calcium, driven by an age factor
    age_factor = (age - 80) / 6 + rng.normal(0, 0.8)
    burden = (
        "none" if age_factor < -1.0 else "mild" if age_factor < 0.0 else "moderate" if age_factor < 0.9 else "severe"
    )
    nodules = _sample_nodules(rng, root, burden)

    landmarks = {
        "RCC": root.point(r_ann, cusp_angles[0], 0.0),
        "LCC": root.point(r_ann, cusp_angles[1], 0.0),
        "NCC": root.point(r_ann, cusp_angles[2], 0.0),
        "RCO": rco,
        "LCO": lco,
        "MS1": ms1,
        "MS2": ms2,
    }
    return Anatomy(
        body_centre=body_centre,
        body_half_axes_mm=body_half,
        fat_thickness_mm=fat,
        heart_scale=heart_scale,
        apex_direction=apex,
        root=root,
        lv_centre=lv_centre,
        rv_centre=rv_centre,
        la_centre=la_centre,
        ra_centre=ra_centre,
        heart_centre=heart_centre,
        ascending_path=ascending,
        descending_x_y=desc_xy,
        aorta_radius_mm=aorta_r,
        pa_path=pa_path,
        rca_path=rca,
        lca_paths=(lad, lcx),
        coronary_radius_mm=cor_r,
        ms_window_half_angle=math.radians(24.0),
        ms_depths_mm=(d1, d1 + length),
        ms_angle=ms_angle,
        nodules=tuple(nodules),
        calcium_burden=burden,
        sex=sex,
        age_years=age,
        landmarks={name: landmarks[name] for name in LANDMARK_NAMES},
    )


def leaflet_height(
    root: RootGeometry, rho: npt.NDArray[np.float32], phi: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Height (mm) of the closed leaflet surface at radius ``rho`` and angle ``phi``.

    The leaflet runs from its attachment line on the wall (height ``attachment_height``) down and
    inwards to the coaptation point on the axis (height ``coaptation_height_mm``).
    """
    w_att = root.attachment_height(phi)
    r_att = root.wall_radius(phi, w_att)
    t = np.clip(rho / r_att, 0.0, 1.0)
    return (root.coaptation_height_mm + (w_att - root.coaptation_height_mm) * t**1.6).astype(np.float32)


def _sample_nodules(rng: np.random.Generator, root: RootGeometry, burden: str) -> list[Nodule]:
    lo, hi = CALCIUM_BURDENS[burden]
    count = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
    nodules: list[Nodule] = []
    for _ in range(count):
        k = int(rng.integers(0, 3))
        phi = root.cusp_angles[k] + math.radians(float(rng.uniform(-45, 45)))
        w_att = float(root.attachment_height(phi))
        r_att = float(root.wall_radius(phi, w_att))
        frac = float(rng.uniform(0.55, 0.97))  # mostly near the attachment (hinge) region
        rho = r_att * frac
        w = float(leaflet_height(root, np.asarray(rho, dtype=np.float32), np.asarray(phi, dtype=np.float32)))
        centre = root.point(rho, phi, w)
        radii = tuple(float(v) for v in np.clip(rng.gamma(2.5, 0.5, size=3) + 0.6, 0.7, 3.2))
        axes = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        peak = float(np.clip(250 + 420 * np.mean(radii) + rng.normal(0, 150), 180, 1500))
        nodules.append(Nodule(centre=centre, radii_mm=(radii[0], radii[1], radii[2]), axes=axes, peak_hu=peak))
    return nodules

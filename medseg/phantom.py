"""Synthetic torso CT phantoms in Hounsfield units, with exact ground-truth labels.

The anatomy is defined in patient (RAS+, mm) space by smooth implicit shapes, and then sampled on a
voxel grid whose spacing and orientation are drawn at random (RAS, LPS, other axis orders, and
oblique rotations). Because every voxel is evaluated at its own world position, the image and the
labels are consistent with the affine whatever the orientation: a model that handles geometry
correctly segments all of them equally well.

Example:
    >>> from medseg.phantom import make_phantom
    >>> image, labels = make_phantom(seed=3)
    >>> image.array.dtype, labels.array.max() <= len(LABELS)
    (dtype('int16'), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.volume import Volume

#: label index -> (name, RGB colour); the same table is used by the shipped model specs.
LABELS: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("body", (200, 160, 120)),
    2: ("lungs", (80, 170, 230)),
    3: ("liver", (220, 90, 50)),
    4: ("spleen", (160, 80, 200)),
    5: ("kidneys", (240, 220, 40)),
    6: ("spine", (250, 250, 250)),
    7: ("aorta", (230, 30, 60)),
}

#: orientations drawn for the voxel grid; the last axis is the slice (thick) axis.
ORIENTATIONS = ("RAS", "LPS", "LAS", "RPI", "LPI", "LSA", "PSR")


@dataclass(frozen=True)
class PhantomGeometry:
    """How the voxel grid is laid over the patient."""

    axcodes: str
    spacing: tuple[float, float, float]
    oblique_deg: float
    shape: tuple[int, int, int]


_AXIS_OF = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
#: field of view (mm) along patient L-R, A-P, S-I
_FOV = (400.0, 300.0, 280.0)


def _rotation(rng: np.random.Generator, max_deg: float) -> tuple[np.ndarray, float]:
    if max_deg <= 0:
        return np.eye(3), 0.0
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(5.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    return rot, float(np.rad2deg(angle))


def random_grid(
    rng: np.random.Generator,
    axcodes: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    oblique: bool | None = None,
) -> tuple[np.ndarray, PhantomGeometry]:
    """Draw a voxel grid (affine and shape) that covers the phantom's field of view.

    World space is RAS+ as in nibabel: +x is the patient's right, +y anterior, +z superior.
    """
    axcodes = axcodes or str(rng.choice(ORIENTATIONS))
    if spacing is None:
        inplane = float(rng.uniform(1.8, 3.0))
        spacing = (inplane, inplane, float(rng.uniform(2.5, 5.0)))
    if oblique is None:
        oblique = bool(rng.random() < 0.3)
    direction = np.zeros((3, 3))
    extent = np.zeros(3)
    for col, code in enumerate(axcodes):
        axis, sign = _AXIS_OF[code]
        direction[axis, col] = sign
        extent[col] = _FOV[axis]
    rot, angle = _rotation(rng, 20.0) if oblique else (np.eye(3), 0.0)
    direction = rot @ direction
    sp = np.asarray(spacing, dtype=np.float64)
    shape = tuple(int(round(e / s)) for e, s in zip(extent, sp))
    affine = np.eye(4)
    affine[:3, :3] = direction * sp
    centre = np.array([0.0, 0.0, rng.uniform(-20, 20)])
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine, PhantomGeometry(axcodes, tuple(float(s) for s in sp), angle, shape)


class _Anatomy:
    """Random patient: organ positions, sizes, intensities and a smooth warp."""

    def __init__(self, rng: np.random.Generator) -> None:
        u = rng.uniform
        s = u(0.88, 1.12)
        self.scale = s
        self.body = (u(150, 175) * s, u(100, 120) * s)
        self.fat = u(8, 22)
        j = lambda lo=-8, hi=8: u(lo, hi)  # noqa: E731 - jitter in mm
        self.lungs = [
            (np.array([sx * 80 * s + j(), 5 + j(), 95 + j(-10, 10)]), np.array([52, 62, 100]) * s * u(0.9, 1.1))
            for sx in (-1, 1)
        ]
        self.liver = (np.array([62 * s + j(), 10 + j(), 5 + j()]), np.array([82, 72, 68]) * s * u(0.9, 1.1))
        self.spleen = (np.array([-88 * s + j(), -38 + j(), 15 + j()]), np.array([30, 44, 50]) * s * u(0.85, 1.15))
        self.kidneys = [
            (np.array([sx * 62 * s + j(-5, 5), -52 + j(-5, 5), -45 + j()]), np.array([27, 24, 52]) * s * u(0.9, 1.1))
            for sx in (-1, 1)
        ]
        self.spine = (np.array([j(-3, 3), -78 * s + j(-4, 4)]), u(15, 20) * s)
        self.aorta = (np.array([-14 + j(-4, 4), -50 * s + j(-4, 4)]), u(10, 14) * s)
        self.hu = {
            "fat": u(-115, -85),
            "muscle": u(35, 60),
            "lungs": u(-880, -800),
            "liver": u(90, 125),
            "spleen": u(100, 135),
            "kidneys": u(150, 200),
            "spine": u(300, 500),
            "disc": u(60, 90),
            "aorta": u(160, 230),
        }
        self.waves = [(rng.normal(size=3) / 120.0, u(0, 2 * np.pi), rng.normal(size=3) * u(2, 5)) for _ in range(3)]
        self.disc_period = u(28, 34)
        self.disc_phase = u(0, 40)
        self.noise = u(8, 22)

    def warp(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, z = x.copy(), y.copy(), z.copy()
        for k, phase, amp in self.waves:
            w = np.sin(k[0] * x + k[1] * y + k[2] * z + phase)
            x += amp[0] * w
            y += amp[1] * w
            z += amp[2] * w
        return x, y, z


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (z - centre[2]) / radii[2]
    ) ** 2 <= 1.0


def _paint(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate labels and noise-free HU at world points (flattened arrays)."""
    labels = np.zeros(x.shape, np.uint8)
    hu = np.full(x.shape, -1000.0, np.float32)
    bx, by = a.body
    r_body = (x / bx) ** 2 + (y / by) ** 2
    body = r_body <= 1.0
    inner = (x / (bx - a.fat)) ** 2 + (y / (by - a.fat)) ** 2 <= 1.0
    labels[body] = 1
    hu[body] = a.hu["fat"]
    hu[inner] = a.hu["muscle"]
    inner_cavity = (x / (bx - a.fat - 10)) ** 2 + (y / (by - a.fat - 10)) ** 2 <= 1.0
    for c, r in a.lungs:
        m = _ellipsoid(x, y, z, c, r) & inner_cavity
        labels[m], hu[m] = 2, a.hu["lungs"]
    m = _ellipsoid(x, y, z, *a.liver) & inner_cavity
    labels[m], hu[m] = 3, a.hu["liver"]
    m = _ellipsoid(x, y, z, *a.spleen) & inner_cavity
    labels[m], hu[m] = 4, a.hu["spleen"]
    for c, r in a.kidneys:
        m = _ellipsoid(x, y, z, c, r) & inner_cavity
        labels[m], hu[m] = 5, a.hu["kidneys"]
    (sx, sy), sr = a.spine
    column = ((x - sx) ** 2 + (y - sy) ** 2 <= sr**2) & body
    disc = np.mod(z - a.disc_phase, a.disc_period) < 6.0
    labels[column & ~disc], hu[column & ~disc] = 6, a.hu["spine"]
    hu[column & disc] = a.hu["disc"]
    # posterior elements: a bony arch behind the body of each vertebra
    arch = (np.abs(x - sx) <= 0.55 * sr) & (y < sy - sr) & (y >= sy - 2.2 * sr) & ~disc & body
    labels[arch], hu[arch] = 6, a.hu["spine"]
    (ax_, ay), ar = a.aorta
    m = ((x - ax_) ** 2 + (y - ay) ** 2 <= ar**2) & body
    labels[m], hu[m] = 7, a.hu["aorta"]
    return labels, hu


def render(affine: np.ndarray, shape: tuple[int, int, int], anatomy: _Anatomy, rng: np.random.Generator):
    """Sample ``anatomy`` on the grid ``(affine, shape)``: returns (int16 HU, uint8 labels)."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)
    labels, hu = _paint(*anatomy.warp(world[0], world[1], world[2]), anatomy)
    labels = labels.reshape(shape)
    hu = hu.reshape(shape)
    # partial-volume blur: a Gaussian whose width in mm is about one in-plane voxel, per axis
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    hu = ndimage.gaussian_filter(hu, sigma=np.clip(1.2 / spacing, 0.25, 0.8))
    hu += rng.normal(0.0, anatomy.noise, size=shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), labels


def make_phantom(
    seed: int,
    axcodes: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    oblique: bool | None = None,
) -> tuple[Volume, Volume]:
    """A random torso phantom: ``(image, labels)``, both with the same affine.

    Args:
        seed: fixes the anatomy, the grid and the noise.
        axcodes: voxel axis directions (e.g. ``"LPS"``); random when None.
        spacing: voxel size in mm; random (anisotropic) when None.
        oblique: rotate the grid by 5-20 degrees; random when None.
    """
    rng = np.random.default_rng(seed)
    affine, geometry = random_grid(rng, axcodes, spacing, oblique)
    anatomy = _Anatomy(rng)
    hu, labels = render(affine, geometry.shape, anatomy, rng)
    meta = {"modality": "CT", "phantom_seed": seed, "phantom_geometry": geometry.__dict__}
    return Volume(hu, affine, dict(meta)), Volume(labels, affine, dict(meta))


def write_phantom(
    seed: int,
    image_path: str,
    label_path: str | None = None,
    **grid: object,
) -> tuple[Volume, Volume]:
    """Generate a phantom and write it as NIfTI (image, and labels if ``label_path``)."""
    from medseg.io.nifti import write_nifti

    image, labels = make_phantom(seed, **grid)  # type: ignore[arg-type]
    write_nifti(image, image_path)
    if label_path:
        write_nifti(labels, label_path)
    return image, labels

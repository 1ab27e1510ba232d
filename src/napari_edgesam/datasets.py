"""Synthetic nuclei with known instances, and the openly licensed DSB2018 example.

Used by the sample data, the tests, the benchmarks and the CPU training recipe. No torch,
no napari, no network.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


def _place_ellipses(
    rng: np.random.Generator, shape: tuple[int, ...], n: int, radius: tuple[float, float], max_overlap: float
) -> np.ndarray:
    """Instance labels of up to ``n`` ellipses/ellipsoids that overlap each other little."""
    labels = np.zeros(shape, np.uint16)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    k = 0
    for _ in range(n * 6):
        if k >= n:
            break
        centre = [rng.uniform(0, s) for s in shape]
        radii = [rng.uniform(*radius) for _ in shape]
        if len(shape) == 3:
            radii[0] *= 0.6  # flatter in z
        angle = rng.uniform(0, np.pi)
        dy, dx = grids[-2] - centre[-2], grids[-1] - centre[-1]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        r = (u / radii[-1]) ** 2 + (v / radii[-2]) ** 2
        if len(shape) == 3:
            r = r + ((grids[0] - centre[0]) / radii[0]) ** 2
        blob = r <= 1.0
        area = blob.sum()
        if area < 12:
            continue
        if (labels[blob] > 0).sum() > max_overlap * area:
            continue
        k += 1
        labels[blob & (labels == 0)] = k
    return labels


def _render(rng: np.random.Generator, labels: np.ndarray, dtype: type) -> np.ndarray:
    """Fluorescence-like rendering: per-nucleus brightness, texture, blur, background, noise."""
    shape = labels.shape
    n = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(0.35, 1.0, n)])
    img = brightness[labels].astype(np.float32)
    texture = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    img *= 1.0 + 0.35 * texture
    edge = ndi.distance_transform_edt(labels > 0)
    img *= np.clip(0.55 + edge / 6.0, 0, 1)  # darker rims, like stained nuclei
    img = ndi.gaussian_filter(img, 1.0)
    grid = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    img += 0.08 + 0.06 * grid[-1] + 0.04 * grid[-2]
    img += rng.normal(0, 0.03, shape).astype(np.float32)
    img = np.clip(img, 0, None)
    if dtype == np.uint8:
        return np.clip(img * 200, 0, 255).astype(np.uint8)
    return np.clip(img * 12000 + 300, 0, 65535).astype(np.uint16)


def synthetic_nuclei_2d(
    seed: int = 0,
    shape: tuple[int, int] = (512, 512),
    n_nuclei: int = 40,
    radius: tuple[float, float] = (8.0, 22.0),
    dtype: type = np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like 2D nuclei image and its instance labels.

    Returns:
        image ``H x W`` (``dtype``), labels ``H x W`` uint16 (0 background, 1..n nuclei).
    """
    rng = np.random.default_rng(seed)
    labels = _place_ellipses(rng, tuple(shape), n_nuclei, radius, max_overlap=0.15)
    return _render(rng, labels, dtype), labels


def synthetic_nuclei_3d(
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 256, 256),
    n_nuclei: int = 25,
    radius: tuple[float, float] = (10.0, 24.0),
    dtype: type = np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``Z x Y x X`` stack of ellipsoid nuclei and its instance labels."""
    rng = np.random.default_rng(seed)
    labels = _place_ellipses(rng, tuple(shape), n_nuclei, radius, max_overlap=0.05)
    return _render(rng, labels, dtype), labels


def read_stardist_example(wheel_or_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """DSB2018 nuclei (BSD-3, 512x512, 125 instances) from a ``stardist`` wheel or an
    extracted ``stardist/data/images`` folder: returns ``(image uint16, labels uint16)``.

    Get the wheel with ``pip download --no-deps stardist`` (the package is not imported).
    """
    import tifffile

    src = Path(wheel_or_dir)
    names = ("img2d.tif", "mask2d.tif")
    if src.is_dir():
        return tuple(tifffile.imread(src / n) for n in names)  # type: ignore[return-value]
    if not zipfile.is_zipfile(src):
        raise ValueError(f"{src} is neither a stardist wheel nor a folder with {names}")
    with zipfile.ZipFile(src) as z:
        out = []
        for n in names:
            member = f"stardist/data/images/{n}"
            if member not in z.namelist():
                raise ValueError(f"{src} has no {member}: is it a stardist wheel?")
            out.append(tifffile.imread(io.BytesIO(z.read(member))))
    return out[0], out[1]


def synthetic_nuclei_sized(
    seed: int = 0,
    shape: tuple[int, int] = (512, 512),
    radius: float = 16.0,
    dtype: type = np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """A field of nuclei of one size, for size sweeps: ellipses with semi-axes in
    ``0.8-1.2 x radius`` pixels on a jittered grid (about a fifth of the image covered, at any
    size, so intensity percentiles behave alike), apart from each other and from the image
    border (every object is whole); rendered with texture, dark nucleoli and rims that scale
    with the nucleus (as the same cells imaged at a higher magnification), while blur and
    noise stay per-pixel like a camera's.

    Returns:
        image ``H x W`` (``dtype``), labels ``H x W`` uint32 (0 background, 1..n nuclei).
    """
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    r = float(radius)
    cell = 3.0 * r
    if min(h, w) < cell:
        raise ValueError(f"nuclei of radius {r:g} do not fit in a {h} x {w} image (need a side >= {cell:g})")
    labels = np.zeros((h, w), np.uint32)
    ny, nx = int(h // cell), int(w // cell)
    oy, ox = (h - ny * cell) / 2, (w - nx * cell) / 2
    k = 0
    for i in range(ny):
        for j in range(nx):
            if ny * nx > 1 and rng.random() < 0.3:
                continue
            a, b = rng.uniform(0.8, 1.2, 2) * r
            big = max(a, b)
            jitter = max(0.0, 1.5 * r - big - 1)
            cy = oy + (i + 0.5) * cell + rng.uniform(-jitter, jitter)
            cx = ox + (j + 0.5) * cell + rng.uniform(-jitter, jitter)
            angle = rng.uniform(0, np.pi)
            y0, y1 = int(max(cy - big - 1, 0)), int(min(cy + big + 2, h))
            x0, x1 = int(max(cx - big - 1, 0)), int(min(cx + big + 2, w))
            dy = np.arange(y0, y1)[:, None] + 0.5 - cy
            dx = np.arange(x0, x1)[None, :] + 0.5 - cx
            u = dx * np.cos(angle) + dy * np.sin(angle)
            v = -dx * np.sin(angle) + dy * np.cos(angle)
            k += 1
            labels[y0:y1, x0:x1][(u / a) ** 2 + (v / b) ** 2 <= 1.0] = k
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, k)])
    img = brightness[labels].astype(np.float32)
    texture = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(1.5, r / 6))
    texture /= max(float(texture.std()), 1e-6)
    img *= np.clip(1.0 + 0.2 * texture, 0.3, None)
    spots = ndi.gaussian_filter((rng.random((h, w)) < 2.0 / max(r * r, 16)).astype(np.float32), max(1.0, r / 8))
    img *= 1.0 - 0.5 * np.clip(spots / max(float(spots.max()), 1e-6), 0, 1) * (labels > 0)  # dark nucleoli
    edge = ndi.distance_transform_edt(labels > 0)
    img *= np.clip(0.6 + edge / max(r / 2.5, 2.0), 0, 1)  # darker rims
    img = ndi.gaussian_filter(img, 1.0)
    img += 0.08 + 0.05 * np.linspace(0, 1, w, dtype=np.float32)[None, :]
    img += rng.normal(0, 0.03, (h, w)).astype(np.float32)
    img = np.clip(img, 0, None)
    if dtype == np.uint8:
        return np.clip(img * 200, 0, 255).astype(np.uint8), labels
    return np.clip(img * 12000 + 300, 0, 65535).astype(np.uint16), labels

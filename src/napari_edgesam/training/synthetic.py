"""Synthetic training data (bright blobs on noise) for smoke tests, demos and CI.

:func:`write_folder_dataset` writes ``images/*.tif`` + ``labels/*.tif`` (instance labels);
:func:`write_sa1b_dataset` writes ``*.jpg`` + ``*.json`` with COCO-RLE masks (SA-1B layout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .rle import encode_rle


def blob_image(
    shape: tuple[int, int], n_blobs: int, rng: np.random.Generator, radius: tuple[int, int] = (4, 12)
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy float32 image with ``n_blobs`` bright ellipses and its ``uint16`` instance labels
    (later blobs cover earlier ones; ids 1..n, some may vanish when fully covered)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros(shape, np.uint16)
    image = rng.normal(20.0, 5.0, shape)
    for k in range(1, n_blobs + 1):
        ry, rx = rng.integers(radius[0], radius[1] + 1, size=2)
        cy = rng.integers(ry, max(ry + 1, h - ry))
        cx = rng.integers(rx, max(rx + 1, w - rx))
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        labels[inside] = k
        image[inside] = rng.uniform(120.0, 220.0) + rng.normal(0.0, 5.0, int(inside.sum()))
    return image.astype(np.float32), labels


def write_folder_dataset(
    root: str | os.PathLike,
    n_images: int = 4,
    shape: tuple[int, int] = (96, 128),
    n_blobs: int = 5,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``root/images/img_XXX.tif`` and ``root/labels/img_XXX.tif``; returns both folders."""
    import tifffile

    root = Path(root)
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        img, lab = blob_image(shape, n_blobs, rng)
        tifffile.imwrite(images / f"img_{i:03d}.tif", img)
        tifffile.imwrite(labels / f"img_{i:03d}.tif", lab)
    return images, labels


def write_sa1b_dataset(
    root: str | os.PathLike,
    n_images: int = 2,
    shape: tuple[int, int] = (96, 128),
    n_blobs: int = 5,
    seed: int = 0,
) -> Path:
    """Write ``root/sa_XXX.jpg`` + ``root/sa_XXX.json`` (SA-1B layout, RLE masks); returns ``root``."""
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        img, lab = blob_image(shape, n_blobs, rng)
        rgb = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([rgb] * 3, axis=-1)).save(root / f"sa_{i:03d}.jpg", quality=95)
        anns = []
        for k in np.unique(lab[lab > 0]):
            mask = lab == k
            ys, xs = np.nonzero(mask)
            anns.append(
                {
                    "id": int(k),
                    "segmentation": encode_rle(mask),
                    "area": int(mask.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                }
            )
        meta = {"image": {"image_id": i, "height": shape[0], "width": shape[1], "file_name": f"sa_{i:03d}.jpg"},
                "annotations": anns}
        (root / f"sa_{i:03d}.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------------
# Rich synthetic nuclei (training data for edgesam-nuclei v2)
# ---------------------------------------------------------------------------------------------

#: Per-image size regimes: the range of the object radius (px, equivalent-area radius
#: ``sqrt(area / pi)`` of the unclipped shape) drawn log-uniformly for each object.
REGIMES: dict[str, tuple[float, float]] = {
    "tiny": (3.0, 6.0),
    "small": (5.0, 12.0),
    "medium": (10.0, 30.0),
    "large": (25.0, 80.0),
    "huge": (60.0, 200.0),
    "mixture": (3.0, 60.0),
}
#: How an image is made: a plain 2D field, a z-slice of a stack (sections of ellipsoids, dim
#: out-of-focus caps), or an x-z slice of an anisotropic stack (objects flattened along the
#: rows, or upsampled back along them, which makes staircase edges and row blur).
KINDS = ("plane", "z_slice", "xz_slice")


def _star_shape(rng: np.random.Generator, radius: float) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """Parameters of an irregular, possibly elongated star-convex shape of equivalent radius
    ``radius``: ``(a, b, angle, harmonic amplitudes, phases)``; ``r(t) = 1 + sum_k amp_k cos(k t + ph_k)``
    stays >= 0.6, so the shape is solid and star-convex around its centre."""
    elong = float(np.exp(rng.uniform(0.0, np.log(2.8)))) if rng.random() < 0.5 else float(rng.uniform(1.0, 1.3))
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    amps = rng.uniform(0.0, 0.12, 4) * (rng.random() < 0.6)
    phases = rng.uniform(0.0, 2 * np.pi, 4)
    return a, b, float(rng.uniform(0, np.pi)), amps, phases


def _rho(dy: np.ndarray, dx: np.ndarray, shape_params) -> np.ndarray:
    """Normalised radial distance (<= 1 inside) of offsets ``(dy, dx)`` from the centre."""
    a, b, angle, amps, phases = shape_params
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    t = np.arctan2(v / b, u / a)
    boundary = 1.0 + sum(amps[k] * np.cos((k + 2) * t + phases[k]) for k in range(4))
    return r / boundary


def _fix_labels(labels: np.ndarray, return_ids: bool = False):
    """Each label one 4-connected component without holes; ids renumbered 1..n (in order).

    The largest component of each label is kept (other pieces become background); a hole is
    filled with the label around it (an object enclosed by another merges into it). With
    ``return_ids`` also the old id of each new id."""
    out = labels.copy()
    for k, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None:
            continue
        m = out[sl] == k
        comp, n = ndi.label(m)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            out[sl][m & (comp != 1 + int(np.argmax(sizes)))] = 0
            m = out[sl] == k
        filled = ndi.binary_fill_holes(m)
        if (filled & ~m).any():
            out[sl][filled] = k
    ids = np.unique(out[out > 0])
    lut = np.zeros(int(out.max()) + 1, np.uint16)
    lut[ids] = np.arange(1, ids.size + 1)
    return (lut[out], ids) if return_ids else lut[out]


def rich_nuclei_labels(
    rng: np.random.Generator,
    shape: tuple[int, int],
    radius: tuple[float, float],
    coverage: float | None = None,
    clump_probability: float = 0.5,
    max_objects: int = 1500,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels of irregular, elongated, touching and clumped nuclei.

    Objects are placed until about ``coverage`` of the image is covered (default random
    0.15-0.55); with ``clump_probability`` a new object joins an existing one (its centre at
    0.6-1.0 times the sum of the radii from it, never inside it), so clumps of touching nuclei
    form. Where shapes overlap a pixel goes to the shape whose normalised radial distance is
    smallest, which gives touching objects a shared boundary.

    Returns ``(labels H x W uint16, radii)``: ``radii[k-1]`` is object ``k``'s drawn radius.
    """
    h, w = shape
    lo, hi = radius
    if coverage is None:
        coverage = float(rng.uniform(0.15, 0.55))
    best = np.full(shape, np.inf, np.float32)
    labels = np.zeros(shape, np.uint16)
    centres: list[tuple[float, float, float, tuple]] = []
    covered = 0.0
    for _ in range(max_objects * 3):
        if len(centres) >= max_objects or covered >= coverage * h * w:
            break
        r = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        params = _star_shape(rng, r)
        if centres and rng.random() < clump_probability:
            cy0, cx0, r0, p0 = centres[int(rng.integers(len(centres)))]
            ang = rng.uniform(0, 2 * np.pi)
            d = (r0 + r) * rng.uniform(0.6, 1.0)
            cy, cx = cy0 + d * np.sin(ang), cx0 + d * np.cos(ang)
        else:
            cy, cx = rng.uniform(-0.1 * h, 1.1 * h), rng.uniform(-0.1 * w, 1.1 * w)
        iy, ix = int(np.floor(cy)), int(np.floor(cx))
        if 0 <= iy < h and 0 <= ix < w and labels[iy, ix]:
            continue  # never start inside another object
        reach = 1.5 * max(params[0], params[1])
        y0, y1 = int(max(0, np.floor(cy - reach))), int(min(h, np.ceil(cy + reach) + 1))
        x0, x1 = int(max(0, np.floor(cx - reach))), int(min(w, np.ceil(cx + reach) + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        rho = _rho(yy - cy, xx - cx, params).astype(np.float32)
        take = (rho <= 1.0) & (rho < best[y0:y1, x0:x1])
        if take.sum() < 4:
            continue
        centres.append((cy, cx, r, params))
        best[y0:y1, x0:x1][take] = rho[take]
        labels[y0:y1, x0:x1][take] = len(centres)
        covered += np.pi * r * r
    radii = np.array([c[2] for c in centres], np.float64)
    fixed, old_ids = _fix_labels(labels, return_ids=True)
    return fixed, radii[old_ids.astype(np.int64) - 1]


def render_fluorescence(rng: np.random.Generator, labels: np.ndarray, radius: float, dim: np.ndarray | None = None) -> np.ndarray:
    """A float32 fluorescence-like image of ``labels``: per-object brightness (some dim),
    textured chromatin, 0-4 nucleoli per object (bright or dark spots, the labels stay solid),
    darker or brighter rims, blur, uneven background, Poisson + Gaussian noise."""
    shape = labels.shape
    n = int(labels.max())
    bright = np.concatenate([[0.0], rng.uniform(0.3, 1.0, n)]).astype(np.float32)
    if dim is not None and dim.size:
        bright[1:][dim] *= 0.25
    img = bright[labels]
    # chromatin texture on the scale of a fraction of the nucleus
    cell = max(2.0, radius / 4.0)
    small = rng.standard_normal((int(shape[0] / cell) + 2, int(shape[1] / cell) + 2)).astype(np.float32)
    texture = ndi.zoom(small, cell, order=1)[: shape[0], : shape[1]]
    texture = np.pad(texture, [(0, shape[0] - texture.shape[0]), (0, shape[1] - texture.shape[1])], mode="edge")
    img = img * (1.0 + rng.uniform(0.1, 0.4) * texture)
    # nucleoli: small spots inside objects
    if n and rng.random() < 0.7:
        for k, sl in enumerate(ndi.find_objects(labels), 1):
            if sl is None or rng.random() < 0.3:
                continue
            ys, xs = np.nonzero(labels[sl] == k)
            if ys.size < 30:
                continue
            r_obj = np.sqrt(ys.size / np.pi)
            for _ in range(int(rng.integers(1, 5))):
                i = int(rng.integers(ys.size))
                cy, cx = ys[i] + sl[0].start, xs[i] + sl[1].start
                rs = max(1.0, r_obj * rng.uniform(0.08, 0.2))
                y0, y1 = int(max(0, cy - 2 * rs)), int(min(shape[0], cy + 2 * rs + 1))
                x0, x1 = int(max(0, cx - 2 * rs)), int(min(shape[1], cx + 2 * rs + 1))
                yy, xx = np.mgrid[y0:y1, x0:x1]
                spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rs * rs)).astype(np.float32)
                gain = rng.uniform(0.4, 0.9) * (1 if rng.random() < 0.5 else -0.8)
                img[y0:y1, x0:x1] *= 1.0 + gain * spot * (labels[y0:y1, x0:x1] == k)
    edge = ndi.distance_transform_edt(labels > 0)
    rim = rng.uniform(-0.5, 0.3)
    img = img * (1.0 + rim * np.exp(-edge / max(1.0, radius / 6.0)) * (labels > 0))
    img = ndi.gaussian_filter(img, rng.uniform(0.5, 1.5) * max(1.0, radius / 25.0))
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    img += rng.uniform(0.02, 0.15) + rng.uniform(-0.08, 0.08) * yy / shape[0] + rng.uniform(-0.08, 0.08) * xx / shape[1]
    img = np.clip(img, 0.0, None)
    photons = float(np.exp(rng.uniform(np.log(30.0), np.log(1000.0))))
    img = rng.poisson(img * photons).astype(np.float32) / photons
    img += rng.normal(0.0, rng.uniform(0.005, 0.03), shape).astype(np.float32)
    return img.astype(np.float32)


def rich_synthetic_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int] = (512, 512),
    regime: str | None = None,
    kind: str | None = None,
    radius_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One training image of synthetic nuclei in a size ``regime`` (:data:`REGIMES`, random if
    None) made as a ``kind`` (:data:`KINDS`, random if None: plane 60%, z_slice 25%, xz_slice 15%).

    Returns ``(image H x W float32, labels H x W uint16, info)``; ``info`` has the regime, its
    radius range (px of this image, the regime's times ``radius_scale``), the kind and the
    drawn radius of every object. Every label is one 4-connected component without holes.
    """
    if regime is None:
        regime = str(rng.choice(list(REGIMES)))
    if regime not in REGIMES:
        raise ValueError(f"unknown size regime {regime!r}; choose one of {list(REGIMES)}")
    if kind is None:
        kind = str(rng.choice(list(KINDS), p=[0.6, 0.25, 0.15]))
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {list(KINDS)}")
    h, w = shape
    lo, hi = (v * float(radius_scale) for v in REGIMES[regime])
    dim = None
    if kind == "xz_slice":
        aniso = float(rng.uniform(2.0, 5.0))
        hz = max(8, int(round(h / aniso)))
        lab_z, radii = rich_nuclei_labels(rng, (hz, w), (lo, hi))
        img_z = render_fluorescence(rng, lab_z, float(np.sqrt(lo * hi)))
        if rng.random() < 0.5:  # shown upsampled to isotropic pixels: staircase edges, row blur
            rows = np.minimum(((np.arange(h) + 0.5) * hz / h).astype(np.int64), hz - 1)
            labels, old_ids = _fix_labels(lab_z[rows], return_ids=True)
            radii = radii[old_ids.astype(np.int64) - 1]
            image = ndi.zoom(img_z, (h / hz, 1.0), order=1)[:h]
            image = np.pad(image, [(0, h - image.shape[0]), (0, 0)], mode="edge")
        else:  # shown on the raw grid: flattened objects, a wide short image
            labels, image = lab_z, img_z
    else:
        labels, radii = rich_nuclei_labels(rng, (h, w), (lo, hi))
        if kind == "z_slice":
            # the plane cuts each ellipsoid at a random height: sections shrink to caps
            frac = rng.uniform(0.0, 0.95, int(labels.max()))
            section = np.sqrt(1.0 - frac**2)
            cut = _shrink_sections(labels, section)
            labels, old_ids = _fix_labels(cut, return_ids=True)
            radii = radii[old_ids.astype(np.int64) - 1]
            dim = section[old_ids.astype(np.int64) - 1] < 0.6  # caps are out of focus: dim
        image = None
    if image is None:
        image = render_fluorescence(rng, labels, float(np.sqrt(lo * hi)), dim)
        if kind == "z_slice":
            image = ndi.gaussian_filter(image, rng.uniform(0.5, 2.0))
    info = {"regime": regime, "radius": (lo, hi), "kind": kind, "radii": radii, "n": int(labels.max())}
    return image.astype(np.float32), labels.astype(np.uint16), info


def _shrink_sections(labels: np.ndarray, section: np.ndarray) -> np.ndarray:
    """Each object eroded to about ``section[k-1]`` of its size (distance to its boundary)."""
    out = np.zeros_like(labels)
    for k, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None:
            continue
        m = labels[sl] == k
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        dmax = d.max()
        keep = m & (d > dmax * (1.0 - section[k - 1]))
        out[sl][keep] = k
    return out

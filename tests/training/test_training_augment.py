"""Augmentation keeps the image and its labels aligned, scales objects as asked, is seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_edgesam.training.augment import (
    equivalent_diameters,
    fill_frame,
    flip_rot,
    intensity_augment,
    random_flip_rot,
    random_scale_crop,
    scale_crop,
)


def disks(shape=(300, 400), r=12, spacing=40):
    """Disks of radius ``r`` on a grid; the image intensity encodes the label: 3 * id + 20."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    k = 0
    for cy in range(spacing // 2, shape[0] - r, spacing):
        for cx in range(spacing // 2, shape[1] - r, spacing):
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    assert k <= 75  # intensity bands fit in uint8
    grey = np.where(lab > 0, 3 * lab + 20, 0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), lab


def assert_aligned(rgb, lab, factor=1.0):
    """Every pixel of label k farther than the interpolation reach (half a source pixel) from
    its edge has exactly k's intensity, and k's intensity-weighted centroid is its label
    centroid (a shift of the image against the labels would move it)."""
    m = max(2, int(math.ceil(factor / 2)) + 1)
    se = np.ones((2 * m + 1, 2 * m + 1))
    grey = rgb[..., 0].astype(float)
    for k in np.unique(lab[lab > 0]):
        inner = ndi.binary_erosion(lab == k, se)
        if inner.any():
            assert np.all(rgb[inner][:, 0] == 3 * k + 20), k
        s = ndi.find_objects((lab == k).astype(int))[0]
        if s[0].start > m and s[1].start > m and s[0].stop < lab.shape[0] - m and s[1].stop < lab.shape[1] - m:
            win = (slice(s[0].start - m, s[0].stop + m), slice(s[1].start - m, s[1].stop + m))
            w = grey[win] * np.isin(lab[win], [0, k])
            c_img = np.array(ndi.center_of_mass(w))
            c_lab = np.array(ndi.center_of_mass(lab[win] == k))
            assert np.all(np.abs(c_img - c_lab) < 0.5), (k, c_img, c_lab)
    bg = ndi.binary_erosion(lab == 0, se)
    assert np.all(rgb[bg] == 0)


@pytest.mark.parametrize("factor", [0.37, 1.0, 2.5, 7.0])
def test_scale_crop_alignment_and_areas(factor):
    rgb, lab = disks()
    out, olab = scale_crop(rgb, lab, factor, (43, 41), frame=256)
    assert out.dtype == np.uint8 and out.shape == (*olab.shape, 3)
    assert max(olab.shape) <= 256
    assert_aligned(out, olab, factor)
    # objects fully inside the crop have their area scaled by factor^2
    inside = [k for k, s in enumerate(ndi.find_objects(olab), 1) if s is not None
              and s[0].start > 0 and s[1].start > 0 and s[0].stop < olab.shape[0] and s[1].stop < olab.shape[1]]
    assert inside
    areas = np.array([(olab == k).sum() for k in inside])
    expected = math.pi * (12 * factor) ** 2
    assert np.all(np.abs(areas - expected) < 0.12 * expected + 4 * 12 * factor + 4)


def test_random_scale_crop_hits_the_target_sizes():
    rgb, lab = disks()
    rng = np.random.default_rng(0)
    medians = []
    for _ in range(25):
        out, olab, factor = random_scale_crop(rgb, lab, rng, frame=512, object_px=(6, 400), canvas_probability=1.0)
        assert max(out.shape[:2]) <= 512 and out.shape[:2] == olab.shape
        assert olab.max() > 0  # the crop is centred near an object
        assert_aligned(out, olab, factor)
        d = equivalent_diameters(olab, min_area=1)
        medians.append(np.max(d))
        # the object diameter is 24 px at the source; the frame is half of 1024
        assert 0.5 * 6 / 24 <= factor <= 0.5 * 400 / 24 * 1.0001
    # log-uniform between 3 and 200 px (frame 512): both ends are visited
    assert min(medians) < 12 and max(medians) > 100


def test_small_draws_fill_the_frame_unless_a_canvas_is_allowed():
    rgb, lab = disks()  # 300 x 400: fills a 512 frame at factor 1.28 (objects 31 px)
    for p, fills in ((0.0, True), (1.0, False)):
        rng = np.random.default_rng(1)
        sides = [max(random_scale_crop(rgb, lab, rng, 512, canvas_probability=p)[0].shape[:2]) for _ in range(30)]
        assert all(s == 512 for s in sides) == fills
        assert any(s == 512 for s in sides)


def test_fill_frame_is_the_predictors_resize():
    rgb, lab = disks((300, 400))
    out, olab = fill_frame(rgb, lab, 1024)
    assert out.shape[:2] == (768, 1024) == olab.shape
    assert_aligned(out, olab)
    assert len(np.unique(olab)) == len(np.unique(lab))


@pytest.mark.parametrize("h,v,k", [(True, False, 0), (False, True, 1), (True, True, 3), (False, False, 2)])
def test_flips_and_rotations_keep_alignment(h, v, k):
    rgb, lab = disks((200, 300))
    out, olab = flip_rot(rgb, lab, h, v, k)
    assert out.shape[:2] == olab.shape == ((300, 200) if k % 2 else (200, 300))
    assert np.array_equal(out[..., 0], np.where(olab > 0, 3 * olab + 20, 0))
    assert sorted(np.bincount(olab.ravel())) == sorted(np.bincount(lab.ravel()))


def test_intensity_augment_contract_and_seed():
    rgb, lab = disks()
    a = intensity_augment(rgb, lab, np.random.default_rng(5))
    b = intensity_augment(rgb, lab, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == rgb.shape
    assert np.array_equal(a, b)
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])  # grey stays grey
    assert np.array_equal(intensity_augment(rgb, lab, np.random.default_rng(5), strength=0.0), rgb)
    changed = [not np.array_equal(intensity_augment(rgb, lab, np.random.default_rng(s)), rgb) for s in range(10)]
    assert sum(changed) >= 8
    # objects stay brighter than the background on average (the signal survives)
    for s in range(10):
        out = intensity_augment(rgb, lab, np.random.default_rng(s)).astype(float)[..., 0]
        assert out[lab > 0].mean() > out[lab == 0].mean()


def test_whole_pipeline_is_deterministic_per_seed():
    rgb, lab = disks()

    def run(seed):
        rng = np.random.default_rng(seed)
        img, olab, _ = random_scale_crop(rgb, lab, rng, 256)
        img, olab = random_flip_rot(img, olab, rng)
        return intensity_augment(img, olab, rng), olab

    a, b, c = run(3), run(3), run(4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not (a[0].shape == c[0].shape and np.array_equal(a[0], c[0]))


def test_bad_inputs_have_clear_errors():
    rgb, lab = disks()
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        scale_crop(rgb[..., 0], lab, 1.0, (0, 0), 256)
    with pytest.raises(ValueError, match="do not match"):
        scale_crop(rgb, lab[:10], 1.0, (0, 0), 256)
    with pytest.raises(ValueError, match="object_px"):
        random_scale_crop(rgb, lab, np.random.default_rng(0), 256, object_px=(10, 5))
    with pytest.raises(ValueError, match="unknown geometric"):
        random_flip_rot(rgb, lab, np.random.default_rng(0), ops=("shear",))


def test_augmentation_generator_and_metrics_import_without_torch():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from napari_edgesam.training import augment, synthetic, evaluate, eval_metrics
        img, lab, _ = synthetic.rich_synthetic_nuclei(np.random.default_rng(0), (64, 64), "small")
        rgb = np.repeat((img / img.max() * 255).astype(np.uint8)[..., None], 3, -1)
        augment.random_scale_crop(rgb, lab, np.random.default_rng(0), 64)
        print(eval_metrics.segmentation_accuracy(lab, lab).mean())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0"

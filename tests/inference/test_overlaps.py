"""Objects propagated together do not share pixels (``volume/overlaps.py``), and what that does
to 3D propagation with a decoder whose masks bleed into a touching neighbour."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from _propagation_fakes import FakePredictor
from napari_edgesam.inference.core.predictor import ImageEmbedding
from napari_edgesam.inference.core.preprocess import resized_shape
from napari_edgesam.inference.volume.overlaps import split_overlaps
from napari_edgesam.inference.volume.propagation import propagate_objects


def disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def iou(a, b):
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def test_overlap_is_split_along_its_middle():
    shape = (60, 90)
    a, b = disc(shape, 30, 25, 18), disc(shape, 30, 55, 18)  # overlap: columns 37-43
    assert (a & b).any()
    na, nb = split_overlaps([a, b], [1, 2])
    assert not (na & nb).any()  # no pixel is shared any more
    assert ((na | nb) == (a | b)).all()  # and none is lost
    cols = np.nonzero((a & b).any(0))[0]
    mid = 0.5 * (cols[0] + cols[-1])
    assert np.nonzero(na.any(0))[0].max() <= mid + 1 and np.nonzero(nb.any(0))[0].min() >= mid - 1
    assert (na == a)[:, :35].all() and (nb == b)[:, 46:].all()  # untouched away from the overlap
    # the inputs are not changed
    assert (a & b).any()


def test_a_bleed_goes_back_to_the_object_it_lies_deep_inside():
    shape = (60, 90)
    b = disc(shape, 30, 55, 16)
    a = disc(shape, 30, 25, 16) | disc(shape, 30, 50, 8)  # a bleeds well into b
    na, nb = split_overlaps([a, b], [3, 4])
    # the bleed lies at a's edge but deep inside b: nearly all of it goes to b (a keeps a sliver
    # where the two touch)
    assert (na & b).sum() < 0.2 * (a & b).sum()
    assert (nb | (na & b)) .sum() == b.sum() and not (na & nb).any()
    assert (nb == b)[:, 44:].all()


def test_same_object_and_apart_masks_are_left_alone():
    shape = (40, 40)
    a, b = disc(shape, 20, 15, 10), disc(shape, 20, 22, 10)
    same = split_overlaps([a, b], [5, 5])
    assert (same[0] == a).all() and (same[1] == b).all()
    c = disc(shape, 5, 5, 3)
    apart = split_overlaps([a, c], [1, 2])
    assert apart[0] is not None and (apart[0] == a).all() and (apart[1] == c).all()
    assert split_overlaps([], []) == []
    with pytest.raises(ValueError, match="owners"):
        split_overlaps([a, b], [1])


def test_settled_masks_compete_but_do_not_change_and_seeds_keep_everything():
    shape = (60, 90)
    old, new = disc(shape, 30, 25, 18), disc(shape, 30, 50, 18)
    (out,) = split_overlaps([new], [2], settled=[(1, old)])
    # pixels deeper in the settled mask went to it; the new mask keeps those deeper in itself
    assert 0 < (out & old).sum() < (new & old).sum()
    assert out[30, 50] and not out[30, 33]
    # an annotated seed keeps every pixel
    (cut,) = split_overlaps([new], [2], fixed=[(1, old)])
    assert not (cut & old).any() and (cut | old).sum() == (new | old).sum()
    # masks of the same object do not compete
    (kept,) = split_overlaps([new], [1], settled=[(1, old)], fixed=[(1, old)])
    assert (kept == new).all()


# -- in propagation -------------------------------------------------------------------------
N, H, W = 20, 64, 96


class BleedingPredictor(FakePredictor):
    """The labelled region under the prompt, grown by 4 px: like a real decoder on touching
    nuclei, every mask runs into its neighbour."""

    def _segment(self, emb, point, box, mask_input):
        mask, score = super()._segment(emb, point, box, mask_input)
        return ndimage.binary_dilation(mask, iterations=4), score


def two_touching_nuclei():
    zz, yy, xx = np.mgrid[0:N, 0:H, 0:W].astype(np.float32)
    a = ((zz - 10) / 7) ** 2 + ((yy - 32) / 15) ** 2 + ((xx - 30) / 15) ** 2 <= 1
    b = ((zz - 10) / 7) ** 2 + ((yy - 32) / 15) ** 2 + ((xx - 61) / 15) ** 2 <= 1
    b &= ~a
    return a, b, a.astype(np.int32) + 2 * b.astype(np.int32)


def embeddings(z):
    return ImageEmbedding(np.full((1, 1, 1, 1), z, np.float32), (H, W), resized_shape((H, W)))


@pytest.mark.parametrize("seed_b", [10, 9])  # seeded on the same slice (one group), or not
def test_propagated_neighbours_do_not_share_pixels(seed_b):
    a, b, truth = two_touching_nuclei()
    seeds = {1: {10: a[10]}, 2: {seed_b: b[seed_b]}}
    runs = {}
    for exclusive in (True, False):
        res = propagate_objects(BleedingPredictor(truth), embeddings, seeds, N, exclusive=exclusive,
                                one_piece=False)
        runs[exclusive] = res
        shared = sum(np.count_nonzero(res[1].masks[z] & res[2].masks[z])
                     for z in set(res[1].masks) & set(res[2].masks))
        vol = {o: np.stack([res[o].masks.get(z, np.zeros((H, W), bool)) for z in range(N)]) for o in (1, 2)}
        # how much of each nucleus the other object's masks took
        leak = max(np.count_nonzero(vol[1] & b) / b.sum(), np.count_nonzero(vol[2] & a) / a.sum())
        if exclusive:
            assert shared == 0
            assert leak < 0.002, leak
        else:
            assert shared > 100  # the fake bleeds: without the rule the masks overlap
            assert leak > 0.005, leak
        assert iou(vol[1] | vol[2], a | b) > 0.6  # both followed through the stack either way
    # the seeds stay as annotated
    assert (runs[True][1].masks[10] == a[10]).all() and (runs[True][2].masks[seed_b] == b[seed_b]).all()


def test_protected_pixels_are_never_taken():
    """A neighbour that is not propagated (e.g. committed earlier) is protected: the bleeding
    masks of the propagated object stop at it, so the object does not drift into it."""
    a, b, truth = two_touching_nuclei()
    seeds = {1: {10: a[10]}}
    free = propagate_objects(BleedingPredictor(truth), embeddings, seeds, N, one_piece=False)
    guarded = propagate_objects(BleedingPredictor(truth), embeddings, seeds, N, one_piece=False,
                                protected=lambda z: b[z])
    taken_free = sum(np.count_nonzero(m & b[z]) for z, m in free[1].masks.items())
    taken = sum(np.count_nonzero(m & b[z]) for z, m in guarded[1].masks.items() if z != 10)
    assert taken_free > 30 and taken == 0
    assert guarded[1].masks[10] is not None and (guarded[1].masks[10] == a[10]).all()  # the seed as annotated
    assert set(guarded[1].masks) == set(free[1].masks)  # followed as far as before
    with pytest.raises(ValueError, match="protected"):
        propagate_objects(BleedingPredictor(truth), embeddings, seeds, N, protected=lambda z: np.zeros((3, 3), bool))


# -- what takes part in the split (regressions found by review) -----------------------------
def _disc(cy, cx, r):
    yy, xx = np.ogrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class ScriptedPredictor(FakePredictor):
    """``rule(z, x) -> (mask, stability)`` for the prompt point's column ``x``."""

    def __init__(self, rule):
        super().__init__(np.zeros((N, H, W), np.int32))
        self.rule = rule

    def _segment(self, emb, point, box, mask_input):
        x = int(np.asarray(point).reshape(-1, 2)[0, 0].round())
        mask, score = self.rule(self.z_of(emb), x)
        return mask.copy(), score


A_DISC, B_DISC = _disc(32, 30, 14), _disc(32, 58, 14)


def test_a_rejected_prediction_takes_no_pixels():
    """B's prediction on slice 3 swallows A but is rejected (stability 0.3): A keeps its mask
    there and is followed on."""
    def rule(z, x):
        if x < 44:
            return A_DISC, 0.95
        return (_disc(32, 44, 30), 0.3) if z == 3 else (B_DISC, 0.95)

    res = propagate_objects(ScriptedPredictor(rule), embeddings, {1: {2: A_DISC}, 2: {2: B_DISC}}, 6,
                            one_piece=False, clip_box=False)
    assert sorted(res[1].masks) == list(range(6))
    assert (res[1].masks[3] == A_DISC).all()
    assert res[2].stopped["forward"] == "low stability"


def test_an_emptied_mask_stops_its_sweep_without_an_error():
    """B's accepted mask on slice 3 lies deep around A: A's mask there is all taken, and with
    every rule off (min_area 0, min_overlap 0) A's sweep stops as "mask vanished" instead of
    failing to build a prompt from an empty mask."""
    def rule(z, x):
        if x < 44:
            return A_DISC, 0.95
        return (_disc(32, 44, 34), 0.95) if z == 3 else (B_DISC, 0.95)

    res = propagate_objects(ScriptedPredictor(rule), embeddings, {1: {2: A_DISC}, 2: {2: B_DISC}}, 6,
                            clip_box=False, min_area=0, min_overlap=0.0)
    assert res[1].stopped["forward"] == "mask vanished" and 3 not in res[1].masks
    assert all(m.any() for r in res.values() for m in r.masks.values())


def test_the_final_split_never_empties_a_settled_slice():
    """B (small) settles on slice 3 before A's bleeding mask arrives there: the final split may
    not leave B with an empty slice between full ones; A gives up those pixels instead."""
    small = _disc(32, 58, 6)

    def rule(z, x):
        if x < 44:
            return (_disc(32, 44, 30), 0.95) if z == 3 else (A_DISC, 0.95)
        return small, 0.95

    seen = []
    res = propagate_objects(ScriptedPredictor(rule), embeddings, {1: {0: A_DISC}, 2: {5: small}}, 6,
                            one_piece=False, clip_box=False, on_result=lambda o, z, m, s: seen.append((o, z)))
    assert all(np.count_nonzero(m) >= 10 for m in res[2].masks.values())
    for z in set(res[1].masks) & set(res[2].masks):
        assert not (res[1].masks[z] & res[2].masks[z]).any()


def test_split_overlaps_checks_shapes():
    with pytest.raises(ValueError, match="one shape"):
        split_overlaps([np.ones((4, 4), bool), np.ones((5, 5), bool)], [1, 2])
    with pytest.raises(ValueError, match="one shape"):
        split_overlaps([np.ones((4, 4), bool)], [1], fixed=[(2, np.ones((4, 5), bool))])
    with pytest.raises(ValueError, match="H x W"):
        split_overlaps([np.ones((2, 4, 4), bool)], [1], settled=[(2, np.ones((2, 4, 4), bool))])


def test_two_objects_on_one_track_keep_it_where_each_is_nearer_its_seed():
    """Object 1 (seeded on slice 0) ends up following object 2's track (seeded on slice 6):
    where their masks coincide, the slice stays with the object nearer its seed, and the other
    has no mask there (never an empty one)."""
    small = _disc(32, 58, 5)

    def rule(z, x):
        return (A_DISC, 0.95) if z <= 3 and x < 44 else (small, 0.95)

    res = propagate_objects(ScriptedPredictor(rule), embeddings, {1: {0: A_DISC}, 2: {6: small}}, 7,
                            one_piece=False, clip_box=False, min_overlap=0.0)
    for z in set(res[1].masks) & set(res[2].masks):
        assert not (res[1].masks[z] & res[2].masks[z]).any()
    assert all(m.any() for r in res.values() for m in r.masks.values())
    assert {4, 5} <= set(res[2].masks)  # nearer object 2's seed

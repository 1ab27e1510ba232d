"""The parts of 3D propagation on their own: the stop rules, the sweeps of a seeded object
and the order in which the two sweep lines visit the slices."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.inference.volume.result import (
    STOP_ANNOTATED,
    STOP_CANCELLED,
    STOP_END,
    STOP_LOW_OVERLAP,
    STOP_LOW_STABILITY,
    STOP_MET,
    STOP_VANISHED,
)
from napari_edgesam.inference.volume.sweeps import StopRules, Sweeps, iou, make_sweeps


def square(y0, x0, size=6, shape=(20, 20)):
    m = np.zeros(shape, bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def test_stop_rules_in_their_order():
    rules = StopRules(min_stability=0.6, min_overlap=0.2, min_area=10)
    prev = square(5, 5)
    assert rules.reason(square(5, 6), 0.9, prev) is None
    assert rules.reason(square(5, 5, size=3), 0.1, prev) == STOP_VANISHED  # area first (9 < 10)
    assert rules.reason(square(5, 6), 0.5, prev) == STOP_LOW_STABILITY
    assert rules.reason(square(12, 12), 0.9, prev) == STOP_LOW_OVERLAP
    one_pixel = np.zeros((20, 20), bool)
    one_pixel[0, 0] = True
    assert StopRules(0.0, 0.0, 0).reason(one_pixel, 0.0, prev) is None  # no rule
    # but an empty mask is never followed (there is nothing to prompt the next slice with)
    assert StopRules(0.0, 0.0, 0).reason(np.zeros((20, 20), bool), 0.0, prev) == STOP_VANISHED
    assert iou(square(0, 0), square(0, 3)) == pytest.approx(18 / 54)
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    for bad, match in (({"min_stability": 1.5}, "min_stability"), ({"min_overlap": float("nan")}, "min_overlap"),
                       ({"min_area": 2.5}, "min_area"), ({"min_area": True}, "min_area")):
        with pytest.raises(ValueError, match=match):
            StopRules(**bad)


def test_sweeps_of_a_seeded_object():
    seeds = {2: square(5, 5), 6: square(6, 6)}
    sweeps, stopped, reach = make_sweeps(1, seeds, 8, "both", fill=True)
    assert sorted(s.name for s in sweeps) == ["backward", "fill 2->6", "fill 6->2", "forward"]
    assert stopped == {} and reach == 2 + 1 + 3
    by_name = {s.name: s for s in sweeps}
    assert (by_name["forward"].next_z, by_name["forward"].limit, by_name["forward"].limit_reason) == (7, 8, STOP_END)
    assert (by_name["fill 6->2"].next_z, by_name["fill 6->2"].limit_reason) == (5, STOP_ANNOTATED)
    assert by_name["backward"].logits.shape == (256, 256)
    # a seed on the last slice: forward has nothing to do and is stopped at once
    sweeps, stopped, reach = make_sweeps(1, {7: square(5, 5)}, 8, "forward", fill=True)
    assert sweeps == [] and stopped == {"forward": STOP_END} and reach == 0


def test_two_sweep_lines_take_turns_and_meet():
    sweeps = Sweeps({1: {2: square(5, 5), 6: square(5, 5)}}, 9, "both", fill=True)
    assert sweeps.total == 2 + 2 + 3
    z, group = sweeps.next_slice()  # the sweep line moving up: its lowest next slice
    assert z == 3 and [s.name for s in group] == ["fill 2->6"]
    assert sweeps.accept(group[0], 3, square(5, 5), 0.9, np.zeros((256, 256), np.float32))
    z, group = sweeps.next_slice()  # then the line moving down: its highest next slice
    assert z == 5 and [s.name for s in group] == ["fill 6->2"]
    sweeps.accept(group[0], 5, square(5, 5), 0.8, np.zeros((256, 256), np.float32))
    z, group = sweeps.next_slice()  # moving up again: both fills need slice 4 (each 2 from its seed)
    assert z == 4 and [s.name for s in group] == ["fill 2->6", "fill 6->2"]
    zero = np.zeros((256, 256), np.float32)
    assert sweeps.accept(group[0], 4, square(5, 6), 0.7, zero)
    assert not sweeps.accept(group[1], 4, square(5, 7), 0.6, zero)  # equal distance: the more stable wins
    z, group = sweeps.next_slice()  # moving down: slice 3 was reached from seed 2 at distance 1
    assert z == 3 and group == [] and sweeps.results[1].stopped == {"fill 6->2": STOP_MET}
    assert sweeps.stop_all(STOP_CANCELLED) == 3
    res = sweeps.finish()[1]
    assert res.slices == [2, 3, 4, 5, 6] and res.scores[4] == 0.7 and res.seeded == (2, 6)
    assert np.array_equal(res.masks[4], square(5, 6))
    assert res.stopped == {"fill 6->2": STOP_MET, "fill 2->6": STOP_CANCELLED, "forward": STOP_CANCELLED,
                           "backward": STOP_CANCELLED}

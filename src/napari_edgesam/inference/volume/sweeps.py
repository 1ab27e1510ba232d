"""The bookkeeping of 3D propagation: seeds, sweeps (one object followed in one direction
from one seed), the stop rules, and the per-slice choice between sweeps that meet.

Plain numpy; no model. :mod:`~napari_edgesam.inference.volume.propagation` drives these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.postprocess import keep_prompted_pieces
from ..core.preprocess import resized_shape
from .overlaps import split_overlaps
from .prompts import mask_to_low_res_logits
from .result import (
    SEED_SCORE,
    STOP_ANNOTATED,
    STOP_END,
    STOP_LOW_OVERLAP,
    STOP_LOW_STABILITY,
    STOP_MET,
    STOP_VANISHED,
    PropagationResult,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


@dataclass(frozen=True)
class StopRules:
    """When a direction stops: the predicted mask has fewer than ``min_area`` pixels or none
    ("mask vanished"), a stability score below ``min_stability``, or an IoU with the
    previous slice's mask below ``min_overlap``. Checked on construction."""

    min_stability: float = 0.6
    min_overlap: float = 0.2
    min_area: int = 10

    def __post_init__(self) -> None:
        for name in ("min_stability", "min_overlap"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float, np.number)) and 0.0 <= float(value) <= 1.0):  # NaN never stops
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        area = self.min_area
        if isinstance(area, bool) or not isinstance(area, (int, np.integer)) or area < 0:
            raise ValueError(f"min_area must be an integer >= 0, got {area!r}")

    def reason(self, mask: np.ndarray, score: float, previous: np.ndarray) -> str | None:
        """Why the prediction ``mask`` (stability ``score``) following ``previous`` is
        rejected, or None when it is accepted."""
        area = np.count_nonzero(mask)
        if area < self.min_area or area == 0:  # an empty mask is never followed (nothing to prompt with)
            return STOP_VANISHED
        if score < self.min_stability:
            return STOP_LOW_STABILITY
        if iou(mask, previous) < self.min_overlap:
            return STOP_LOW_OVERLAP
        return None


@dataclass
class Sweep:
    """One object followed in one direction from one seed."""

    obj: int
    name: str
    step: int  # +1 or -1
    limit: int  # the sweep never decodes this slice
    limit_reason: str
    z: int  # last accepted slice
    mask: np.ndarray
    logits: np.ndarray
    taken: int = 0

    @property
    def next_z(self) -> int:
        return self.z + self.step


@dataclass
class Candidate:
    """The best prediction of one object on one slice so far (nearest seed, then most stable)."""

    distance: int
    score: float
    mask: np.ndarray


def check_seeds(seeds: dict[int, np.ndarray], n_slices: int, obj: int) -> dict[int, np.ndarray]:
    """The seeds of object ``obj`` (``z -> H x W`` masks) sorted by z, as bool; ValueError
    naming the problem unless they are non-empty masks of one shape on slices in range."""
    if not isinstance(seeds, dict) or not seeds:
        raise ValueError(f"object {obj}: seeds must be a non-empty dict z -> H x W mask")
    out, shape = {}, None
    for z, mask in sorted(seeds.items()):
        if not isinstance(z, (int, np.integer)) or not 0 <= z < n_slices:
            raise ValueError(f"object {obj}: seed slice {z!r} is not an integer in [0, {n_slices})")
        mask = np.asarray(mask)
        if mask.ndim != 2 or (shape is not None and mask.shape != shape):
            raise ValueError(f"object {obj}: seed masks must all be H x W of one shape; slice {z} has {mask.shape}")
        if not mask.any():
            raise ValueError(f"object {obj}: the seed mask on slice {z} is empty")
        shape = mask.shape
        out[int(z)] = mask.astype(bool, copy=False)
    return out


def make_sweeps(
    obj: int, seeds: dict[int, np.ndarray], n_slices: int, direction: str, fill: bool
) -> tuple[list[Sweep], dict[str, str], int]:
    """Sweeps of one object, stops already known (e.g. a seed on the last slice), and the
    number of slices they may visit (for progress)."""
    zs = sorted(seeds)
    shape = seeds[zs[0]].shape
    input_size = resized_shape(shape)
    logits = {z: mask_to_low_res_logits(seeds[z], input_size, shape) for z in zs}
    sweeps, stopped, reach = [], {}, 0

    def add(name, z, step, limit, reason):
        if z + step == limit:
            stopped[name] = reason
        else:
            sweeps.append(Sweep(obj, name, step, limit, reason, z, seeds[z], logits[z]))

    if direction in ("both", "backward"):
        add("backward", zs[0], -1, -1, STOP_END)
        reach += zs[0]
    if direction in ("both", "forward"):
        add("forward", zs[-1], +1, n_slices, STOP_END)
        reach += n_slices - 1 - zs[-1]
    if fill:
        for a, b in zip(zs[:-1], zs[1:], strict=True):
            if b - a > 1:
                add(f"fill {a}->{b}", a, +1, b, STOP_ANNOTATED)
                add(f"fill {b}->{a}", b, -1, a, STOP_ANNOTATED)
                reach += b - a - 1  # each gap slice is decoded about once
    return sweeps, stopped, reach


class Sweeps:
    """Every object's sweeps and results during one propagation.

    Two sweep lines, one moving up and one moving down the stack, take turns
    (:meth:`next_slice`); every sweep that needs that slice decodes it there.
    """

    def __init__(self, seeds: dict[int, dict[int, np.ndarray]], n_slices: int, direction: str, fill: bool) -> None:
        self.results: dict[int, PropagationResult] = {}
        self.candidates: dict[int, dict[int, Candidate]] = {}
        self.active: list[Sweep] = []
        self.total = 0  # slices the sweeps may visit
        self.done = 0  # predictions judged so far
        self._turn = +1
        for obj, obj_seeds in seeds.items():
            checked = check_seeds(obj_seeds, n_slices, obj)
            sweeps, stopped, reach = make_sweeps(obj, checked, n_slices, direction, fill)
            self.results[obj] = PropagationResult(
                masks=dict(checked), scores={z: SEED_SCORE for z in checked}, stopped=stopped, seeded=tuple(checked)
            )
            self.candidates[obj] = {}
            self.active += sweeps
            self.total += reach

    def stop(self, sweep: Sweep, reason: str) -> None:
        self.results[sweep.obj].stopped[sweep.name] = reason
        self.active.remove(sweep)

    def stop_all(self, reason: str) -> int:
        """Stop every active sweep with ``reason``; returns how many there were."""
        n = len(self.active)
        for s in list(self.active):
            self.stop(s, reason)
        return n

    def next_slice(self) -> tuple[int, list[Sweep]]:
        """The next slice to decode and the sweeps that decode it there (possibly none: the
        sweeps that reached a slice already taken from a nearer seed stop, "met other direction")."""
        movers = [s.next_z for s in self.active if s.step == self._turn]
        if not movers:
            self._turn = -self._turn
            movers = [s.next_z for s in self.active if s.step == self._turn]
        z = min(movers) if self._turn > 0 else max(movers)
        self._turn = -self._turn
        group = []
        for s in [s for s in self.active if s.next_z == z]:
            other = self.candidates[s.obj].get(z)
            if other is not None and other.distance < s.taken + 1:
                self.stop(s, STOP_MET)
            else:
                group.append(s)
        return z, group

    def settled(self, z: int, besides: set[int]) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, np.ndarray]]]:
        """``(object, mask)`` of every object not in ``besides`` that already has a mask on
        slice ``z``: its best prediction so far, and its seed."""
        predicted, seeds = [], []
        for obj, res in self.results.items():
            if obj in besides:
                continue
            if z in res.seeded:
                seeds.append((obj, res.masks[z]))
            elif z in self.candidates[obj]:
                predicted.append((obj, self.candidates[obj][z].mask))
        return predicted, seeds

    def accept(self, s: Sweep, z: int, mask: np.ndarray, score: float, logits: np.ndarray) -> bool:
        """Move ``s`` to slice ``z``; True when its prediction is now the slice's best for the object."""
        s.z, s.mask, s.logits, s.taken = z, mask, logits, s.taken + 1
        best = self.candidates[s.obj].get(z)
        if best is None or (s.taken, -score) < (best.distance, -best.score):
            self.candidates[s.obj][z] = Candidate(s.taken, score, mask)
            return True
        return False

    def finish(self, exclusive: bool = False, min_area: int = 1, one_piece: bool = False) -> dict[int, PropagationResult]:
        """Every object's result: its seeds and the best prediction of every slice reached.

        With ``exclusive``, predictions of different objects on one slice that still share pixels
        (one was settled before the other was decoded there) split them as
        :func:`~napari_edgesam.inference.volume.overlaps.split_overlaps` does; seeds never
        change; ties go to the prediction nearer its seed. A prediction the split would leave
        with fewer than ``min_area`` pixels keeps its pixels and the others give them up, unless
        that would leave one of them that small: then the prediction is dropped (its object has
        no mask on that slice; it lay on another object). With ``one_piece``, a prediction the
        split cut in pieces keeps its largest."""
        if exclusive:
            self._split_settled(max(1, int(min_area)), one_piece)
        for obj, found in self.candidates.items():
            res = self.results[obj]
            for z, c in found.items():
                res.masks[z], res.scores[z] = c.mask, c.score
            res.masks = dict(sorted(res.masks.items()))
            res.scores = dict(sorted(res.scores.items()))
        return self.results

    def _split_settled(self, min_area: int, one_piece: bool) -> None:
        by_slice: dict[int, list[int]] = {}
        for obj, found in self.candidates.items():
            for z in found:
                by_slice.setdefault(z, []).append(obj)
        for z, objs in by_slice.items():
            seeds = [(obj, res.masks[z]) for obj, res in self.results.items() if z in res.seeded]
            if len(objs) + len(seeds) < 2:
                continue
            # nearest seed first: it wins ties and keeps its pixels first
            objs.sort(key=lambda o: (self.candidates[o][z].distance, -self.candidates[o][z].score))
            before = [self.candidates[o][z].mask for o in objs]
            masks: list[np.ndarray | None] = split_overlaps(before, objs, fixed=seeds)
            if one_piece:
                masks = [m if m is b else keep_prompted_pieces(m) for m, b in zip(masks, before, strict=True)]
            for k in range(len(objs)):
                if masks[k] is None or masks[k] is before[k] or np.count_nonzero(masks[k]) >= min_area:
                    continue
                kept = split_overlaps([before[k]], [objs[k]], fixed=seeds)[0]  # its pixels back
                trial = [m if m is None or j == k or objs[j] == objs[k] or not (m & kept).any() else m & ~kept
                         for j, m in enumerate(masks)]
                if np.count_nonzero(kept) >= min_area and all(
                        t is None or t is masks[j] or np.count_nonzero(t) >= min_area for j, t in enumerate(trial)):
                    masks = trial
                    masks[k] = kept
                else:  # it lies on another object: no mask of this object on this slice
                    masks[k] = None
            for obj, mask in zip(objs, masks, strict=True):
                c = self.candidates[obj][z]
                if mask is None:
                    del self.candidates[obj][z]
                elif mask is not c.mask:
                    self.candidates[obj][z] = Candidate(c.distance, c.score, mask)


"""Adapting the model to the user's committed objects, without Qt: one run (:class:`AdaptJob`)
and which model is in use (:class:`ModelSwap`).

:meth:`AdaptJob.run` is meant for a thread of its own. Each optimiser step runs there too,
not on the one compute thread (:mod:`~napari_edgesam.inference.backends.compute_thread`) that
answers clicks: a click's decode makes several compute-thread calls (decoder, upscaling), and
each would wait for a whole step in flight. Measured on the shared 2-core machine (load
average ~10, noisy), 15 s of adaptation of ``edgesam-nuclei``: a click took 0.27-0.33 s with
the steps on their own thread against 0.66-3.1 s with the steps queued on the compute thread
(steps 0.66-0.75 s median there). The two threads then share the cores for the length of a
decode (the compute thread's module docstring measured 30 against 21 ms per decoder call). The
result is a new predictor; the base predictor is never changed, so the widget can keep
decoding with it until the result is adopted, and go back to it in one step (revert).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..interactive.commit_log import ImageSource, Snapshot
from ..interactive.session import ObjectPrompt

logger = logging.getLogger(__name__)

#: Fewer committed objects than this are refused (a held-out part must remain for the guard).
MIN_OBJECTS = 4
#: Default time budget of one adaptation (seconds).
DEFAULT_SECONDS = 60.0
#: Which parameters move: the decoder only (training.adapt's "decoder"; "head" moves less), so
#: the encoder is the base's and every cached embedding stays valid after the hot swap.
DEFAULT_PARAMS = "decoder"

#: A labels plane: called (in a worker) it returns ``H x W`` integer labels (0 = background).
LabelsSource = Callable[[], np.ndarray]


def adapt_api():
    """The adaptation module (:mod:`napari_edgesam.training.adapt`); imports torch."""
    from ..training import adapt

    return adapt


def torch_missing_reason() -> str:
    """Why adaptation cannot run here ("" when it can): it needs torch."""
    from ..inference.loading.api import torch_available

    if torch_available():
        return ""
    return ("adapting the model needs PyTorch, which is not installed: "
            "pip install 'napari-edgesam[torch]' (or torch) and restart napari")


def warm_up() -> float:
    """Import what torch's optimisers import on first use (``torch._dynamo``); returns the seconds
    it took (0 when done before).

    The import holds the interpreter for long stretches: measured on the shared 2-core machine,
    the first adaptation of a session stalled the Qt thread for 0.47 s in ``prepare`` (the
    optimiser's construction), the next ones at most 0.03 s. :meth:`AdaptJob.run` calls this
    first, so the one stall falls right after the user pressed Adapt, before any step.
    """
    import sys

    if "torch._dynamo" in sys.modules or "torch" not in sys.modules:
        return 0.0
    start = time.perf_counter()
    try:
        import torch._dynamo  # noqa: F401
    except Exception as err:  # an optimiser works without it in some builds
        logger.debug("torch._dynamo could not be imported: %s", err)
    return time.perf_counter() - start


def too_few_message(n_objects: int, minimum: int = MIN_OBJECTS) -> str:
    """The one line shown when there are not enough committed objects ("" when there are)."""
    if n_objects >= minimum:
        return ""
    return (f"{n_objects} object(s) committed: commit at least {minimum} objects (or tick a labels layer) "
            "so that some can be held out to check the adapted model")


def prompt_fields(prompt: ObjectPrompt | None) -> dict:
    """The prompts of an object as ``AdaptObject`` keyword arguments: ``box`` ``(x0, y0, x1, y1)``
    or None, ``points`` ``N x 2`` (x, y) float32, ``point_labels`` ``N`` (1 positive, 0 negative)."""
    if prompt is None:
        return {}
    return {"box": None if prompt.box is None else np.asarray(prompt.box, np.float32).reshape(4),
            "points": np.asarray(prompt.points, np.float32).reshape(-1, 2),
            "point_labels": np.asarray(prompt.labels, np.int64).reshape(-1)}


@dataclass(frozen=True)
class AdaptRequest:
    """What to adapt to.

    Attributes:
        snapshot: the committed objects (:meth:`AnnotationLog.snapshot`).
        labels: extra ``(image_key, image_source, labels_source)`` planes of a labels layer the
            user ticked (e.g. Cellpose output): every label of a plane is one object.
        max_seconds: the time budget of the adaptation.
        params: which parameters move (``"decoder"``: cached embeddings stay valid).
        seed: the seed of the held-out split and the prompt sampling.
        embedding_of: ``image_key -> ImageEmbedding or None``: an embedding of the plane by the
            base model's encoder, already computed (the widget's cache); the others are embedded.
    """

    snapshot: Snapshot
    labels: tuple[tuple[str, ImageSource, LabelsSource], ...] = ()
    max_seconds: float = DEFAULT_SECONDS
    params: str = DEFAULT_PARAMS
    seed: int = 0
    embedding_of: Callable[[str], object] | None = None

    @property
    def n_committed(self) -> int:
        return self.snapshot.n_objects


@dataclass
class AdaptOutcome:
    """How a run ended: ``result`` (an ``AdaptResult``) unless it was cancelled or failed;
    ``message`` is one line for the widget; ``step_seconds`` the duration of every step."""

    result: object | None
    message: str
    cancelled: bool = False
    failed: bool = False
    step_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.result is not None and bool(getattr(self.result, "accepted", False))

    @property
    def longest_step(self) -> float:
        return max(self.step_seconds, default=0.0)


class AdaptJob:
    """One adaptation of ``predictor`` to a request (run it once, in a worker thread).

    ``prepare``, the steps and ``finish`` run in the calling thread (see the module docstring
    for why not on the compute thread); the encoder and decoder calls of ``prepare`` and
    ``finish`` (embedding planes, the held-out measurements) reach the compute thread one at a
    time, so clicks are answered in between.

    Args:
        predictor: the base predictor (never changed).
        request: the objects and settings.
        api: the adaptation module (default :func:`adapt_api`; tests pass another of the same shape).
        run_step: ``run_step(adapter.step)`` runs one step (default: in the calling thread; pass
            :func:`napari_edgesam.inference.backends.compute_thread.run` to queue the steps with
            the clicks instead).
    """

    def __init__(self, predictor, request: AdaptRequest, api=None,
                 run_step: Callable | None = None) -> None:
        self.predictor = predictor
        self.request = request
        self._api = api
        self._run_step = run_step
        #: Objects adapted to (commits and labels), known once :meth:`build_data` ran.
        self.n_objects = 0

    def build_data(self, api):
        """The adaptation data (``api.AdaptData``): every committed object with its prompts (its
        pixels as the target labels hold them now) and every label of the ticked labels planes, on the plane images the model saw (``H x W x 3``
        uint8, so no further normalisation), with the embeddings already known. Slow (loads the
        images): call it in a worker."""
        snapshot = self.request.snapshot.current(min_area=4)  # with the user's brush corrections
        images = snapshot.load_images()
        objects = [api.AdaptObject(o.image_key, o.mask, **prompt_fields(o.prompts)) for o in snapshot.objects]
        for key, image_source, labels_source in self.request.labels:
            labels = np.asarray(labels_source())
            if not labels.any():
                continue
            if key not in images:
                images[key] = np.asarray(image_source())
            if labels.shape != images[key].shape[:2]:
                raise ValueError(f"the labels plane {labels.shape} does not match its image {images[key].shape[:2]}")
            ids, areas = np.unique(labels[labels != 0], return_counts=True)
            objects += [api.AdaptObject(key, labels == i) for i, a in zip(ids, areas, strict=True) if a >= 4]
        embeddings = {}
        if self.request.embedding_of is not None:
            for key in images:
                emb = self.request.embedding_of(key)
                if emb is not None:
                    embeddings[key] = emb
        self.n_objects = len(objects)
        return api.AdaptData(images=images, embeddings=embeddings, objects=objects)

    def run(self, cancel: threading.Event, progress: Callable[[float, float], None] | None = None) -> AdaptOutcome:
        """Prepare, step until done or ``cancel`` is set, finish. Never raises: a failure is an
        outcome with ``failed`` and the error in one line. ``progress(fraction, eta_seconds)``
        is called after every step (from this thread)."""
        start = time.monotonic()
        steps: list[float] = []
        try:
            api = self._api or adapt_api()
            warm_up()
            run_step = self._run_step or (lambda fn: fn())
            data = self.build_data(api)
            if cancel.is_set():
                return AdaptOutcome(None, "adaptation cancelled: the model is unchanged", cancelled=True)
            adapter = api.Adapter(self.predictor, data, max_seconds=float(self.request.max_seconds),
                                  seed=int(self.request.seed), params=self.request.params)
            adapter.prepare()  # here: its encoder and decoder calls go to the compute thread one by one
            while not adapter.done:
                if cancel.is_set():
                    return AdaptOutcome(None, "adaptation cancelled: the model is unchanged", cancelled=True,
                                        step_seconds=steps, seconds=time.monotonic() - start)
                t0 = time.perf_counter()
                run_step(adapter.step)
                steps.append(time.perf_counter() - t0)
                if progress is not None:
                    fraction, eta = adapter.progress
                    progress(float(fraction), float(eta))
            result = adapter.finish()  # (as prepare) the measurement's decoder calls one by one
        except Exception as err:  # shown in the widget; the base model stays
            from .text import one_line

            logger.warning("adaptation failed: %s", err)
            logger.debug("adaptation failed", exc_info=err)
            return AdaptOutcome(None, f"adaptation failed, the model is unchanged: {one_line(err)}", failed=True,
                                step_seconds=steps, seconds=time.monotonic() - start)
        return AdaptOutcome(result, describe(result, self.n_objects), step_seconds=steps,
                            seconds=time.monotonic() - start)


def _iou(scores: dict | None) -> float | None:
    """The headline IoU of a before/after dict (the mean of box and click mIoU, else the first
    IoU entry)."""
    if not scores:
        return None
    for key in ("mean", "miou", "iou", "box_miou", "box", "click_miou", "click"):
        if key in scores:
            return float(scores[key])
    for key, value in scores.items():
        if "iou" in str(key).lower():
            return float(value)
    return None


def describe(result, n_objects: int | None = None) -> str:
    """One line: ``held-out IoU 0.62 -> 0.81 on 4 of your 20 objects, 48 s`` and what happened
    to the model (in use, or rejected and the base kept); ``n_objects``: all objects adapted to."""
    before, after = _iou(getattr(result, "before", None)), _iou(getattr(result, "after", None))
    n_held = int(getattr(result, "n_heldout", 0))
    total = n_objects if n_objects else n_held + int(getattr(result, "n_train", 0))
    seconds = float(getattr(result, "seconds", 0.0))
    if before is not None and after is not None:
        line = f"held-out IoU {before:.2f} -> {after:.2f} on {n_held} of your {total} objects, {seconds:.0f} s"
    else:
        line = str(getattr(result, "message", "")).strip() or f"{n_held} of your {total} objects held out, {seconds:.0f} s"
    if getattr(result, "accepted", False):
        return f"{line}: the adapted model is in use (Revert goes back)"
    return f"{line}: no better on the held-out objects, the base model is kept"


class ModelSwap:
    """Which model is in use: the base one or an adapted one (its result kept for saving).

    ``base`` is the predictor the user loaded; ``adapted`` the one in use after :meth:`adopt`
    (None while the base is in use); ``result`` the last accepted ``AdaptResult``.
    """

    def __init__(self) -> None:
        self.base = None
        self.adapted = None
        self.result = None

    def model_loaded(self, predictor) -> None:
        """``predictor`` is now in use; unless it is ours, it becomes the new base (the user
        loaded another model): what was adapted from the old one is dropped."""
        if predictor is self.base or (predictor is not None and predictor is self.adapted):
            return
        self.base, self.adapted, self.result = predictor, None, None

    @property
    def using_adapted(self) -> bool:
        return self.adapted is not None

    def adopt(self, result) -> object | None:
        """The predictor to use after ``result``: its new predictor if accepted, else None (keep)."""
        if not getattr(result, "accepted", False):
            return None
        self.adapted, self.result = result.predictor, result
        return self.adapted

    def revert(self) -> object:
        """Back to the base predictor (returned); the adapted one is no longer in use (its
        result stays, so it can still be saved)."""
        if self.base is None:
            raise RuntimeError("no base model to go back to")
        self.adapted = None
        return self.base

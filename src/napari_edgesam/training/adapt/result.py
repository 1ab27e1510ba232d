"""What an adaptation returns: the guard's decision, the figures, the new predictor, its card."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AdaptResult:
    """The outcome of one adaptation.

    Attributes:
        accepted: the adapted model did not do worse on the held-out objects (mean of box and
            click mIoU), so it is the one to use.
        before / after: ``{"box", "click", "mean", "n"}`` held-out mIoU of the base and of the
            adapted model.
        n_train / n_heldout: objects learnt from / kept for the check.
        seconds: time spent adapting (embedding, steps, measurements).
        message: one line for the user, e.g. "held-out IoU 0.62 -> 0.81 on 4 of your 20
            objects, 48 s".
        predictor: the predictor to use now: a NEW predictor with the adapted decoder when
            accepted (hot swap = use it; revert = keep :attr:`base`), else the base itself.
        card: the model card (plain data, written beside a saved model).
        steps: optimiser steps taken.
        adapted: the adapted predictor even when it was not accepted (for inspection).
        base: the base predictor (unchanged).
    """

    accepted: bool
    before: dict
    after: dict
    n_train: int
    n_heldout: int
    seconds: float
    message: str
    predictor: object
    card: dict = field(default_factory=dict)
    steps: int = 0
    adapted: object = None
    base: object = None


def _source(predictor) -> dict:
    path = getattr(predictor, "source_path", None)
    out = {"name": getattr(predictor, "model_name", None), "file": None if path is None else Path(path).name}
    if path is not None and Path(path).is_file():
        from ...inference.loading.weights import sha256_of

        out["sha256"] = sha256_of(path)
    return out


def build_card(adapter, after: dict, accepted: bool) -> dict:
    """The card of an adaptation (plain JSON data): base model, objects and images (content
    hashes), which parameters moved, time, held-out before/after."""
    from ... import __version__

    data = adapter.data
    return {
        "format": "napari-edgesam-adapted",
        "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "napari_edgesam": __version__,
        "base_model": _source(adapter.base),
        "parameters": adapter.params,
        "n_parameters": int(getattr(adapter, "n_parameters", 0)),
        "objects": len(data.objects),
        "objects_trained": len(getattr(adapter, "train", [])),
        "objects_heldout": len(getattr(adapter, "heldout", [])),
        "images": len(data.image_keys),
        "image_hashes": data.hashes(),
        "steps": adapter.steps,
        "seconds": round(adapter.seconds, 2),
        "lr": adapter.lr,
        "seed": adapter.seed,
        "heldout_before": adapter.before,
        "heldout_after": after,
        "accepted": bool(accepted),
    }

"""The headless loop: :func:`adapt` runs an :class:`~.adapter.Adapter` to the end."""

from __future__ import annotations

from collections.abc import Callable

from .adapter import Adapter
from .data import AdaptData
from .result import AdaptResult


def adapt(predictor, data: AdaptData, *, max_seconds: float = 60.0,
          progress: Callable[[float, float], object] | None = None,
          cancel: Callable[[], bool] | None = None, **kwargs) -> AdaptResult:
    """Adapt ``predictor``'s decoder to ``data``'s objects within ``max_seconds``.

    Args:
        predictor: the base predictor (torch backend); it is not changed.
        data: the planes and committed objects.
        max_seconds: time budget (embedding, steps and the held-out measurements).
        progress: called after every step with ``(fraction done, seconds left)``.
        cancel: polled before every step; True stops the steps early (the result is then
            measured and guarded as usual, with the steps taken so far).
        kwargs: more :class:`Adapter` options (``holdout_fraction``, ``seed``, ``params``,
            ``lr``, ``max_steps`` ...).

    Returns:
        :class:`AdaptResult` (``result.predictor`` is the model to use).
    """
    adapter = Adapter(predictor, data, max_seconds=max_seconds, **kwargs)
    adapter.prepare()
    while not adapter.done:
        if cancel is not None and cancel():
            break
        adapter.step()
        if progress is not None:
            progress(*adapter.progress)
    result = adapter.finish()
    if progress is not None:
        progress(1.0, 0.0)
    return result

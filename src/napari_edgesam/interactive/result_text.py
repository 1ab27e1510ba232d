"""Status texts of the interactive session (plain Python: no Qt, no napari)."""

from __future__ import annotations

from .session import PlaneResult


def describe(result: PlaneResult) -> str:
    """One line about a plane's preview: each object's stability, the candidate shown or
    whether the granularity prior took the whole object (and if not, why), and the points
    ignored (outside every box)."""
    parts = []
    for i, obj in enumerate(result.objects, 1):
        text = f"object {i}: stability {obj.score:.2f}"
        if obj.candidate is not None:
            text += f" (candidate {obj.candidate + 1} of 4)"
        elif obj.prior_box is not None:
            text += " (whole object: granularity prior)"
        if obj.note:
            text += f"; whole object not taken: {obj.note}"
        parts.append(text)
    if result.ignored_points:
        parts.append(f"{result.ignored_points} point(s) outside every box ignored")
    return "; ".join(parts) or "no prompts"

"""Messages for the widgets: one line per error, status labels that wrap and never widen
the dock, and the model a widget uses when the user names none (on this machine, no network)."""

from __future__ import annotations

import logging

from qtpy.QtWidgets import QLabel, QSizePolicy

logger = logging.getLogger(__name__)

#: Longest message shown in a status label (the full text goes to the log).
MAX_CHARS = 600


def one_line(err: BaseException | str) -> str:
    """``err`` as one line: its lines joined with "; ", shortened to :data:`MAX_CHARS`."""
    text = err if isinstance(err, str) else str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    out = "; ".join(lines) or (type(err).__name__ if not isinstance(err, str) else "")
    return out if len(out) <= MAX_CHARS else out[: MAX_CHARS - 1] + "…"


def wrapping(label: QLabel) -> QLabel:
    """Make ``label`` wrap its text and take its width from the layout, never from the text
    (a long path or error without spaces must not widen the dock or the main window)."""
    label.setWordWrap(True)
    policy = label.sizePolicy()
    label.setSizePolicy(QSizePolicy.Policy.Ignored, policy.verticalPolicy())
    label.setMinimumWidth(1)
    return label


def default_model() -> tuple[str | None, str]:
    """``(name, why)``: the model ``load_model("auto")`` would load now without network (a
    downloaded official model, else the shipped one), and why, in one line; ``(None, what to
    do)`` when no model is on this machine."""
    from ..inference.loading.api import choose_model

    try:
        return choose_model(allow_download=False)
    except (RuntimeError, ValueError, OSError) as err:
        logger.info("no model on this machine: %s", err)
        return None, one_line(err)

"""A row of widgets side by side, the one layout helper the dock widgets share."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QWidget


def row(*widgets: QWidget) -> QWidget:
    """``widgets`` left to right in a widget of their own, without margins."""
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    return box

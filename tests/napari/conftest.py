"""Every test in this folder drives a napari viewer or Qt widgets: it is marked ``gui`` here
(select them with ``-m gui``, skip them with ``-m "not gui"``)."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.gui)

"""Where the project keeps downloaded weights and compiled-model caches: one place for every layer."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves the cache (default: the OS cache folder of "napari-edgesam").
CACHE_ENV = "NAPARI_EDGESAM_CACHE"


def cache_dir() -> Path:
    """Weight cache directory: ``$NAPARI_EDGESAM_CACHE`` or the OS cache (not created)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import pooch  # only when no folder is given: pooch is the one place that knows the OS cache

    return Path(pooch.os_cache("napari-edgesam"))

"""Binding the shortcuts of :data:`~napari_edgesam._napari.names.SHORTCUTS` to napari keymaps.

Shortcuts go on the viewer and on each plugin layer (a layer's keymap takes precedence over
the viewer's, napari #7302). The bound callbacks hold the controller weakly, so the viewer's
keymap never keeps a closed widget alive.
"""

from __future__ import annotations

import weakref

from . import names


def _weak_action(method):
    ref = weakref.WeakMethod(method)

    def run(_owner) -> None:
        bound = ref()
        if bound is not None:
            bound()

    run.__name__ = method.__name__  # napari lists it by this name
    return run


class ShortcutBinder:
    """Binds each shortcut to the method of ``target`` named by its ``action``."""

    def __init__(self, target: object) -> None:
        self.target = target
        self._providers: list = []

    def bind(self, provider) -> None:
        """Bind every shortcut on ``provider`` (a viewer or a layer); idempotent."""
        if any(p is provider for p in self._providers):
            return
        for sc in names.SHORTCUTS:
            provider.bind_key(sc.key, _weak_action(getattr(self.target, sc.action)), overwrite=True)
        self._providers.append(provider)

    def unbind_all(self) -> None:
        """Remove the shortcuts from every provider bound so far."""
        for provider in self._providers:
            for sc in names.SHORTCUTS:
                provider.bind_key(sc.key, None)
        self._providers.clear()

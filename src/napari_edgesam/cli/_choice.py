"""The model a command uses when none is named (``--model auto``), announced in one line."""

from __future__ import annotations

import sys


def resolve_model(model: str, backend: str = "auto") -> str:
    """``model``, or for ``"auto"`` the model ``load_model("auto")`` picks (one on this machine
    first, no network), after printing one line to stderr saying which and why."""
    if model != "auto":
        return model
    from ..inference.loading.api import choose_model

    name, why = choose_model(backend, allow_download=True)
    print(f"napari-edgesam: model {why}", file=sys.stderr)
    return name

"""``python -m napari_edgesam ...``: the same as the ``napari-edgesam`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

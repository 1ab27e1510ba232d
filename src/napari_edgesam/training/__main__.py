"""``python -m napari_edgesam.training STEP --config FILE ...`` (also under ``torchrun``)."""

import sys

from ..cli.train import main

if __name__ == "__main__":
    sys.exit(main())

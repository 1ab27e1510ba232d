"""Models shipped inside the package (trained by this project, openly licensed data).

``edgesam-nuclei``: EdgeSAM architecture trained with this project's pipeline on DSB2018 nuclei
(stardist's BSD-3 example) and synthetic nuclei; float16 weights in the official layout, with
its model card (``edgesam_nuclei/MODEL_CARD.md``). It is the offline default model.
"""

from __future__ import annotations

from pathlib import Path

from ..inference import weights

PACKAGED_DIR = Path(__file__).parent

#: name -> (relative weight file, description)
PACKAGED = {
    "edgesam-nuclei": (
        "edgesam_nuclei/edge_sam_nuclei.pth",
        "EdgeSAM trained on fluorescence nuclei (DSB2018 + synthetic), shipped, BSD-3",
    ),
}


def register_packaged_models() -> None:
    """Register the shipped models whose files are installed (idempotent)."""
    for name, (rel, description) in PACKAGED.items():
        path = PACKAGED_DIR / rel
        if name in weights.MODEL_REGISTRY or not path.is_file():
            continue
        wf = weights.WeightFile(filename=path.name, size=path.stat().st_size, local_path=path,
                                licence="BSD-3-Clause (trained by napari-edgesam)")
        weights.register_model(
            weights.ModelSpec(name=name, description=description, files={"pth": wf},
                              licence="BSD-3-Clause (weights trained by napari-edgesam on BSD-3 data)")
        )

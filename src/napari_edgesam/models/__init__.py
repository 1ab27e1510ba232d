"""Models shipped inside the package (trained by this project, openly licensed data).

``edgesam-nuclei``: EdgeSAM architecture trained with this project's pipeline on DSB2018 nuclei
(stardist's BSD-3 example) and synthetic nuclei; float16 weights in the official layout, with
its model card (``edgesam_nuclei/MODEL_CARD.md``). It is the offline default model. Beside the
PyTorch checkpoint it ships as ONNX (``*_encoder.onnx``, ``*_decoder.onnx`` with the extended
interface, ``*.prior.onnx``; float16 storage, float32 compute: ``napari-edgesam export
edgesam-nuclei -o DIR --prior auto --fp16-weights``), so a torch-free install segments offline.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED_DIR = Path(__file__).parent

#: name -> what the registry needs to describe it (files relative to :data:`PACKAGED_DIR`);
#: the registry (``napari_edgesam.inference.loading.weights``) registers those whose files are installed.
PACKAGED: dict[str, dict] = {
    "edgesam-nuclei": {
        "files": {
            "pth": "edgesam_nuclei/edge_sam_nuclei.pth",
            "onnx_encoder": "edgesam_nuclei/edge_sam_nuclei_encoder.onnx",
            "onnx_decoder": "edgesam_nuclei/edge_sam_nuclei_decoder.onnx",
        },
        "description": "EdgeSAM trained on fluorescence nuclei (DSB2018 + synthetic), shipped, BSD-3",
        "file_licence": "BSD-3-Clause (trained by napari-edgesam)",
        "licence": "BSD-3-Clause (weights trained by napari-edgesam on BSD-3 data)",
        # v2 trains the mask path in the loop: refining with the previous logits as mask input
        # wins on held-out nuclei (box +1/+2 points 68.6/68.4 mIoU with it, 63.3/56.2 without;
        # point +2: 63.5 vs 57.4; model card)
        "mask_input_refines": True,
    },
}

"""Models shipped inside the package (trained by this project, openly licensed data).

``edgesam-nuclei``: EdgeSAM architecture trained with this project's pipeline on DSB2018 nuclei
(stardist's BSD-3 example) and synthetic nuclei; float16 weights in the official layout, with
its model card (``edgesam_nuclei/MODEL_CARD.md``). It is the offline default model. Beside the
PyTorch checkpoint it ships as ONNX (``*_encoder.onnx``, ``*_decoder.onnx`` with the extended
interface, ``*.prior.onnx``; float16 storage, float32 compute: ``napari-edgesam export
edgesam-nuclei -o DIR --prior auto --fp16-weights``), so a torch-free install segments offline,
and an int8 encoder (``*_encoder_int8.onnx``) that OpenVINO runs by default because it passed
its accuracy gate (``int8_gate`` below, :mod:`napari_edgesam.export.int8_gate`).
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
            # int8 encoder (7 MB): `napari-edgesam export edgesam-nuclei -o DIR --int8
            # --calibration data/nuclei_v2/train/images`; registered only while its gate below holds
            "onnx_encoder_int8": "edgesam_nuclei/edge_sam_nuclei_encoder_int8.onnx",
        },
        # `napari-edgesam gate edgesam-nuclei --data data/nuclei_v2/heldout --json` (OpenVINO 2026.4,
        # Intel Xeon AVX-512/VNNI): int8 vs the shipped float32-compute encoder, box prompts from
        # the 57 held-out nuclei (stardist's right half), mean mask IoU
        "int8_gate": {"mean_iou": 0.9789, "min_iou": 0.915, "n_objects": 57, "threshold": 0.97,
                      "data": "nuclei_v2 heldout (stardist right half)", "backend": "openvino"},
        "description": "EdgeSAM trained on fluorescence nuclei (DSB2018 + synthetic), shipped, BSD-3",
        "file_licence": "BSD-3-Clause (trained by napari-edgesam)",
        "licence": "BSD-3-Clause (weights trained by napari-edgesam on BSD-3 data)",
        # v2 trains the mask path in the loop: refining with the previous logits as mask input
        # wins on held-out nuclei (box +1/+2 points 68.6/68.4 mIoU with it, 63.3/56.2 without;
        # point +2: 63.5 vs 57.4; model card)
        "mask_input_refines": True,
    },
}

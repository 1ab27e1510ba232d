"""Inference on onnxruntime must work where torch cannot be imported.

The parent test exports ONNX files (needs torch); a subprocess with an import blocker for
torch then runs the public API on them and checks that torch was never imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"import of {name} blocked by the test", name=name)
            return None

    sys.meta_path.insert(0, BlockTorch())
    """
)

PREDICT = textwrap.dedent(
    """
    import json
    import numpy as np

    import napari_edgesam
    from napari_edgesam.inference import api
    from napari_edgesam.inference.backends.onnx_backend import OnnxBackend
    from napari_edgesam.inference.predictor import EdgeSamPredictor

    encoder, decoder, image_file, out_file = sys.argv[1:5]
    image = np.load(image_file)
    predictor = api.load_model(encoder)
    assert isinstance(predictor.backend, OnnxBackend), type(predictor.backend)
    predictor.set_image(image)
    masks, scores, low = predictor.predict(np.float32([[200, 150]]), np.int64([1]))
    direct = EdgeSamPredictor(OnnxBackend(encoder, decoder, num_threads=1))
    direct.set_embedding(predictor.embedding)
    masks_box, _, _ = direct.predict(box=np.float32([60, 45, 260, 205]))
    lazily = napari_edgesam.load_model(encoder, backend="onnxruntime")
    result = {
        "masks_shape": list(masks.shape), "masks_box_shape": list(masks_box.shape),
        "scores": scores.tolist(), "low_res_max": float(np.abs(low).max()),
        "same_backend_kind": type(lazily.backend).__name__,
        "torch_loaded": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
        "napari_loaded": "napari" in sys.modules,
    }
    with open(out_file, "w") as f:
        json.dump(result, f)
    """
)

CLI_HELP = textwrap.dedent(
    """
    from napari_edgesam.cli import build_parser

    build_parser()
    assert "torch" not in sys.modules, "building the CLI parser imported torch"
    """
)


def _run_blocked(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + script, *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory, golden_state_dict):
    pytest.importorskip("torch")
    from napari_edgesam.export.onnx_export import export_onnx
    from napari_edgesam.model import build_edge_sam

    out = tmp_path_factory.mktemp("no_torch")
    return export_onnx(build_edge_sam(golden_state_dict), out, "golden")


def test_blocker_blocks_torch(tmp_path):
    proc = _run_blocked("import torch\n", cwd=tmp_path)
    assert proc.returncode != 0
    assert "blocked by the test" in proc.stderr


def test_onnx_inference_without_torch(tmp_path, exported, edge_golden):
    encoder, decoder = exported
    image_file, out_file = tmp_path / "image.npy", tmp_path / "result.json"
    np.save(image_file, edge_golden["image"])
    proc = _run_blocked(PREDICT, str(encoder), str(decoder), str(image_file), str(out_file), cwd=tmp_path)
    assert proc.returncode == 0, f"torch-free inference failed:\n{proc.stderr}"
    result = json.loads(out_file.read_text())
    assert result["torch_loaded"] == []
    assert result["napari_loaded"] is False
    h, w = edge_golden["image"].shape[:2]
    assert result["masks_shape"] == [1, h, w] and result["masks_box_shape"] == [1, h, w]
    # IoU-head score of the golden point1 case: the extended decoder was used end to end.
    np.testing.assert_allclose(result["scores"], edge_golden["point1_n1_scores"], rtol=0, atol=1e-4)
    assert result["same_backend_kind"] == "OnnxBackend"


def test_cli_parser_without_torch(tmp_path):
    proc = _run_blocked(CLI_HELP, cwd=tmp_path)
    assert proc.returncode == 0, f"a CLI module imports torch at import time:\n{proc.stderr}"

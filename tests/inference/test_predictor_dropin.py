"""``EdgeSamPredictor(model)`` with an ``EdgeSam`` module works like ``SamPredictor(sam)``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_edgesam.inference.core.predictor import EdgeSamPredictor

torch = pytest.importorskip("torch")


def test_a_module_is_wrapped_in_the_default_torch_backend(golden_state_dict, golden_predictor, edge_golden):
    from napari_edgesam.inference.backends.torch_backend import TorchBackend
    from napari_edgesam.model import build_edge_sam

    model = build_edge_sam(golden_state_dict)
    predictor = EdgeSamPredictor(model, device="cpu")
    assert isinstance(predictor.backend, TorchBackend) and predictor.backend.model is model
    assert not model.training
    predictor.set_image(edge_golden["image"])
    point, label = np.float32([[200, 150]]), np.int64([1])
    masks, scores, low = predictor.predict(point, label)
    ref = EdgeSamPredictor(golden_predictor.backend)  # the backend load_model builds, same weights
    ref.set_image(edge_golden["image"])
    ref_masks, ref_scores, ref_low = ref.predict(point, label)
    np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-4)
    # the answer is the golden one: the module really is the model that is used
    np.testing.assert_allclose(scores, edge_golden["point1_n1_scores"], rtol=0, atol=1e-3)


def test_anything_else_is_a_clear_type_error():
    with pytest.raises(TypeError, match="EdgeSam model .*got the torch module Linear"):
        EdgeSamPredictor(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="got str.*load_model"):
        EdgeSamPredictor("edge_sam.pth")
    with pytest.raises(TypeError, match="got NoneType"):
        EdgeSamPredictor(None)

"""A deterministic stand-in for the EdgeSAM decoder, for the 3D propagation tests."""

from __future__ import annotations

import numpy as np

from napari_edgesam.inference.core.predictor import Prediction
from napari_edgesam.inference.volume.propagation import mask_to_low_res_logits


class FakePredictor:
    """'Segments' a known label volume: on the slice of the given embedding it returns the
    labelled region that contains the prompt point or, failing that, overlaps the prompt box
    most; empty if the box touches none. Stability comes from ``stability(z, label)``. Every
    call is logged. Stateless like ``EdgeSamPredictor.decode``: it has no ``set_embedding``,
    so propagation cannot rely on a current image."""

    def __init__(self, truth, stability=None):
        self.truth = truth
        self.stability = stability or (lambda z, label: 0.95)
        self.decodes: list[tuple[int, int]] = []  # (z, batch size), one per decoder call
        self.mask_inputs: list[tuple[int, np.ndarray]] = []

    @staticmethod
    def z_of(emb):
        return int(emb.features.ravel()[0])

    def _segment(self, emb, point, box, mask_input):
        z = self.z_of(emb)
        labels = self.truth[z]
        if mask_input is not None:
            self.mask_inputs.append((z, np.asarray(mask_input).reshape(256, 256)))
        x0, y0, x1, y1 = np.asarray(box).round().astype(int)
        px, py = np.asarray(point).reshape(-1, 2)[0].round().astype(int)
        label = labels[py, px]
        if label == 0:
            ids, counts = np.unique(labels[y0 : y1 + 1, x0 : x1 + 1], return_counts=True)
            keep = ids > 0
            label = ids[keep][np.argmax(counts[keep])] if keep.any() else 0
        if label == 0:
            return np.zeros(labels.shape, bool), 0.0
        return labels == label, float(self.stability(z, int(label)))

    def _outputs(self, emb, mask, score):
        low = mask_to_low_res_logits(mask, emb.input_size, mask.shape)
        return mask[None], np.float32([score]), low[None]

    def decode(self, emb, point_coords=None, point_labels=None, box=None, mask_input=None,
               num_multimask_outputs=1, return_logits=False, use_stability_score=False):
        assert num_multimask_outputs == 1 and use_stability_score and box is not None
        assert np.all(point_labels == 1)
        self.decodes.append((self.z_of(emb), 1))
        return self._outputs(emb, *self._segment(emb, point_coords, box, mask_input))

    def decode_batch(self, emb, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                     num_multimask_outputs=1, return_logits=False, use_stability_score=False, upscale=True):
        assert num_multimask_outputs == 1 and use_stability_score
        self.decodes.append((self.z_of(emb), len(boxes)))
        outs = [
            self._outputs(emb, *self._segment(emb, p, b, None if mask_input is None else mask_input[i]))
            for i, (p, b) in enumerate(zip(point_coords, boxes, strict=True))
        ]
        return Prediction(np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs]), np.stack([o[2] for o in outs]))

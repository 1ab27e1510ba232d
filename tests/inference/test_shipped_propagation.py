"""3D propagation with the shipped model on the plugin's own 3D sample ("nuclei 3D").

Every nucleus is seeded with its true mask on its largest slice and propagated up and down the
stack with the default settings (whole-slice embeddings, previous logits as mask input, holes
filled, only the piece under the prompt point kept, each mask ending at its prompt box, default
stop rules, objects exclusive on each slice). Measured with edgesam-nuclei v2 (``OMP_NUM_THREADS=1``):
mean 3D IoU 0.868, 18 of 20 nuclei >= 0.8 (0.841 and 17 of 20 when objects may share pixels, 0.803
and 16 of 20 before masks ended at the box carried from the previous slice, 0.770 and 14 of 20
keeping every piece too; ``python benchmarks/bench_autozoom_3d.py --propagate --no-autozoom``);
v1.1 reached 0.29.
The bounds sit below the measured values so that another CPU's kernels cannot fail them.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from _helpers import one_thread  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_propagation_follows_the_nuclei_of_the_3d_sample():
    from napari_edgesam.datasets import synthetic_nuclei_3d
    from napari_edgesam.inference.loading.api import load_model
    from napari_edgesam.inference.volume.propagation import propagate_objects

    image, labels = synthetic_nuclei_3d(seed=2024, shape=(24, 192, 192), n_nuclei=20)
    predictor = load_model("edgesam-nuclei", backend="torch", device="cpu", allow_download=False)
    ids = [int(i) for i in np.unique(labels)[1:]]
    seeds = {}
    for i in ids:
        z = int(np.argmax((labels == i).sum((1, 2))))
        seeds[i] = {z: labels[z] == i}
    embeddings: dict = {}
    results = propagate_objects(predictor, lambda z: embeddings.setdefault(z, predictor.encode(image[z])),
                                seeds, image.shape[0])
    scores = []
    for i in ids:
        pred = np.zeros(labels.shape, bool)
        for z, mask in results[i].masks.items():
            pred[z] = mask
        truth = labels == i
        scores.append((pred & truth).sum() / (pred | truth).sum())
    scores = np.array(scores)
    print(f"3D IoU mean {scores.mean():.3f}, >= 0.8: {(scores >= 0.8).sum()}/{len(scores)}")
    assert scores.mean() >= 0.84, scores
    assert (scores >= 0.8).sum() >= 17, scores
    # objects followed together do not share pixels
    for z in range(image.shape[0]):
        owners = [results[i].masks[z] for i in ids if z in results[i].masks]
        if len(owners) > 1:
            assert np.stack(owners).sum(0).max() <= 1, z
    assert not predictor.is_image_set  # propagation never sets the predictor's image

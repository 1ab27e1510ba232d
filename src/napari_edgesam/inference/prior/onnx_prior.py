"""An exported prior (``*.prior.onnx``: image -> boxes, optionally the embedding) on onnxruntime
or OpenVINO, for installs without torch. Its proposals cost an encoder pass of their own unless the file was
exported with the predictor's own encoder and ``use_embedding`` is on.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from .rule import select_proposals

#: ONNX metadata key holding the head's decoding settings (JSON).
ONNX_META_KEY = "napari_edgesam_box_head"


class OnnxBoxPrior:
    """An exported prior (``image`` -> ``boxes``, ``scores``, optionally ``image_embeddings``)
    run with onnxruntime or OpenVINO; proposals are selected in numpy with the head's settings.

    Args:
        path: the ``.onnx`` file (:func:`~napari_edgesam.export.box_head_onnx.export_box_head`).
        use_embedding: take the predictor's embedding from this file's ``image_embeddings``
            output (one encoder pass for both). Only correct when the file was exported from the
            predictor's own model, so it is off unless asked for.
        runtime: ``"onnxruntime"`` or ``"openvino"`` (``load_prior`` picks the predictor's).
        cache: OpenVINO only: keep the compiled model in the project cache.
    """

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", num_threads: int | None = None,
                 use_embedding: bool = False, runtime: str = "onnxruntime", cache: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"prior ONNX file not found: {self.path}")
        if runtime not in ("onnxruntime", "openvino"):
            raise ValueError(f"runtime must be 'onnxruntime' or 'openvino', got {runtime!r}")
        self.name = runtime
        if runtime == "openvino":
            inputs, outputs, meta = self._open_openvino(device, num_threads, cache)
        else:
            inputs, outputs, meta = self._open_onnxruntime(device, num_threads)
        if inputs != ["image"] or not {"boxes", "scores"} <= set(outputs):
            raise ValueError(f"{self.path} is not an exported prior (image -> boxes, scores); inputs {inputs}, outputs {outputs}")
        self.has_embedding = "image_embeddings" in outputs
        if use_embedding and not self.has_embedding:
            raise ValueError(f"{self.path} has no image_embeddings output (export it with with_embedding=True)")
        self.use_embedding = use_embedding
        self.settings = json.loads(meta) if meta else {}
        self.meta = self.settings

    def _bad_file(self, err: Exception) -> ValueError:
        detail = " ".join(str(err).split())[:200]
        return ValueError(f"prior {self.path} ({self.path.stat().st_size:,} bytes) could not be loaded as an "
                          f"ONNX file (damaged, truncated or not ONNX: {detail}); export it again with "
                          "'napari-edgesam export MODEL -o DIR --prior auto'")

    def _open_openvino(self, device: str, num_threads: int | None, cache: bool):
        from ..backends.openvino_backend import ov_core

        if device not in ("auto", "cpu"):
            raise ValueError(f"the openvino prior runs on the CPU: use device='cpu', got {device!r}")
        core, config = ov_core(num_threads, cache)
        try:
            model = core.read_model(str(self.path))
            meta = (model.get_rt_info(["framework", ONNX_META_KEY]).astype(str)
                    if model.has_rt_info(["framework", ONNX_META_KEY]) else None)
            self._compiled = core.compile_model(str(self.path), "CPU", config)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises its own types for a bad file
            raise self._bad_file(err) from None
        self._request, self._lock = self._compiled.create_infer_request(), threading.Lock()
        inputs = [next(iter(sorted(p.get_names()))) for p in self._compiled.inputs]
        outputs = [n for p in self._compiled.outputs for n in p.get_names()]
        self.session = None
        return inputs, outputs, meta

    def _open_onnxruntime(self, device: str, num_threads: int | None):
        import onnxruntime as ort

        from ..backends.onnx_backend import _providers_for

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        providers = _providers_for(device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise self._bad_file(err) from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        return inputs, outputs, self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)

    def _run(self, names: list[str], image: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(image, np.float32)
        if self.session is not None:
            return self.session.run(names, {"image": x})
        with self._lock:  # one infer request: one call at a time
            out = self._request.infer({"image": x})
            return [np.array(out[self._compiled.output(n)], np.float32) for n in names]

    def _select(self, boxes, scores, input_size):
        s = self.settings
        return select_proposals(boxes[0], scores[0], input_size, score_thresh=s.get("score_thresh", 0.05),
                                nms_thresh=s.get("nms_thresh", 0.5), pre_nms_top_k=s.get("pre_nms_top_k", 1000),
                                max_detections=s.get("max_detections", 300))

    def propose(self, image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = self._run(["boxes", "scores"], image)
        return self._select(boxes, scores, input_size)

    def embed_and_propose(self, image: np.ndarray, input_size: tuple[int, int]):
        if not self.has_embedding:
            raise RuntimeError(f"{self.path} has no image_embeddings output: use propose() and the backend's encoder")
        emb, boxes, scores = self._run(["image_embeddings", "boxes", "scores"], image)
        return emb, *self._select(boxes, scores, input_size)

    def shares_encoder_with(self, backend) -> bool:
        """Whether the predictor may take the embedding from this file (``use_embedding``)."""
        return self.use_embedding

"""Store an ONNX model's float32 weights as float16, computing in float32.

Each large float32 initializer ``W`` becomes a float16 initializer ``W__fp16`` followed by a
``Cast(to=float)`` node that produces ``W``: the file is about half the size, the graph and its
inputs/outputs are unchanged, and onnxruntime folds the casts once when it loads the model, so
inference runs the same float32 kernels as before. The only change is the rounding of each
weight to float16 (relative error <= 2**-11), which is what the shipped PyTorch checkpoints
already store. Weights whose float16 value would overflow stay float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Initializers with fewer elements stay float32 (biases of a few channels save nothing).
MIN_ELEMENTS = 256
_SUFFIX = "__fp16"


def store_weights_fp16(src: str | os.PathLike, dst: str | os.PathLike | None = None,
                       min_elements: int = MIN_ELEMENTS) -> Path:
    """Rewrite ``src`` (in place, or into ``dst``) with float16 weight storage; returns the path.

    ``ValueError`` if the model keeps its weights in external data files or lists them as graph
    inputs (both are left as they are by the exporters this project uses).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .._atomic import atomic_write

    src = Path(src)
    dst = Path(dst) if dst is not None else src
    model = onnx.load(os.fspath(src), load_external_data=False)
    graph = model.graph
    inputs = {i.name for i in graph.input}
    initializers, casts = [], []
    for init in graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            raise ValueError(f"{src} keeps weights in external data: export with external_data=False")
        size = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.data_type != TensorProto.FLOAT or size < min_elements or init.name.endswith(_SUFFIX):
            initializers.append(init)
            continue
        if init.name in inputs:
            raise ValueError(f"{src} lists weight {init.name!r} as a graph input; re-export with a newer opset")
        weights = numpy_helper.to_array(init)
        half = weights.astype(np.float16)
        if not np.isfinite(half).all():
            initializers.append(init)
            continue
        initializers.append(numpy_helper.from_array(half, init.name + _SUFFIX))
        casts.append(helper.make_node("Cast", [init.name + _SUFFIX], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__cast"))
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return atomic_write(dst, lambda tmp: onnx.save(model, os.fspath(tmp)))

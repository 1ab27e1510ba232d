"""All torch inference runs on one thread, whoever calls it (see backends/compute_thread.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from napari_edgesam.inference.backends import compute_thread


def test_calls_from_many_threads_run_on_one_thread():
    seen = []
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: compute_thread.run(lambda: (seen.append(threading.get_ident()), i * i)[1]),
                                range(12)))
    assert results == [i * i for i in range(12)]
    assert len(set(seen)) == 1 and threading.main_thread().ident not in seen


def test_nested_calls_run_inline_and_errors_propagate():
    def outer():
        assert compute_thread.on_compute_thread()
        return compute_thread.run(lambda: threading.get_ident()) == threading.get_ident()

    assert compute_thread.run(outer) is True
    assert not compute_thread.on_compute_thread()
    with pytest.raises(ZeroDivisionError):
        compute_thread.run(lambda: 1 / 0)


def test_disabled_runs_on_the_calling_thread(monkeypatch):
    monkeypatch.setattr(compute_thread, "ENABLED", False)
    assert compute_thread.run(threading.get_ident) == threading.get_ident()


def test_backend_and_postprocessing_use_the_compute_thread(golden_predictor, make_golden_image, monkeypatch):
    """The encoder, the decoder and the mask upscaling all run on the compute thread, also
    when the GUI's workers call them from their own threads."""
    torch = pytest.importorskip("torch")
    threads = []
    real_matmul = torch.matmul

    def spy(*args, **kwargs):
        threads.append(threading.get_ident())
        return real_matmul(*args, **kwargs)

    backend = golden_predictor.backend
    for name in ("_encode", "_decode"):
        real = getattr(backend, name)
        monkeypatch.setattr(backend, name, lambda *a, _real=real, **k: (threads.append(threading.get_ident()), _real(*a, **k))[1])
    monkeypatch.setattr(torch, "matmul", spy)
    image = make_golden_image()
    with ThreadPoolExecutor(2) as pool:
        emb = pool.submit(golden_predictor.encode, image).result()
        masks, _, _ = pool.submit(golden_predictor.decode, emb, np.array([[20.0, 30.0]]), np.array([1])).result()
    assert masks.shape[-2:] == emb.original_size
    assert len(threads) >= 4 and len(set(threads)) == 1 and threading.get_ident() not in threads

"""Interactive latency of the napari plugin, measured through a real viewer.

Prints a table (latencies run from the prompt layer's data event, i.e. after napari has
added the point or box, to the preview layer holding the new mask):
  - click-to-mask with a cached embedding (decoder, mask upscaling, layer update), and the
    plugin's own share of it (everything but the decoder job);
  - first mask on a new slice: point on a slice that is not embedded yet -> preview
    (encoder + decoder), and on a neighbour that prefetch already embedded;
  - 3D propagation speed in slices/s, with embeddings computed on the way (cold) and
    precomputed (warm).

The default model has the golden weights (``tests/data/golden``: the official EdgeSAM
architecture and cost with deterministic weights); ``--model`` takes a registered name or a
.pth/.onnx file. Needs a display: run under ``xvfb-run`` on a headless machine::

    xvfb-run -a python benchmarks/bench_interactive.py --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"click-to-mask (point)": 0.100, "click-to-mask (box)": 0.100, "first mask on a new slice": 0.600}


def golden_predictor(device: str, threads: int | None):
    """EdgeSAM with the golden weights, built like the official checkpoint would be."""
    import torch

    from napari_edgesam.inference.backends import compute_thread
    from napari_edgesam.inference.backends.torch_backend import TorchBackend
    from napari_edgesam.inference.core.predictor import EdgeSamPredictor
    from napari_edgesam.model import build_edge_sam

    golden = ROOT / "tests" / "data" / "golden"
    spec = importlib.util.spec_from_file_location("golden_weights", golden / "golden_weights.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    layout = json.loads((golden / "edge_sam_state_dict.json").read_text())

    def build() -> TorchBackend:  # on the compute thread, like load_model: the main thread never runs torch
        state = recipe.fill_state_dict({k: v["shape"] for k, v in layout.items()},
                                       {k: getattr(torch, v["dtype"]) for k, v in layout.items()})
        return TorchBackend(build_edge_sam(state), device, num_threads=threads)

    return EdgeSamPredictor(compute_thread.run(build), "golden")


def wait(app, condition, timeout: float = 600.0) -> float:
    """Run the Qt event loop until ``condition()`` holds. It sleeps until events arrive, as
    napari's own loop does: a polling loop would steal CPU from the model (on 2 cores it made
    the decoder's share of a click 3x slower)."""
    from qtpy.QtCore import QEventLoop, QTimer

    timer = QTimer()
    timer.start(20)  # a wake-up now and then, to check the timeout
    start = time.perf_counter()
    try:
        while not condition():
            if time.perf_counter() - start > timeout:
                raise TimeoutError("the plugin did not answer in time")
            app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
    finally:
        timer.stop()
    return time.perf_counter() - start


class Bench:
    def __init__(self, predictor, size: int, slices: int, show: bool = True) -> None:
        from qtpy.QtWidgets import QApplication

        import napari
        from napari_edgesam._napari.interactive_widget import InteractiveWidget

        self.viewer = napari.Viewer(show=show)
        self.app = QApplication.instance()
        self.widget = InteractiveWidget(self.viewer)
        self.viewer.window.add_dock_widget(self.widget)
        self.c = self.widget.controller
        self.predictor = predictor
        self.size, self.slices = size, slices
        self.results: list[tuple[str, list[float], str]] = []
        self._updates: list = []
        self._watched: list = []
        self._event_time: float | None = None
        self.c.preview_updated.connect(self._updates.append)

    def _watch(self, layer) -> None:
        """Time-stamp the data events of a prompt layer (before the plugin sees them)."""
        if layer not in self._watched:
            layer.events.data.connect(self._stamp, position="first")
            self._watched.append(layer)

    def _stamp(self, event) -> None:
        if str(event.action).lower().rsplit(".", 1)[-1] in ("added", "changed", "removed"):
            self._event_time = time.perf_counter()

    def _prompt_and_wait(self, add) -> float:
        """Seconds from the prompt layer's data event to the updated preview."""
        self._updates.clear()
        self._event_time = None
        add()
        wait(self.app, lambda: bool(self._updates))
        return time.perf_counter() - self._event_time

    def _use_image(self, data, name):
        from napari_edgesam._napari import layers as L

        for layer in list(self.viewer.layers):
            self.viewer.layers.remove(layer)
        self.viewer.add_image(data, name=name)
        self.widget.set_predictor(self.predictor)
        return L

    def clicks(self, repeats: int) -> None:
        from napari_edgesam._napari.samples import make_nuclei_2d

        L = self._use_image(make_nuclei_2d((self.size, self.size), count=60), "nuclei")
        c = self.c
        wait(self.app, lambda: c.embeddings.lookup(c.current_view()) is not None)
        points, boxes = c.prompt_layers()
        self._watch(points)
        self._watch(boxes)
        rng = np.random.default_rng(0)
        decode_job, jobs = c._decode._fn, []

        def timed_job(*args):  # the decoder's share of each click, measured in the worker
            start = time.perf_counter()
            out = decode_job(*args)
            jobs.append(time.perf_counter() - start)
            return out

        c._decode._fn = timed_job
        overhead = []
        for kind in ("point", "box"):
            times = []
            for i in range(repeats + 2):
                x, y = rng.uniform(0.2, 0.8, 2) * self.size
                if kind == "point":
                    t = self._prompt_and_wait(lambda x=x, y=y: L.add_point(points, c.current_plane(), (x, y)))
                else:
                    t = self._prompt_and_wait(lambda x=x, y=y: L.add_box(boxes, c.current_plane(), (x - 20, y - 15, x + 20, y + 15)))
                c.clear()
                if i >= 2:  # the first two warm up torch
                    times.append(t)
                    overhead.append(t - jobs[-1])
            self.results.append((f"click-to-mask ({kind})", times, f"{self.size}x{self.size}, cached embedding"))
        c._decode._fn = decode_job
        self.results.append(("plugin overhead per click", overhead,
                             "click-to-mask minus the decoder job (threads, preview layer update)"))

    def model_only(self, repeats: int) -> None:
        """The predictor alone (no napari), as the floor of the numbers above."""
        from napari_edgesam._napari.samples import make_nuclei_2d

        p = self.predictor
        image = make_nuclei_2d((self.size, self.size), count=60)
        encode = []
        for _ in range(3):
            start = time.perf_counter()
            emb = p.encode(image)
            encode.append(time.perf_counter() - start)
        emb = emb.astype(np.float16)
        decode = []
        for i in range(repeats + 2):
            start = time.perf_counter()
            p.segment(np.array([[self.size / 2 + i, self.size / 2]]), np.array([1]), embedding=emb)
            decode.append(time.perf_counter() - start)
        self.results.append(("model only: encoder", encode, "predictor.encode, no napari"))
        self.results.append(("model only: segment (point)", decode[2:], "predictor.segment (4 masks upscaled), no napari"))

    def new_slices(self, repeats: int) -> None:
        from napari_edgesam._napari import embedding
        from napari_edgesam._napari.samples import make_nuclei_3d

        stack = make_nuclei_3d((self.slices, self.size, self.size), count=40)
        L = self._use_image(stack, "stack")
        c = self.c
        wait(self.app, lambda: c.embeddings.lookup(c.current_view()) is not None)
        points, _ = c.prompt_layers()
        self._watch(points)
        c.embeddings.prefetch_radius = 0
        cold, warm = [], []
        try:
            for z in np.linspace(1, self.slices - 2, repeats + 1).astype(int)[1:]:
                self.viewer.dims.set_current_step(0, int(z))
                cold.append(self._prompt_and_wait(lambda: L.add_point(points, c.current_plane(), (self.size / 2, self.size / 2))))
                c.clear()
        finally:
            c.embeddings.prefetch_radius = embedding.PREFETCH_RADIUS
        for z in range(2, min(self.slices - 1, 2 + repeats)):
            self.viewer.dims.set_current_step(0, z - 1)
            wait(self.app, lambda: c.embeddings.lookup(c.current_view()) is not None)
            view = c.current_view()
            wait(self.app, lambda view=view, z=z: c.embeddings.key(view, view.plane.at(0, z)) in c.embeddings.cache)
            self.viewer.dims.set_current_step(0, z)
            warm.append(self._prompt_and_wait(lambda: L.add_point(points, c.current_plane(), (self.size / 2, self.size / 2))))
            c.clear()
        self.results.append(("first mask on a new slice", cold, "encoder + decoder, slice not embedded"))
        self.results.append(("mask on a prefetched slice", warm, "neighbour embedded in the background"))

    def propagation(self) -> None:
        from napari_edgesam._napari.samples import make_nuclei_3d

        stack = make_nuclei_3d((self.slices, self.size, self.size), count=40)
        L = self._use_image(stack, "stack")
        c = self.c
        self.viewer.dims.set_current_step(0, self.slices // 2)
        wait(self.app, lambda: c.embeddings.lookup(c.current_view()) is not None)
        _, boxes = c.prompt_layers()
        self._watch(boxes)
        s = self.size
        self._prompt_and_wait(lambda: L.add_box(boxes, c.current_plane(), (0.4 * s, 0.4 * s, 0.6 * s, 0.6 * s)))
        c.propagation_options = {"min_stability": 0.0, "min_overlap": 0.0, "min_area": 1}  # walk every slice
        for label in ("cold", "warm"):
            if label == "warm":
                done = []
                c.embeddings.precompute_finished.connect(done.append)
                c.precompute()
                wait(self.app, lambda done=done: bool(done))
            finished = []
            c.propagated.connect(finished.append)
            start = time.perf_counter()
            c.propagate("both")
            wait(self.app, lambda finished=finished: bool(finished))
            elapsed = time.perf_counter() - start
            c.propagated.disconnect(finished.append)
            visited = sum(len(r.masks) - len(r.seeded) for r in finished[0].values())
            self.results.append((f"propagation ({label})", [visited / elapsed],
                                 f"{visited} slices in {elapsed:.2f} s ({'embeddings computed on the way' if label == 'cold' else 'precomputed'})"))

    def close(self) -> None:
        from napari_edgesam._napari.workers import wait_for_workers

        self.c.close()
        wait_for_workers()
        self.viewer.close()


def report(results, predictor, args) -> str:
    backend = predictor.backend
    device = getattr(backend, "device", "?")
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = "-"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"model {predictor.model_name} ({backend.name} on {device}), {os.cpu_count()} CPUs, "
        f"torch threads {threads}, load average {load:.1f}, {platform.processor() or platform.machine()}, "
        f"viewer {'hidden (nothing drawn)' if args.hidden else 'shown'}",
        "",
        f"| {'measure':<28} | {'median':>9} | {'p90':>9} | {'n':>3} | {'target':>8} | notes",
        f"|{'-' * 30}|{'-' * 11}|{'-' * 11}|{'-' * 5}|{'-' * 10}|------",
    ]
    for name, values, notes in results:
        if name.startswith("propagation"):
            lines.append(f"| {name:<28} | {values[0]:>6.1f}/s | {'':>9} | {1:>3} | {'':>8} | {notes}")
            continue
        med = statistics.median(values)
        p90 = float(np.percentile(values, 90))
        target = TARGETS.get(name)
        mark = "" if target is None else (f"{target * 1000:.0f} ms " + ("ok" if med <= target else "MISS"))
        lines.append(f"| {name:<28} | {med * 1000:>6.0f} ms | {p90 * 1000:>6.0f} ms | {len(values):>3} | {mark:>8} | {notes}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="registered name or .pth/.onnx (default: golden weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--slices", type=int, default=16, help="slices of the 3D stack")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--hidden", action="store_true",
                        help="do not show the viewer: nothing is drawn, which isolates the plugin from the "
                             "rendering (under xvfb napari draws with software OpenGL on the same CPU cores)")
    parser.add_argument("--quick", action="store_true", help="8 repeats and 6 slices (a few minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.slices = min(args.repeats, 8), min(args.slices, 6)

    if args.model:
        from napari_edgesam.inference.loading.api import load_model

        predictor = load_model(args.model, device=args.device, **({"num_threads": args.threads} if args.threads else {}))
    else:
        predictor = golden_predictor(args.device, args.threads)
    bench = Bench(predictor, args.size, args.slices, show=not args.hidden)
    try:
        bench.model_only(args.repeats)
        bench.clicks(args.repeats)
        bench.new_slices(max(3, args.repeats // 4))
        bench.propagation()
    finally:
        bench.close()
    print(report(bench.results, predictor, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

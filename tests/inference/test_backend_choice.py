"""``backend="auto"``: the rule, a measurement cached per CPU, and what every entry point gets."""

from __future__ import annotations

import json

import pytest

from napari_edgesam.inference.loading import api, backend_choice, weights

NUCLEI = weights.MODEL_REGISTRY["edgesam-nuclei"]


@pytest.fixture()
def installed(monkeypatch):
    """Pretend only these backends are installed (and nothing measured)."""
    def set_(*names):
        monkeypatch.setattr(backend_choice, "installed_backends", lambda: [b for b in backend_choice.RULE_ORDER
                                                                            if b in names])
    monkeypatch.setattr(backend_choice, "load_timings", lambda: {})
    monkeypatch.setattr(backend_choice, "torch_gpu_available", lambda: False)
    return set_


@pytest.mark.parametrize(("names", "expected"), [
    (("torch", "onnxruntime", "openvino"), "openvino"),
    (("torch", "onnxruntime"), "torch"),
    (("onnxruntime",), "onnxruntime"),
    (("onnxruntime", "openvino"), "openvino"),
])
def test_rule_for_a_model_with_both_formats(installed, names, expected):
    installed(*names)
    backend, why = api.choose_backend(NUCLEI)
    assert backend == expected
    assert ("rule" in why or backend == "onnxruntime") and "\n" not in why


def test_rule_respects_the_files_a_model_has(installed):
    installed("torch", "onnxruntime", "openvino")
    pth_only = weights.ModelSpec("p", "", {"pth": NUCLEI.files["pth"]})
    onnx_only = weights.ModelSpec("o", "", {k: NUCLEI.files[k] for k in ("onnx_encoder", "onnx_decoder")})
    assert api.choose_backend(pth_only)[0] == "torch"
    assert api.choose_backend(onnx_only)[0] == "openvino"
    installed("onnxruntime")
    with pytest.raises(ValueError, match="needs PyTorch"):
        api.choose_backend(pth_only)
    assert api.choose_backend(onnx_only)[0] == "onnxruntime"
    # explicit choices are kept
    installed("torch", "onnxruntime", "openvino")
    assert api.choose_backend(NUCLEI, "onnxruntime") == ("onnxruntime", "asked for")


def test_measured_timings_beat_the_rule():
    fast_torch = {"torch": {"encoder_ms": 100, "decoder_ms": 10}, "openvino": {"encoder_ms": 120, "decoder_ms": 12},
                  "onnxruntime": {"encoder_ms": 90, "decoder_ms": 30}}
    backend, why = backend_choice.choose(["torch", "onnxruntime", "openvino"], fast_torch)
    # costs: torch 100 + 10 x 10 = 200, openvino 240, onnxruntime 390
    assert backend == "torch" and "measured" in why and "openvino 240 ms" in why
    # only candidates count: a faster backend that cannot run the model is not picked
    assert backend_choice.choose(["onnxruntime", "openvino"], fast_torch)[0] == "openvino"
    # broken or missing entries fall back to the rule
    assert backend_choice.choose(["torch", "openvino"], {"torch": {"encoder_ms": "x"}})[0] == "openvino"
    assert backend_choice.choose(["torch", "openvino"], {})[0] == "openvino"
    with pytest.raises(ValueError, match="no installed backend"):
        backend_choice.choose([], {})


def test_timings_are_cached_per_cpu_and_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE", str(tmp_path))
    assert backend_choice.load_timings() == {}
    timings = {"onnxruntime": {"encoder_ms": 50.0, "decoder_ms": 5.0}}
    path = backend_choice.save_timings(timings)
    assert path.parent == tmp_path and backend_choice.load_timings() == timings
    key = backend_choice.timing_key()
    assert backend_choice.cpu_name() in key and "onnxruntime=" in key
    assert json.loads(path.read_text())[key]["timings"] == timings
    # another CPU (or another version of a backend) does not see this measurement
    monkeypatch.setattr(backend_choice, "cpu_name", lambda: "Some Other CPU")
    assert backend_choice.load_timings() == {}
    path.write_text("{ not json")
    assert backend_choice.load_timings() == {}  # a damaged file is ignored


def test_measured_choice_reaches_load_model_and_info(tmp_path, monkeypatch, capsys):
    pytest.importorskip("openvino")
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE", str(tmp_path))
    monkeypatch.setattr(backend_choice, "torch_gpu_available", lambda: False)
    backend_choice.save_timings({"onnxruntime": {"encoder_ms": 1.0, "decoder_ms": 0.1},
                                 "openvino": {"encoder_ms": 500.0, "decoder_ms": 50.0}})
    assert api.choose_backend(NUCLEI)[0] == "onnxruntime"
    predictor = api.load_model("edgesam-nuclei", num_threads=1)
    assert predictor.backend.name == "onnxruntime"
    from napari_edgesam.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["auto_backend"].startswith("onnxruntime (fastest measured on this CPU")


def test_onnx_files_run_on_the_auto_onnx_backend(installed):
    installed("torch", "onnxruntime", "openvino")
    assert api.auto_onnx_backend()[0] == "openvino"
    installed("torch", "onnxruntime")
    assert api.auto_onnx_backend()[0] == "onnxruntime"


def test_a_gpu_goes_to_torch(installed, monkeypatch):
    installed("torch", "onnxruntime", "openvino")
    assert api.choose_backend(NUCLEI, device="cuda") == ("torch", "device 'cuda' asked for: torch runs on it")
    assert api.choose_backend(NUCLEI, device="cpu")[0] == "openvino"
    monkeypatch.setattr(backend_choice, "torch_gpu_available", lambda: True)
    assert api.choose_backend(NUCLEI) == ("torch", "torch sees a GPU: it runs there")
    assert api.choose_backend(NUCLEI, device="cpu")[0] == "openvino"
    installed("onnxruntime", "openvino")  # no torch: the CPU backends
    assert api.choose_backend(NUCLEI, device="auto")[0] == "openvino"


def test_official_onnx_files_stay_behind_torch(installed):
    """The released models' ONNX files have the official decoder (no mask input, no IoU scores):
    with torch installed their checkpoint runs; without torch OpenVINO runs the ONNX files."""
    official = weights.MODEL_REGISTRY["edgesam"]
    installed("torch", "onnxruntime", "openvino")
    backend, why = api.choose_backend(official)
    assert backend == "torch" and "official" in why
    installed("onnxruntime", "openvino")
    assert api.choose_backend(official)[0] == "openvino"
    installed("torch", "onnxruntime", "openvino")
    assert api.choose_backend(NUCLEI)[0] == "openvino"  # the shipped exports are complete


def test_measure_times_the_backends_and_stores_them(tmp_path, monkeypatch):
    from napari_edgesam.inference.loading.measure import measure

    monkeypatch.setenv("NAPARI_EDGESAM_CACHE", str(tmp_path))
    timings = measure("edgesam-nuclei", backends=["onnxruntime"], rounds=1)
    t = timings["onnxruntime"]
    assert set(t) == {"encoder_ms", "decoder_ms"} and t["encoder_ms"] > t["decoder_ms"] > 0
    assert backend_choice.load_timings() == timings
    backend, why = backend_choice.choose(["onnxruntime", "openvino"])
    assert backend == "onnxruntime" and "fastest measured on this CPU" in why


def test_auto_pairs_the_openvino_encoder_with_the_torch_decoder(installed, monkeypatch):
    """With OpenVINO and torch installed, ``auto`` runs the (int8) encoder on OpenVINO and the
    decoder on torch: the embeddings are OpenVINO's, the masks those of the same weights."""
    pytest.importorskip("openvino")
    pytest.importorskip("torch")
    import numpy as np

    from napari_edgesam.datasets import synthetic_nuclei_2d
    from napari_edgesam.inference.backends.split_backend import SplitBackend

    installed("torch", "onnxruntime", "openvino")
    split = api.load_model("edgesam-nuclei", num_threads=1, cache=False, prior="auto")
    assert isinstance(split.backend, SplitBackend) and split.backend.name == "openvino+torch"
    assert split.model_name == "edgesam-nuclei-int8" and split.backend.supports_mask_input
    assert type(split.prior).__name__ == "OnnxBoxPrior"  # the prior beside the encoder, on OpenVINO
    # the int8 prior (encoder and head in one int8 graph, gated) gives the embedding too: one pass
    assert split.prior.path.name == "edge_sam_nuclei.prior_int8.onnx" and split.prior.use_embedding
    # the .pth head loads too: it runs on the torch decoder backend's float32 encoder
    from napari_edgesam.inference.loading.model_prior import find_model_prior
    from napari_edgesam.inference.prior import load_prior

    head = load_prior(find_model_prior("edgesam-nuclei"), split)
    assert head.backend is split.backend.decoder_backend
    # the automatic modes see the torch decoder's fixed batches (results independent of timing)
    assert split.backend.decodes_prompt_by_prompt
    monkeypatch.setenv("NAPARI_EDGESAM_SPLIT", "0")
    plain = api.load_model("edgesam-nuclei", num_threads=1, cache=False)
    assert plain.backend.name == "openvino"
    # asked for by name: OpenVINO for both
    monkeypatch.delenv("NAPARI_EDGESAM_SPLIT")
    assert api.load_model("edgesam-nuclei", backend="openvino", num_threads=1, cache=False).backend.name == "openvino"

    image, labels = synthetic_nuclei_2d(seed=3, shape=(256, 256), n_nuclei=12)
    emb = split.encode(image, prior=None)
    np.testing.assert_array_equal(emb.features, plain.encode(image).features)  # one encoder
    for k in np.unique(labels)[1:6]:
        ys, xs = np.nonzero(labels == k)
        box = np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        a = split.segment(box=box, embedding=emb)[0]
        b = plain.segment(box=box, embedding=emb)[0]
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.99  # two decoders of the same weights


@pytest.mark.parametrize(("value", "on"), [("1", True), ("", True), ("on", True), ("0", False), (" 0", False),
                                           ("false", False), ("OFF", False), ("no", False)])
def test_split_env_spellings(monkeypatch, value, on):
    monkeypatch.setenv("NAPARI_EDGESAM_SPLIT", value)
    assert api._split_enabled() is on


def test_split_env_junk_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("NAPARI_EDGESAM_SPLIT", "junk")
    with pytest.raises(ValueError, match="NAPARI_EDGESAM_SPLIT='junk' is not understood: set it to 0"):
        api._split_enabled()


def test_a_torch_head_on_the_split_backend_keeps_the_encoders_embedding(golden_state_dict):
    """A ``.pth`` head on encoder-X + torch-decoder runs on the torch encoder in a pass of its
    own: the embedding stays the split backend's encoder's (what ``encode`` without the prior,
    the cache and every other path see), not the torch encoder's."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from napari_edgesam.inference.backends.split_backend import SplitBackend
    from napari_edgesam.inference.backends.torch_backend import TorchBackend
    from napari_edgesam.inference.core.predictor import EdgeSamPredictor
    from napari_edgesam.inference.prior import TorchBoxPrior
    from napari_edgesam.model import build_edge_sam
    from napari_edgesam.model.box_head import BoxHead, BoxHeadConfig

    class OtherEncoder:  # stands for OpenVINO's int8 encoder
        name, provides_iou_scores, supports_mask_input = "other", False, False
        calls = 0

        def encode(self, x):
            OtherEncoder.calls += 1
            return np.full((1, 256, 64, 64), 0.25, np.float32)

    torch_side = TorchBackend(build_edge_sam(golden_state_dict), "cpu")
    split = SplitBackend(OtherEncoder(), torch_side)
    torch.manual_seed(1)
    prior = TorchBoxPrior.from_backend(split, BoxHead(BoxHeadConfig(channels=16, score_thresh=0.0, max_detections=5)))
    assert prior.backend is torch_side and not prior.shares_encoder_with(split)
    assert prior.shares_encoder_with(torch_side)
    pred = EdgeSamPredictor(split, "split")
    image = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)
    emb = pred.encode(image, prior=prior)
    assert OtherEncoder.calls == 1 and np.all(emb.features == 0.25)
    assert emb.proposals is not None and emb.proposals.original_size == (96, 128)

"""Damaged, unsafe and non-finite weight files get the right message, and the hash of a cached
file is recorded only once it has loaded (issue 12, item 7 and "NaN weights load")."""

from __future__ import annotations

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")

from napari_edgesam.inference.loading import api, weights  # noqa: E402
from napari_edgesam.model.build import CheckpointError, build_edge_sam, read_checkpoint  # noqa: E402
from napari_edgesam.training.checkpoint import FORMAT, load_training_checkpoint  # noqa: E402


class Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def _random_file(path, size=5000):
    path.write_bytes(os.urandom(size))
    return path


@pytest.mark.parametrize("allow_unsafe", [False, True])
def test_random_bytes_are_damaged_not_unsafe(tmp_path, allow_unsafe):
    path = _random_file(tmp_path / "edge_sam.pth")
    with pytest.raises(CheckpointError) as info:
        build_edge_sam(path, allow_unsafe=allow_unsafe)
    msg = str(info.value)
    assert "damaged or not a PyTorch file" in msg and str(path) in msg and "Delete" in msg
    assert "allow_unsafe" not in msg and "pickled Python objects" not in msg


def test_truncated_and_bit_flipped_zip_are_damaged(tmp_path, golden_checkpoint):
    data = golden_checkpoint.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*truncated or damaged zip"):
        read_checkpoint(cut)
    flipped = bytearray(data)
    start = data.index(b"data.pkl") + 200  # inside the pickle of the first member
    flipped[start : start + 64] = bytes(b ^ 0xFF for b in flipped[start : start + 64])
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"flipped\.pth.*damaged"):
        read_checkpoint(bad)


def test_damaged_file_in_the_weights_cache_says_it_will_be_downloaded_again(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    path = _random_file(tmp_path / "edge_sam.pth")
    with pytest.raises(CheckpointError, match=r"weights cache: delete .*edge_sam\.pth.* downloaded again"):
        read_checkpoint(path)


def test_unsafe_pickle_names_the_fix_per_kind_of_file(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError) as info:
        build_edge_sam(path)
    msg = str(info.value)
    assert "pickled Python objects" in msg and "e.g. print" in msg and "allow_unsafe=True" in msg
    assert "damaged" not in msg
    ckpt = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "model": Evil()}, ckpt)
    with pytest.raises(CheckpointError) as info:
        load_training_checkpoint(ckpt)
    msg = str(info.value)
    assert "training checkpoints hold only tensors" in msg and "allow_unsafe" not in msg


def test_random_bytes_as_training_checkpoint(tmp_path):
    path = _random_file(tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt.*damaged or not a PyTorch file"):
        load_training_checkpoint(path)


def test_non_finite_weights_are_refused(tmp_path, golden_state_dict):
    sd = {k: v.clone() for k, v in golden_state_dict.items()}
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    sd[key].view(-1)[0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"nan\.pth has NaN or inf values in 1 tensor"):
        build_edge_sam(path)
    sd[key].view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        build_edge_sam(sd)
    ckpt = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "model": sd, "model_config": {}, "step": 1, "epoch": 0, "step_in_epoch": 1}, ckpt)
    with pytest.raises(CheckpointError, match=r"training checkpoint .*last\.pt has NaN or inf"):
        load_training_checkpoint(ckpt)


def test_hash_is_recorded_only_after_the_file_loaded(tmp_path, monkeypatch, golden_checkpoint):
    """A right-size damaged file must not be trusted on first use: the good file copied in by
    hand afterwards (what the offline message says to do) loads, and only then is recorded."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    monkeypatch.setattr(weights, "MODEL_REGISTRY", dict(weights.MODEL_REGISTRY))
    size = golden_checkpoint.stat().st_size
    weights.register_model(weights.ModelSpec("tofu-test", "test", {
        "pth": weights.WeightFile("tofu.pth", size, ("https://example.invalid/tofu.pth",))}))
    target = cache / "tofu.pth"
    _random_file(target, size)
    with pytest.raises(CheckpointError, match="damaged"):
        api.load_model("tofu-test", backend="torch", device="cpu", allow_download=False)
    assert not (cache / weights.HASHES_FILE).exists()
    shutil.copyfile(golden_checkpoint, target)
    predictor = api.load_model("tofu-test", backend="torch", device="cpu", allow_download=False)
    assert predictor.source_path == target
    recorded = json.loads((cache / weights.HASHES_FILE).read_text())
    assert recorded == {"tofu.pth": weights.sha256_of(golden_checkpoint)}
    _random_file(target, size)  # now a damaged copy is caught by the recorded sum
    with pytest.raises(weights.WeightFileError, match="SHA-256"):
        api.load_model("tofu-test", backend="torch", device="cpu", allow_download=False)


def test_confirm_ignores_files_changed_since_they_were_hashed(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    monkeypatch.setattr(weights, "MODEL_REGISTRY", dict(weights.MODEL_REGISTRY))
    weights.register_model(weights.ModelSpec("tofu-onnx", "test", {
        "onnx_encoder": weights.WeightFile("e.onnx", 100, ("https://example.invalid/e.onnx",))}))
    target = cache / "e.onnx"
    target.write_bytes(b"\x01" * 100)
    assert weights.fetch_weight("tofu-onnx", "onnx_encoder", allow_download=False) == target
    target.write_bytes(b"\x02" * 100)
    os.utime(target, ns=(1, 1))
    weights.confirm_loaded(target)
    assert not (cache / weights.HASHES_FILE).exists()

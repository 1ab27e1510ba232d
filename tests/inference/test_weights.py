"""Tests for the weight registry/downloader. No network: ``pooch.retrieve`` is faked."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pooch
import pytest
import requests

from napari_edgesam.inference.loading import weights as w

SIZE = 1000
PRIMARY = "https://example.invalid/primary/tiny.onnx"
MIRROR = "https://example.invalid/mirror/tiny.onnx"


def _payload(size: int = SIZE, fill: bytes = b"\x01") -> bytes:
    return fill * size


class FakeRetrieve:
    """Stands in for ``pooch.retrieve``: per-URL behaviour, records every call."""

    def __init__(self, behaviour: dict[str, bytes | Exception] | None = None,
                 default: bytes | Exception | None = None):
        self.behaviour = behaviour or {}
        self.default = _payload() if default is None else default
        self.calls: list[dict] = []

    def __call__(self, url, known_hash=None, fname=None, path=None, processor=None,
                 downloader=None, progressbar=False):
        self.calls.append({"url": url, "known_hash": known_hash, "fname": fname, "path": path,
                           "progressbar": progressbar})
        result = self.behaviour.get(url, self.default)
        if isinstance(result, Exception):
            raise result
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result)
        return str(target)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Isolated cache dir, a tiny test model, and no real network."""
    directory = tmp_path / "cache"
    monkeypatch.setenv(w.CACHE_ENV, str(directory))
    monkeypatch.setattr(w, "MODEL_REGISTRY", dict(w.MODEL_REGISTRY))
    w.register_model(w.ModelSpec("tiny", "tiny test model", {
        "onnx_encoder": w.WeightFile("tiny.onnx", SIZE, (PRIMARY, MIRROR), licence="test"),
    }))

    def no_network(*args, **kwargs):
        raise AssertionError("unexpected network access")

    monkeypatch.setattr(pooch, "retrieve", no_network)
    return directory


def _use(monkeypatch, fake: FakeRetrieve) -> FakeRetrieve:
    monkeypatch.setattr(pooch, "retrieve", fake)
    return fake


def _recorded(directory: Path) -> dict:
    return json.loads((directory / w.HASHES_FILE).read_text())


def test_registry_contents():
    for name, stem in (("edgesam", "edge_sam"), ("edgesam-3x", "edge_sam_3x")):
        files = w.MODEL_REGISTRY[name].files
        assert set(files) == {"pth", "onnx_encoder", "onnx_decoder"}
        assert files["pth"].filename == f"{stem}.pth"
        assert files["pth"].size == 38_807_540
        assert files["onnx_encoder"].size == 22_098_300
        assert files["onnx_decoder"].size == 15_937_006
        for wf in files.values():
            assert len(wf.urls) == 2
            assert wf.urls[0].startswith("https://huggingface.co/spaces/chongzhou/EdgeSAM/")
            assert wf.urls[0].endswith(wf.filename) and wf.urls[1].endswith(wf.filename)
            assert "S-Lab" in wf.licence


def test_register_model_rejects_duplicates_and_bad_kinds(cache):
    with pytest.raises(ValueError, match="already registered"):
        w.register_model(w.ModelSpec("tiny", "again"))
    with pytest.raises(ValueError, match="unknown file kinds"):
        w.register_model(w.ModelSpec("bad", "x", {"weights": w.WeightFile("a.bin")}))


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv(w.CACHE_ENV, str(tmp_path / "here"))
    assert w.cache_dir() == tmp_path / "here"
    monkeypatch.delenv(w.CACHE_ENV)
    assert w.cache_dir() == Path(pooch.os_cache("napari-edgesam"))


def test_download_records_hash(cache, monkeypatch):
    fake = _use(monkeypatch, FakeRetrieve())
    path = w.fetch_weight("tiny", "onnx_encoder", progress=False)
    assert path == cache / "tiny.onnx"
    assert path.read_bytes() == _payload()
    assert [c["url"] for c in fake.calls] == [PRIMARY]
    assert fake.calls[0]["known_hash"] is None and fake.calls[0]["progressbar"] is False
    assert not (cache / w.HASHES_FILE).exists()  # recorded only once it has loaded
    w.confirm_loaded(path)
    assert _recorded(cache) == {"tiny.onnx": hashlib.sha256(_payload()).hexdigest()}
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_second_call_verifies_without_download(cache, monkeypatch):
    _use(monkeypatch, FakeRetrieve())
    first = w.fetch_weight("tiny", "onnx_encoder")
    fake = _use(monkeypatch, FakeRetrieve())
    assert w.fetch_weight("tiny", "onnx_encoder") == first
    assert fake.calls == []


def test_corrupt_cached_file_detected(cache, monkeypatch):
    _use(monkeypatch, FakeRetrieve())
    path = w.fetch_weight("tiny", "onnx_encoder")
    w.confirm_loaded(path)
    path.write_bytes(_payload(fill=b"\x02"))  # same size, different bytes
    with pytest.raises(w.WeightFileError) as info:
        w.fetch_weight("tiny", "onnx_encoder")
    msg = str(info.value)
    assert str(path) in msg and "SHA-256" in msg and "Delete" in msg
    assert hashlib.sha256(_payload()).hexdigest() in msg


def test_truncated_cached_file_detected(cache, monkeypatch):
    _use(monkeypatch, FakeRetrieve())
    path = w.fetch_weight("tiny", "onnx_encoder")
    path.write_bytes(_payload(SIZE // 2))
    with pytest.raises(w.WeightFileError, match=f"{SIZE // 2} bytes, expected {SIZE}"):
        w.fetch_weight("tiny", "onnx_encoder")


def test_truncated_download_rejected_and_removed(cache, monkeypatch):
    _use(monkeypatch, FakeRetrieve(default=_payload(SIZE - 1)))
    with pytest.raises(w.WeightFileError, match="tiny.onnx"):
        w.fetch_weight("tiny", "onnx_encoder")
    assert not (cache / "tiny.onnx").exists()
    assert not (cache / w.HASHES_FILE).exists()


@pytest.mark.parametrize("error", [requests.exceptions.ConnectionError("offline"),
                                   OSError("network unreachable")])
def test_offline_raises_unavailable(cache, monkeypatch, error):
    fake = _use(monkeypatch, FakeRetrieve(default=error))
    with pytest.raises(w.WeightsUnavailableError) as info:
        w.fetch_weight("tiny", "onnx_encoder")
    msg = str(info.value)
    assert str(cache / "tiny.onnx") in msg
    assert "tiny.onnx" in msg and PRIMARY in msg and MIRROR in msg
    assert w.CACHE_ENV in msg and "by hand" in msg
    assert [c["url"] for c in fake.calls] == [PRIMARY, MIRROR]


def test_mirror_fallback(cache, monkeypatch):
    fake = _use(monkeypatch, FakeRetrieve({PRIMARY: requests.exceptions.HTTPError("503")}))
    path = w.fetch_weight("tiny", "onnx_encoder")
    assert path.read_bytes() == _payload()
    assert [c["url"] for c in fake.calls] == [PRIMARY, MIRROR]
    w.confirm_loaded(path)
    assert "tiny.onnx" in _recorded(cache)


def test_pinned_sha_passed_and_mismatch_rejected(cache, monkeypatch):
    wrong = "0" * 64
    fake = _use(monkeypatch, FakeRetrieve())
    with pytest.raises(w.WeightFileError, match="failed verification"):
        w.fetch_weight("tiny", "onnx_encoder", sha256=wrong)
    assert all(c["known_hash"] == f"sha256:{wrong}" for c in fake.calls)
    assert not (cache / "tiny.onnx").exists()


def test_pinned_sha_via_env_and_registry(cache, monkeypatch):
    good = hashlib.sha256(_payload()).hexdigest()
    _use(monkeypatch, FakeRetrieve())
    monkeypatch.setenv("NAPARI_EDGESAM_SHA256_TINY_ONNX", "sha256:" + good.upper())
    assert w.fetch_weight("tiny", "onnx_encoder").is_file()
    monkeypatch.setenv("NAPARI_EDGESAM_SHA256_TINY_ONNX", "f" * 64)
    with pytest.raises(w.WeightFileError, match="f" * 64):  # pin checked on cached file too
        w.fetch_weight("tiny", "onnx_encoder")
    monkeypatch.delenv("NAPARI_EDGESAM_SHA256_TINY_ONNX")
    w.register_model(w.ModelSpec("pinned", "x", {"pth": w.WeightFile(
        "pinned.pth", SIZE, (PRIMARY,), sha256="e" * 64)}))
    with pytest.raises(w.WeightFileError):
        w.fetch_weight("pinned", "pth")


def test_allow_download_false(cache, monkeypatch):
    with pytest.raises(w.WeightsUnavailableError) as info:
        w.fetch_weight("tiny", "onnx_encoder", allow_download=False)  # no_network would fire
    assert str(cache / "tiny.onnx") in str(info.value)


def test_hand_placed_file_is_accepted_and_recorded(cache):
    cache.mkdir()
    (cache / "tiny.onnx").write_bytes(_payload())
    assert w.fetch_weight("tiny", "onnx_encoder", allow_download=False) == cache / "tiny.onnx"
    w.confirm_loaded(cache / "tiny.onnx")
    assert _recorded(cache)["tiny.onnx"] == hashlib.sha256(_payload()).hexdigest()


def test_real_size_download(cache, monkeypatch):
    size = w.MODEL_REGISTRY["edgesam"].files["onnx_decoder"].size
    fake = _use(monkeypatch, FakeRetrieve(default=_payload(size, b"\x00")))
    path = w.fetch_weight("edgesam", "onnx_decoder")
    assert path == cache / "edge_sam_decoder.onnx" and path.stat().st_size == size
    assert fake.calls[0]["url"].startswith("https://huggingface.co/spaces/chongzhou/EdgeSAM/")


def test_unknown_model_and_kind(cache):
    with pytest.raises(ValueError, match="unknown model"):
        w.fetch_weight("nope", "pth")
    with pytest.raises(ValueError, match="no 'pth' file"):
        w.fetch_weight("tiny", "pth")


def test_local_model_needs_no_download(cache, tmp_path):
    local = tmp_path / "nuclei.pth"
    local.write_bytes(_payload())
    w.register_model(w.ModelSpec("local-test-model", "packaged", {
        "pth": w.WeightFile("nuclei.pth", SIZE, local_path=local)}))
    assert w.fetch_weight("local-test-model", "pth") == local
    entry = next(m for m in w.list_models() if m["name"] == "local-test-model")
    assert entry["files"]["pth"] == {"filename": "nuclei.pth", "size": SIZE,
                                     "cached": True, "path": str(local)}


def test_list_models(cache, monkeypatch):
    models = {m["name"]: m for m in w.list_models()}
    assert {"edgesam", "edgesam-3x", "tiny"} <= set(models)
    assert models["edgesam"]["formats"] == ["pth", "onnx_encoder", "onnx_decoder"]
    assert models["edgesam"]["description"]
    assert models["tiny"]["files"]["onnx_encoder"]["cached"] is False
    assert models["tiny"]["files"]["onnx_encoder"]["path"] is None
    _use(monkeypatch, FakeRetrieve())
    w.fetch_weight("tiny", "onnx_encoder")
    entry = {m["name"]: m for m in w.list_models()}["tiny"]["files"]["onnx_encoder"]
    assert entry["cached"] is True and entry["path"] == str(cache / "tiny.onnx")


def test_verify_custom_paths(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        w.verify_weight_file(missing)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(w.WeightFileError, match="empty"):
        w.verify_weight_file(empty)
    good = tmp_path / "custom.pth"
    good.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    assert w.verify_weight_file(good) == digest == w.sha256_of(good, chunk_size=1)
    assert w.verify_weight_file(good, expected_size=3, expected_sha256="sha256:" + digest)
    with pytest.raises(w.WeightFileError, match="size 3 bytes, expected 4"):
        w.verify_weight_file(good, expected_size=4)
    with pytest.raises(w.WeightFileError, match=str(good).replace("\\", "\\\\")):
        w.verify_weight_file(good, expected_sha256="a" * 64)
    with pytest.raises(ValueError, match="not a SHA-256"):
        w.verify_weight_file(good, expected_sha256="xyz")


def test_import_does_not_pull_torch():
    code = ("import sys, napari_edgesam.inference.loading.weights; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = dict(os.environ)
    src = str(Path(w.__file__).resolve().parents[3])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

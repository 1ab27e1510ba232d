"""Official checkpoints load strictly and safely; bad files get clear errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from napari_edgesam.model import CheckpointError, build_edge_sam  # noqa: E402


def test_loads_official_layout(golden_checkpoint, golden_state_dict):
    model = build_edge_sam(golden_checkpoint)
    key = "image_encoder.features.5.token_mixer.1.fc1.weight"
    assert torch.equal(model.state_dict()[key], golden_state_dict[key])
    assert not model.training


def test_wrapped_and_fp16_checkpoints(tmp_path, golden_state_dict):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {k: v.half() if v.is_floating_point() else v for k, v in golden_state_dict.items()}, "epoch": 3}, path)
    model = build_edge_sam(path)
    assert model.state_dict()["mask_decoder.iou_token.weight"].dtype == torch.float32


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_edge_sam("/nonexistent/nope.pth")


def test_truncated_file(tmp_path, golden_checkpoint):
    bad = tmp_path / "edge_sam.pth"
    bad.write_bytes(golden_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"edge_sam\.pth.*truncated"):
        build_edge_sam(bad)


def test_empty_and_text_files(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        build_edge_sam(empty)
    text = tmp_path / "text.pth"
    text.write_text("<html>404 not found</html>")
    with pytest.raises(CheckpointError, match="text.pth"):
        build_edge_sam(text)


class Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_unsafe_pickle_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="allow_unsafe=True"):
        build_edge_sam(path)


def test_foreign_checkpoint(tmp_path, golden_state_dict):
    sd = {k: v for k, v in golden_state_dict.items() if not k.startswith("mask_decoder.")}
    sd["head.fc.weight"] = torch.zeros(10, 10)
    path = tmp_path / "foreign.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"foreign\.pth.*120 missing keys.*1 unexpected"):
        build_edge_sam(path)


def test_misshaped_tensor(tmp_path, golden_state_dict):
    sd = dict(golden_state_dict)
    sd["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    with pytest.raises(CheckpointError, match=r"mis-shaped.*mask_tokens.*\(4, 256\).*\(3, 256\)"):
        build_edge_sam(sd)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="state dict"):
        build_edge_sam(path)


def test_fused_model_equals_unfused(golden_state_dict):
    x = torch.randn(1, 3, 256, 320)
    ref = build_edge_sam(golden_state_dict)
    fused = build_edge_sam(golden_state_dict).fuse()
    n_convs = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert n_convs == 0
    with torch.no_grad():
        a, b = ref.embed(x), fused.embed(x)
    assert (a - b).abs().max() / a.abs().max() < 1e-4

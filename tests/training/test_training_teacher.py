"""Teachers behind one interface (EdgeSAM, SAM ViT), the shared decode path, the fp16 cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import one_thread  # noqa: F401
from napari_edgesam.model import build_edge_sam
from napari_edgesam.training.config import DataConfig, TeacherConfig
from napari_edgesam.training.data import TrainingDataset
from napari_edgesam.training.records import find_records
from napari_edgesam.training.student import set_input_size
from napari_edgesam.training.synthetic import write_folder_dataset
from napari_edgesam.training.teacher import Teacher, build_teacher, decode_prompts, teacher_identity
from napari_edgesam.training.teacher_cache import TeacherEmbeddingCache, precompute_embeddings

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def golden_model(golden_state_dict):
    return build_edge_sam(golden_state_dict)


def test_decode_prompts_matches_the_model_api(golden_model):
    torch.manual_seed(0)
    emb = torch.randn(1, 256, 64, 64)
    box = torch.tensor([[100.0, 200.0, 400.0, 500.0]])
    pts = torch.tensor([[[300.0, 350.0], [10.0, 20.0]]])
    lab = torch.tensor([[1, 0]])
    with torch.no_grad():
        ref_box, _ = golden_model.decode(emb, boxes=box, num_multimask_outputs=4)
        got_box, _ = decode_prompts(golden_model, emb, box.reshape(1, 2, 2), torch.tensor([[2, 3]]))
        ref_pts, ref_iou = golden_model.decode(emb, pts, lab, num_multimask_outputs=4)
        got_pts, got_iou = decode_prompts(golden_model, emb, pts, lab)
    torch.testing.assert_close(got_box, ref_box, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_pts, ref_pts, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_iou, ref_iou, rtol=1e-4, atol=1e-4)


def test_edgesam_teacher_at_a_small_input(golden_state_dict, tmp_path):
    torch.save(golden_state_dict, tmp_path / "edge.pth")
    teacher = build_teacher(TeacherConfig(kind="edgesam", checkpoint=str(tmp_path / "edge.pth")), img_size=128)
    assert teacher.name.startswith("edgesam@edge.pth") and teacher.name == teacher_identity(
        TeacherConfig(kind="edgesam", checkpoint=str(tmp_path / "edge.pth")), 128
    )
    x = torch.randn(2, 3, 128, 128)
    emb = teacher.embed(x)
    assert emb.shape == (2, 256, 8, 8) and not emb.requires_grad
    logits, iou = teacher.decode(emb, torch.tensor([[[30.0, 40.0]], [[5.0, 6.0]]]), torch.ones(2, 1, dtype=torch.long))
    assert logits.shape == (2, 4, 32, 32) and iou.shape == (2, 4)
    assert all(not p.requires_grad for p in teacher.model.parameters())


def test_sam_vit_teacher_interface():
    teacher = build_teacher(TeacherConfig(kind="sam", variant="vit_b"), img_size=64)
    emb = teacher.embed(torch.randn(1, 3, 64, 64))
    assert emb.shape == (1, 256, 4, 4) and torch.isfinite(emb).all()
    boxes = torch.tensor([[[4.0, 4.0], [40.0, 50.0]]])
    logits, iou = teacher.decode(emb, boxes, torch.tensor([[2, 3]]))
    assert logits.shape == (1, 4, 16, 16) and iou.shape == (1, 4)
    teacher.drop_image_encoder()
    with pytest.raises(RuntimeError, match="dropped"):
        teacher.embed(torch.randn(1, 3, 64, 64))


def test_input_size_leaves_the_state_dict_unchanged(golden_model):
    before = {k: v.shape for k, v in golden_model.state_dict().items()}
    model = build_edge_sam()
    set_input_size(model, 256)
    assert {k: v.shape for k, v in model.state_dict().items()} == before
    assert model.prompt_encoder.get_dense_pe().shape == (1, 256, 16, 16)


def test_precompute_is_float16_and_resumable(tmp_path, golden_model):
    images, _ = write_folder_dataset(tmp_path / "d", n_images=3, shape=(40, 64), seed=3)
    cfg = DataConfig(images=str(images))
    ds = TrainingDataset(find_records(cfg), cfg, img_size=64, with_instances=False)
    teacher = Teacher(build_edge_sam(golden_model.state_dict()), "edgesam@test", img_size=64)
    cache = TeacherEmbeddingCache(tmp_path / "cache", teacher.name, 64, create=True)
    assert precompute_embeddings(ds, teacher, cache, batch_size=2, progress=False) == 3
    arr = cache.load(ds.records[1].key)
    assert arr.dtype == np.float16 and arr.shape == (256, 4, 4)
    direct = teacher.embed(ds.model_input(1)[0][None])[0].numpy()
    np.testing.assert_allclose(arr.astype(np.float32), direct, rtol=2e-3, atol=2e-3)
    # resumable: nothing to do, then only the missing file is recomputed
    assert precompute_embeddings(ds, teacher, cache, progress=False) == 0
    cache.path(ds.records[0].key).unlink()
    assert cache.missing(ds.keys()) == [ds.records[0].key]
    assert precompute_embeddings(ds, teacher, cache, progress=False) == 1
    assert not list(cache.root.glob("*.tmp"))
    with pytest.raises(ValueError, match="another setup"):
        TeacherEmbeddingCache(tmp_path / "cache", "sam-vit_h@x", 64)
    with pytest.raises(FileNotFoundError, match="precompute"):
        TeacherEmbeddingCache(tmp_path / "nothing", teacher.name, 64)

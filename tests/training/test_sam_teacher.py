"""The SAM ViT teacher reproduces Meta's segment-anything ViT-B (golden outputs), and loads
official and micro-sam checkpoints strictly and safely.

Golden weights come from ``tests/data/golden/golden_weights.py`` (see the README there);
tolerances: embeddings and low-res logits 1e-4 relative (max |diff| / max |ref|), IoU scores
1e-4 absolute.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edgesam.model.sam import (  # noqa: E402
    PIXEL_MEAN,
    PIXEL_STD,
    Sam,
    build_sam_vit,
    extract_sam_state_dict,
)
from napari_edgesam.model.vit import VIT_CONFIGS, ImageEncoderViT  # noqa: E402
from napari_edgesam.model.vit_windows import decomposed_rel_pos_bias, get_rel_pos  # noqa: E402

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
REL_TOL = 1e-4
SCORE_ATOL = 1e-4
ORIGINAL_LONG_SIDE = 400  # the golden image is 300 x 400
SCALE = 1024 / ORIGINAL_LONG_SIDE  # 2.56, prompts -> the 1024 frame


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def _golden_weights_module():
    spec = importlib.util.spec_from_file_location(
        "sam_teacher_golden_weights", GOLDEN_DIR / "golden_weights.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sam_spec() -> dict:
    return json.loads((GOLDEN_DIR / "sam_vit_b_state_dict.json").read_text())


def preprocess_reference(resized: np.ndarray) -> torch.Tensor:
    """``h x w x 3`` uint8 (longest side 1024) -> ``1 x 3 x 1024 x 1024``, as SAM does it."""
    x = torch.from_numpy(resized).permute(2, 0, 1).float()
    x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
    h, w = x.shape[-2:]
    return torch.nn.functional.pad(x, (0, 1024 - w, 0, 1024 - h))[None]


# ---------------------------------------------------------------------------------------------
# Fixtures (module scope: the ViT-B forward at 1024 runs once)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_state_dict() -> dict:
    spec = _sam_spec()
    shapes = {k: v["shape"] for k, v in spec.items()}
    dtypes = {k: getattr(torch, v["dtype"]) for k, v in spec.items()}
    return _golden_weights_module().fill_state_dict(shapes, dtypes)


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory, sam_state_dict) -> Path:
    """The golden weights saved like an official ``sam_vit_b_01ec64.pth`` (a flat dict)."""
    path = tmp_path_factory.mktemp("sam_ckpt") / "sam_vit_b.pth"
    torch.save(sam_state_dict, path)
    return path


@pytest.fixture(scope="module")
def sam_model(sam_checkpoint) -> Sam:
    return build_sam_vit("vit_b", checkpoint=sam_checkpoint)


@pytest.fixture(scope="module")
def sam_golden() -> dict:
    with np.load(GOLDEN_DIR / "sam_vit_b_golden.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def resized_image() -> np.ndarray:
    with np.load(GOLDEN_DIR / "edge_sam_golden.npz") as z:
        return z["resized_image"]


@pytest.fixture(scope="module")
def embeddings(sam_model, resized_image) -> torch.Tensor:
    with torch.inference_mode():
        return sam_model.embed(preprocess_reference(resized_image))


@pytest.fixture(scope="module")
def cases() -> dict:
    return json.loads((GOLDEN_DIR / "cases.json").read_text())


# ---------------------------------------------------------------------------------------------
# Architecture / layout
# ---------------------------------------------------------------------------------------------


def test_state_dict_layout_matches_official():
    spec = _sam_spec()
    model = build_sam_vit("vit_b")
    sd = model.state_dict()
    assert len(spec) == 314
    assert list(sd) == list(spec)
    for k, v in sd.items():
        assert list(v.shape) == spec[k]["shape"], k
    # pixel_mean / pixel_std are not persistent, as in SAM
    assert "pixel_mean" not in sd and model.pixel_mean.shape == (3, 1, 1)


@pytest.mark.parametrize(
    "variant,embed,depth,heads,global_idx",
    [
        ("vit_b", 768, 12, 12, (2, 5, 8, 11)),
        ("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
        ("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    ],
)
def test_vit_configs(variant, embed, depth, heads, global_idx):
    cfg = VIT_CONFIGS[variant]
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (embed, depth, heads)
    assert tuple(cfg["global_attn_indexes"]) == global_idx


def test_unknown_variant():
    with pytest.raises(ValueError, match="vit_x"):
        build_sam_vit("vit_x")


def test_small_vit_shapes_and_attention_paths():
    """A tiny ViT: output shape, padded windows, and SDPA == explicit == bias-add reference."""
    torch.manual_seed(0)
    enc = ImageEncoderViT(
        img_size=160, embed_dim=32, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,)
    )
    for p in enc.parameters():  # rel-pos tables start at zero; make them matter
        torch.nn.init.normal_(p, std=0.2)
    assert enc.blocks[0].attn.rel_pos_h.shape == (7, 16)  # window 4 -> 2*4-1
    assert enc.blocks[1].attn.rel_pos_h.shape == (19, 16)  # global 10 -> 2*10-1
    x = torch.randn(2, 3, 160, 160)  # 10 x 10 tokens: windows of 4 need padding to 12
    with torch.inference_mode():
        enc.set_use_sdpa(False)
        a = enc(x)
        enc.set_use_sdpa(True)
        b = enc(x)
    assert a.shape == (2, 256, 10, 10)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    # the augmented-key attention equals softmax(q k^T * scale + explicit bias) v
    attn = enc.blocks[1].attn
    tokens = torch.randn(1, 10, 10, 32)
    with torch.inference_mode():
        q, k, v = (
            attn.qkv(tokens).reshape(1, 100, 3, 2, 16).permute(2, 0, 3, 1, 4).reshape(3, 2, 100, 16)
        )
        bias = decomposed_rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (10, 10), (10, 10))
        ref = ((q * attn.scale) @ k.transpose(-2, -1) + bias).softmax(-1) @ v
        ref = attn.proj(ref.view(1, 2, 10, 10, 16).permute(0, 2, 3, 1, 4).reshape(1, 10, 10, 32))
        attn.use_sdpa = False
        torch.testing.assert_close(attn(tokens), ref, rtol=1e-4, atol=1e-5)


def test_get_rel_pos_indexing():
    table = torch.arange(7, dtype=torch.float32)[:, None]  # offsets -3..3
    r = get_rel_pos(4, 4, table)[..., 0]
    # r[i, j] is the table row of offset i - j (row 3 is offset 0)
    assert torch.equal(r, (torch.arange(4)[:, None] - torch.arange(4)[None, :] + 3).float())


# ---------------------------------------------------------------------------------------------
# Golden outputs of Meta's SAM ViT-B
# ---------------------------------------------------------------------------------------------


def test_preprocess_matches_reference(sam_model, resized_image):
    x = torch.from_numpy(resized_image).permute(2, 0, 1)[None]
    torch.testing.assert_close(sam_model.preprocess(x), preprocess_reference(resized_image))


def test_image_embeddings_match_golden(embeddings, sam_golden):
    ref = sam_golden["image_embeddings"]
    assert tuple(embeddings.shape) == (1, 256, 64, 64)
    assert rel_err(embeddings.numpy(), ref) < REL_TOL


def _prompts(case: dict) -> dict:
    out = {}
    if "point_coords" in case:
        coords = torch.tensor(case["point_coords"], dtype=torch.float32)[None] * SCALE
        labels = torch.tensor(case["point_labels"], dtype=torch.int64)[None]
        out["points"] = (coords, labels)
    if "box" in case:
        out["boxes"] = torch.tensor(case["box"], dtype=torch.float32)[None] * SCALE
    return out


@pytest.mark.parametrize(
    "golden_name,case_name,num_outputs",
    [("box_single", "box", 1), ("point1_multi", "point1", 3)],
)
def test_decoder_matches_golden(
    sam_model, embeddings, sam_golden, cases, golden_name, case_name, num_outputs
):
    with torch.inference_mode():
        logits, iou = sam_model.decode(
            embeddings, **_prompts(cases[case_name]), num_multimask_outputs=num_outputs
        )
    ref_logits = sam_golden[f"{golden_name}_low_res_logits"]
    ref_iou = sam_golden[f"{golden_name}_iou"]
    assert tuple(logits.shape) == (1, num_outputs, 256, 256)
    assert logits[0].shape == ref_logits.shape
    assert rel_err(logits[0].numpy(), ref_logits) < REL_TOL
    np.testing.assert_allclose(iou[0].numpy(), ref_iou, rtol=0, atol=SCORE_ATOL)


# ---------------------------------------------------------------------------------------------
# Checkpoint loading
# ---------------------------------------------------------------------------------------------


class _NotATensor:
    """Any custom class: a weights-only load must refuse it."""

    def __init__(self) -> None:
        self.value = 42


def test_unsafe_pickle_refused(tmp_path, caplog):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": _NotATensor()}, path)
    with pytest.raises(ValueError, match="allow_unsafe") as err:
        build_sam_vit("vit_b", checkpoint=path)
    assert str(path) in str(err.value)
    assert "arbitrary pickled objects" in str(err.value)
    # with allow_unsafe the file unpickles (with a warning); it simply holds no SAM weights
    with caplog.at_level(logging.WARNING, logger="napari_edgesam.model.sam"):
        with pytest.raises(ValueError, match="no SAM state dict"):
            build_sam_vit("vit_b", checkpoint=path, allow_unsafe=True)
    assert any("weights_only=False" in r.getMessage() for r in caplog.records)


def test_micro_sam_training_checkpoint_loads(tmp_path, sam_state_dict, sam_model):
    """micro-sam trainer format: {"model_state": {"sam.<key>": ...}, "optimizer_state": ...}."""
    path = tmp_path / "best.pt"
    wrapped = {
        "model_state": {f"sam.{k}": v for k, v in sam_state_dict.items()},
        "optimizer_state": {"state": {}, "param_groups": []},
        "iteration": 10,
        "epoch": 1,
    }
    torch.save(wrapped, path)
    model = build_sam_vit("vit_b", checkpoint=path)
    for k, v in sam_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_extract_state_dict_formats(sam_state_dict):
    sd = {k: sam_state_dict[k] for k in list(sam_state_dict)[:3]}
    extra = {"pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}
    for ckpt in (
        sd,
        {"model": sd},
        {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        {"model_state": {f"sam.{k}": v for k, v in {**sd, **extra}.items()}, "epoch": 3},
    ):
        assert list(extract_sam_state_dict(ckpt)) == list(sd)
    with pytest.raises(ValueError, match="no SAM state dict"):
        extract_sam_state_dict({"epoch": 3})


def test_wrong_key_raises(tmp_path, sam_state_dict):
    sd = dict(sam_state_dict)
    sd["image_encoder.blocks.0.attn.qkv.weights"] = sd.pop("image_encoder.blocks.0.attn.qkv.weight")
    sd["image_encoder.neck.0.weight"] = torch.zeros(256, 768, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        build_sam_vit("vit_b", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing" in msg and "image_encoder.blocks.0.attn.qkv.weight'" in msg
    assert "unexpected" in msg and "image_encoder.blocks.0.attn.qkv.weights" in msg
    assert "mis-shaped" in msg and "image_encoder.neck.0.weight" in msg

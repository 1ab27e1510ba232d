"""Regression tests of an adversarial pass over the headless API, the CLI and the batch engine
(after issues 10 and 12): every case here was a silent wrong answer, a traceback or an unclear
error before. Torch-free: the shipped ONNX model runs on onnxruntime (the torch-only cases skip)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_edgesam.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "napari_edgesam" / "models" / "edgesam_nuclei"


@pytest.fixture(scope="module")
def onnx_predictor():
    from napari_edgesam import load_model

    return load_model("edgesam-nuclei", backend="onnxruntime")


@pytest.fixture()
def predictor(onnx_predictor):
    rng = np.random.default_rng(0)
    onnx_predictor.set_image((rng.random((64, 80)) * 255).astype(np.uint8))
    return onnx_predictor


def _cells(shape=(96, 128)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 200, np.uint16)
    for cy, cx in [(30, 30), (60, 90), (70, 40)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 150] = 3000
    return img + (np.random.default_rng(1).random(shape) * 300).astype(np.uint16)


def _run(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("napari-edgesam")
             and not line.startswith("napari-edgesam: model")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- the API: prompts --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    # complex parts were dropped, not refused (numpy's ComplexWarning only)
    ({"boxes": np.array([[0, 0, 3, 3 + 1j]])}, "boxes must be real numbers"),
    ({"point_coords": np.array([[[1, 3 + 1j]]]), "point_labels": [[1]]}, "point_coords must be real numbers"),
    # ragged prompts: numpy's 'inhomogeneous shape' message
    ({"point_coords": [[[0, 3]], [[1, 2], [3, 4]]], "point_labels": [[1], [1, 1]]}, "regular array"),
    ({"boxes": np.array([[0, 0, 3, "x"]], object)}, "boxes must be numbers"),
    # B prompts of 0 points and no box decoded the padding point alone
    ({"point_coords": np.zeros((2, 0, 2)), "point_labels": np.zeros((2, 0))}, "no points and no boxes"),
])
def test_predict_batch_refuses_what_predict_refuses(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict_batch(**kwargs)


def test_predict_batch_boxes_with_empty_point_lists_equal_boxes_alone(predictor):
    boxes = np.float32([[5, 5, 40, 40], [20, 10, 70, 60]])
    alone = predictor.predict_batch(boxes=boxes, upscale=False).low_res_logits
    empty = predictor.predict_batch(np.zeros((2, 0, 2)), np.zeros((2, 0)), boxes, upscale=False).low_res_logits
    np.testing.assert_allclose(empty, alone, atol=1e-5)


@pytest.mark.parametrize("mask_input,match", [
    (np.zeros((1, 256, 256), complex), "real numbers"),
    ("abc", "must be numbers"),
])
def test_mask_input_must_be_real_numbers(predictor, mask_input, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(box=[1, 1, 20, 20], mask_input=mask_input)


@pytest.mark.parametrize("candidate", [4, -1, 100, 1.5, "a", np.nan, True])
def test_segment_candidate_out_of_range_is_an_error(predictor, candidate):
    # 4 silently became candidate 0 and -1 candidate 3 (modulo 4)
    with pytest.raises(ValueError, match="candidate must be None or one of 0, 1, 2, 3"):
        predictor.segment([[30, 30]], [1], candidate=candidate)


def test_segment_candidate_in_range_is_that_token(predictor):
    masks, _, _ = predictor.predict([[30, 30]], [1], num_multimask_outputs=4)
    for k in (0, np.int64(3)):
        np.testing.assert_array_equal(predictor.segment([[30, 30]], [1], candidate=k, fill_holes=False, one_piece=False)[0],
                                      masks[int(k)])


@pytest.mark.parametrize("n", [1.5, "4", True, 2])
def test_num_multimask_outputs_is_not_truncated(predictor, n):
    with pytest.raises(ValueError, match="num_multimask_outputs must be 1, 3 or 4"):
        predictor.predict(box=[1, 1, 20, 20], num_multimask_outputs=n)


@pytest.mark.parametrize("point,match", [
    ([3], "one \\(x, y\\) pair"), ([3, 4, 5], "one \\(x, y\\) pair"), (None, "one \\(x, y\\) pair"),
    ([3 + 1j, 4], "real numbers"), ("ab", "must be numbers"), ([np.nan, 3], "NaN"), ([100, 3], "outside the image"),
])
def test_segment_click_checks_its_point(predictor, point, match):
    with pytest.raises(ValueError, match=match):
        predictor.segment_click(point)


@pytest.mark.parametrize("k", [0, -1, "a", None, 1.5])
def test_segment_click_checks_k_nearest_without_a_prior_too(predictor, k):
    assert predictor.prior is None
    with pytest.raises(ValueError, match="k_nearest must be a positive integer"):
        predictor.segment_click([30, 30], k_nearest=k)


def test_segment_click_equals_segment_of_the_point(predictor):
    a = predictor.segment_click([30, 30])
    b = predictor.segment([[30, 30]], [1])
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


def test_a_candidate_with_no_pixel_in_the_image_scores_zero():
    """The low-res logits cover the 1024 frame's padding too: a mask lying only there was
    'perfectly stable' (1.0) and could be chosen for a click; it scores 0 now."""
    from napari_edgesam.inference.core.postprocess import stability_in_image, stability_score

    low = np.full((4, 256, 256), -20.0, np.float32)
    low[0, 200:220, 10:30] = 20.0  # only in the padding of a 300 x 400 image (input 768 x 1024)
    low[1, 10:40, 10:40] = 20.0  # in the image, stable
    low[2, 10:40, 10:40] = 0.5  # in the image, unstable
    assert stability_score(low)[0] == 1.0
    s = stability_in_image(low, (768, 1024))
    np.testing.assert_allclose(s, [0.0, 1.0, stability_score(low)[2], 0.0])
    assert int(np.argmax(s)) == 1
    # a square image has no padding: the official score
    np.testing.assert_array_equal(stability_in_image(low[1:2], (1024, 1024)), stability_score(low[1:2]))


# -- the API: images ---------------------------------------------------------------------------
def test_float64_images_beyond_float32_range_are_stretched_not_blanked():
    from napari_edgesam.inference.core.preprocess import to_rgb_uint8

    x = np.random.default_rng(0).random((64, 48))
    ref = to_rgb_uint8(x)
    # 1e300 overflowed float32 to inf, and inf counts as missing: the image came out all black
    np.testing.assert_array_equal(to_rgb_uint8(x * 1e300), ref)
    np.testing.assert_array_equal(to_rgb_uint8(x * 1.7e308 - 0.85e308), ref)  # a span past float64's max
    two = to_rgb_uint8(np.where(x > 0.5, 1e308, -1e308))[..., 0]
    assert set(np.unique(two)) == {0, 255}


def test_timedelta_images_are_refused():
    from napari_edgesam.inference.core.preprocess import to_rgb_uint8

    with pytest.raises(TypeError, match="integer or floating-point"):
        to_rgb_uint8(np.ones((8, 8), "m8[s]"))


def test_read_image_refuses_empty_and_non_real_arrays_from_any_format(tmp_path):
    from napari_edgesam.inference.batch.io import ImageReadError, read_image

    tifffile.imwrite(tmp_path / "c.tif", np.zeros((40, 50), np.complex64))
    np.save(tmp_path / "e.npy", np.zeros((0, 5), np.uint8))
    np.save(tmp_path / "t.npy", np.zeros((4, 5), "m8[s]"))
    with pytest.raises(ImageReadError, match="c.tif holds a complex64 array; images must be real numbers"):
        read_image(tmp_path / "c.tif")
    with pytest.raises(ImageReadError, match=r"e.npy holds an empty image \(shape \(0, 5\)\)"):
        read_image(tmp_path / "e.npy")
    with pytest.raises(ImageReadError, match="t.npy holds a timedelta64"):
        read_image(tmp_path / "t.npy")


def test_a_zarr_store_that_does_not_open_is_one_line_naming_it(tmp_path):
    pytest.importorskip("zarr")
    from napari_edgesam.inference.batch.io import ImageReadError, read_image

    (tmp_path / "e.zarr").mkdir()
    with pytest.raises(ImageReadError, match=r"e.zarr is not a readable zarr store"):
        read_image(tmp_path / "e.zarr")


def test_autozoom_checks_prompts_like_the_predictor(onnx_predictor):
    from napari_edgesam.inference.core.autozoom import AutoZoom

    zoom = AutoZoom(onnx_predictor, _cells())
    with pytest.raises(ValueError, match="box contains NaN or inf"):  # was 'cannot convert float NaN to integer'
        zoom.segment(box=[np.nan, 0, 3, 3])
    with pytest.raises(ValueError, match="x0 <= x1"):
        zoom.segment(box=[40, 0, 3, 3])
    with pytest.raises(ValueError, match="real numbers"):
        zoom.segment([[3 + 1j, 4]], [1])


def test_tiles_keep_a_zero_width_box_like_the_predictor(onnx_predictor):
    """The predictor (like SAM) decodes a zero-width box; the tiled path (batch prompt mode)
    dropped it and reported an empty object."""
    from napari_edgesam.inference.embeddings.tiling import TiledImage

    img = _cells()
    onnx_predictor.set_image(img)
    box = [30, 15, 30, 45]
    direct = onnx_predictor.segment(box=box)[0]
    region = TiledImage(onnx_predictor, img, 1024, 128).segment(box=box)
    tiled = np.zeros(img.shape, bool)
    tiled[region.y0 : region.y0 + region.mask.shape[0], region.x0 : region.x0 + region.mask.shape[1]] = region.mask
    assert direct.any()
    np.testing.assert_array_equal(tiled, direct)


# -- loading -----------------------------------------------------------------------------------
def test_load_model_errors_are_clear(tmp_path):
    from napari_edgesam import load_model

    (tmp_path / "dir.pth").mkdir()
    with pytest.raises(ValueError, match="dir.pth is a folder"):
        load_model(tmp_path / "dir.pth")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'banana'"):
        load_model("edgesam-nuclei", device="banana")
    with pytest.raises(TypeError, match="model name or a file path, got NoneType"):
        load_model(None)
    # a garbage prior beside a model: an onnxruntime InvalidProtobuf traceback before
    for name in ("m_encoder.onnx", "m_decoder.onnx"):
        (tmp_path / name).write_bytes((SHIPPED / name.replace("m_", "edge_sam_nuclei_")).read_bytes())
    (tmp_path / "m.prior.onnx").write_text("garbage")
    with pytest.raises(ValueError, match=r"m.prior.onnx \(7 bytes\) could not be loaded as an ONNX file"):
        load_model(tmp_path / "m_encoder.onnx", prior="auto")


def test_damaged_box_head_file_is_called_damaged(tmp_path):
    pytest.importorskip("torch")
    from napari_edgesam.inference.prior import load_box_head

    (tmp_path / "x.prior.pth").write_text("garbage")
    # was torch's 'Weights only load failed. In PyTorch 2.6, we changed the default...'
    with pytest.raises(ValueError, match="is damaged or not a PyTorch file"):
        load_box_head(tmp_path / "x.prior.pth")


def test_a_cache_folder_below_a_file_is_not_called_offline(tmp_path, monkeypatch):
    from napari_edgesam.inference.loading import weights

    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE", str(tmp_path / "f" / "sub"))
    with pytest.raises(weights.WeightsUnavailableError, match="cannot create the weights cache folder") as err:
        weights.fetch_weight("edgesam", "pth", progress=False)
    assert "offline" not in str(err.value)


# -- the CLI -----------------------------------------------------------------------------------
def test_python_dash_m_napari_edgesam_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "napari_edgesam", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "segment" in out.stdout, out.stderr


@pytest.mark.parametrize("output,match", [
    ("", "the output path is empty"),  # was "PosixPath('.') has an empty name"
    ("{tmp}", "is a folder: give a file name inside it"),
    ("{tmp}/a-file/x.tif", "a-file is a file, not a folder"),  # was 'File exists'
    ("{tmp}/labels.png", "must end in .tif or .tiff"),  # a TIFF was written under a .png name
    ("{tmp}/labels", "must end in .tif or .tiff"),
])
def test_segment_output_is_checked_before_any_work(tmp_path, capsys, monkeypatch, output, match):
    import napari_edgesam.inference.loading.api as api

    tifffile.imwrite(tmp_path / "cells.tif", _cells())
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    rc, _, err = _run(capsys, ["segment", str(tmp_path / "cells.tif"), "--point", "30,30",
                               "-o", output.format(tmp=tmp_path)])
    assert rc == 1 and match in _one_error_line(err)


def test_segment_on_openvino_and_a_bad_device(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "cells.tif", _cells())
    rc, _, err = _run(capsys, ["segment", str(tmp_path / "cells.tif"), "--point", "30,30", "-o",
                               str(tmp_path / "o.tif"), "--device", "banana"])
    assert rc == 1 and "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'" in _one_error_line(err)
    pytest.importorskip("openvino")
    rc, out, err = _run(capsys, ["segment", str(tmp_path / "cells.tif"), "--point", "30,30", "-o",
                                 str(tmp_path / "o.tif"), "--backend", "openvino", "--model", "edgesam-nuclei"])
    assert rc == 0 and "openvino" in out, err
    assert tifffile.imread(tmp_path / "o.tif").shape == (96, 128)


def test_complex_tiff_is_one_clear_line(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((40, 50), np.complex64))
    rc, _, err = _run(capsys, ["segment", str(tmp_path / "c.tif"), "--point", "3,3", "-o", str(tmp_path / "o.tif")])
    line = _one_error_line(err)
    assert rc == 1 and "holds a complex64 array" in line and "unexpected" not in line


def test_export_onto_a_file_says_so(tmp_path, capsys):
    pytest.importorskip("torch")
    (tmp_path / "out").write_text("x")
    rc, _, err = _run(capsys, ["export", "edgesam-nuclei", "-o", str(tmp_path / "out")])
    assert rc == 1 and "is a file, not a folder" in _one_error_line(err)


# -- batch -------------------------------------------------------------------------------------
def test_batch_output_folder_that_is_a_file(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", _cells())
    (tmp_path / "out").write_text("x")
    rc, _, err = _run(capsys, ["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "out"), "--auto",
                               "--no-progress"])
    assert rc == 1 and "out: it is a file, not a folder" in _one_error_line(err)


def test_batch_lists_prompt_rows_for_images_that_are_not_inputs(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    tifffile.imwrite(inp / "a.tif", _cells())
    csv = tmp_path / "p.csv"
    # 'A.TIF' (case) and 'c' (no such input) were silently unused
    csv.write_text("image,object,kind,x,y,label\na,1,point,30,30,1\nA.TIF,1,point,30,30,1\nc,2,point,5,5,1\n")
    rc, printed, err = _run(capsys, ["batch", str(inp), "-o", str(tmp_path / "out"), "--prompts", str(csv),
                                     "--model", "edgesam-nuclei", "--no-progress"])
    assert rc == 0 and "1 ok" in printed and "2 other entries ignored" in printed, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stray = {r["key"]: r["error"] for r in report["ignored"]}
    assert set(stray) == {"A.TIF", "c"}
    assert "p.csv row 3" in stray["A.TIF"] and "match no input image" in stray["A.TIF"]


def test_batch_errors_have_no_type_prefix_and_huge_grids_are_refused(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", _cells())
    rc, _, err = _run(capsys, ["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "out"), "--auto",
                               "--points-per-side", "100000", "--no-progress"])
    # was a 55.9 GiB allocation (MemoryError) per image
    assert rc == 1 and "points_per_side=100000 is invalid" in _one_error_line(err)
    rc, _, err = _run(capsys, ["batch", str(tmp_path / "a.tif"), "-o", str(tmp_path / "out"), "--auto",
                               "--channel", "5", "--model", "edgesam-nuclei", "--no-progress"])
    assert rc == 1 and "a.tif: channel=5 was given but the image has no channel axis" in err
    assert "ValueError:" not in err
    rec = json.loads((tmp_path / "out" / "a.json").read_text())
    assert rec["error"] == "channel=5 was given but the image has no channel axis"


# -- embeddings set from elsewhere (caches, hand-made) ------------------------------------------
@pytest.mark.parametrize("features,sizes,match", [
    (np.zeros((1, 256, 32, 32), np.float32), ((40, 50), (819, 1024)), "shape \\(1, 256, 64, 64\\)"),  # ort traceback
    (np.zeros((256, 64, 64), np.float32), ((40, 50), (819, 1024)), "shape \\(1, 256, 64, 64\\)"),
    ([[0.0]], ((40, 50), (819, 1024)), "got a list"),  # AttributeError 'astype'
    (np.zeros((1, 256, 64, 64), np.int64), ((40, 50), (819, 1024)), "float array"),
    (np.full((1, 256, 64, 64), np.nan, np.float32), ((40, 50), (819, 1024)), "NaN or inf"),  # decoded silently
    (np.zeros((1, 256, 64, 64), np.float32), ((0, 0), (0, 0)), "sizes are invalid"),
    (np.zeros((1, 256, 64, 64), np.float32), ((40, 50), (819, 2048)), "sizes are invalid"),
])
def test_set_embedding_checks_what_it_is_given(onnx_predictor, features, sizes, match):
    from napari_edgesam.inference.core.predictor import ImageEmbedding

    with pytest.raises(ValueError, match=match):
        onnx_predictor.set_embedding(ImageEmbedding(features, *sizes))


def test_set_embedding_accepts_a_cached_fp16_copy(onnx_predictor):
    emb = onnx_predictor.set_image(_cells())
    direct = onnx_predictor.segment([[30, 30]], [1])[0]
    onnx_predictor.set_embedding(emb.astype(np.float16))
    assert (onnx_predictor.segment([[30, 30]], [1])[0] == direct).mean() > 0.99


def test_segment_says_which_objects_came_out_empty(tmp_path, capsys):
    """Two identical boxes: the second is covered by the first (the first object keeps its
    pixels, as in napari); the count said '2 object(s)' with one label in the file."""
    tifffile.imwrite(tmp_path / "cells.tif", _cells())
    rc, out, err = _run(capsys, ["segment", str(tmp_path / "cells.tif"), "--box", "15,15,45,45", "--box",
                                 "15,15,45,45", "--autozoom", "--model", "edgesam-nuclei",
                                 "-o", str(tmp_path / "o.tif")])
    labels = tifffile.imread(tmp_path / "o.tif")
    assert rc == 0 and "#2 (--box 15,15,45,45)" in err and "came out empty" in err
    assert set(np.unique(labels)) == {0, 1} and f"{tmp_path / 'o.tif'}: 1 object(s)" in out


def test_batch_folders_in_the_way_of_outputs(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", _cells())
    out = tmp_path / "out"
    (out / "report.csv").mkdir(parents=True)
    # was: every image segmented, then the report failed at the very end
    rc, _, err = _run(capsys, ["batch", str(tmp_path / "a.tif"), "-o", str(out), "--auto", "--model",
                               "edgesam-nuclei", "--no-progress"])
    assert rc == 1 and "report.csv: a folder of that name is in the way" in _one_error_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["report.csv"]
    (out / "report.csv").rmdir()
    (out / "a.json").mkdir()
    csv = tmp_path / "p.csv"
    csv.write_text("image,object,kind,x,y,label\na,1,point,30,30,1\n")
    rc, printed, err = _run(capsys, ["batch", str(tmp_path / "a.tif"), "-o", str(out), "--prompts", str(csv),
                                     "--model", "edgesam-nuclei", "--no-progress"])
    lines = [line for line in err.splitlines() if "a.json" in line]
    assert rc == 1 and "1 failed" in printed
    assert lines == [f"{tmp_path / 'a.tif'}: cannot write {out / 'a.json'}: a folder of that name is in the way "
                     "(remove or rename it)"]  # once, not twice


@pytest.mark.parametrize("value,match", [("30_0", "is not a number"), ("1_0", "is not a number"),
                                         (" 0x1F", "is not a number"), ("1e400", "is not a finite number"),
                                         ("nan", "is not a finite number")])
def test_numbers_in_prompt_files_and_options_are_plain_decimals(tmp_path, capsys, value, match):
    """float() reads '30_0' as 300 (a silent misparse of a typo)."""
    from napari_edgesam.inference.batch.prompt_csv import read_prompt_csv

    f = tmp_path / "p.csv"
    f.write_text(f"image,object,kind,x,y,label\na,1,point,{value},30,1\n")
    with pytest.raises(ValueError, match=f"row 2: x='{value.strip()}' {match}"):
        read_prompt_csv(f)
    rc, _, err = _run(capsys, ["segment", str(tmp_path / "x.tif"), "--point", f"{value},3", "-o", "o.tif"])
    assert rc == 2 and "--point must be comma-separated numbers" in err


def test_prompt_csv_with_semicolons_says_so(tmp_path):
    from napari_edgesam.inference.batch.prompt_csv import read_prompt_csv

    f = tmp_path / "p.csv"
    f.write_text("image;object;kind;x;y;label\na;1;point;30;30;1\n")
    with pytest.raises(ValueError, match="separated by ';'; prompt CSVs are comma-separated"):
        read_prompt_csv(f)
    assert read_prompt_csv(_write(tmp_path / "q.csv", "image,object,kind,x,y,label\na,1,point, 30 ,2.5e1,1\n"))[
        "a"][0].points.tolist() == [[30.0, 25.0]]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("kwargs,match", [({"min_stability": np.nan}, "min_stability must be a number in \\[0, 1\\]"),
                                          ({"min_overlap": 2.0}, "min_overlap must be"),
                                          ({"min_area": -1}, "min_area must be an integer >= 0")])
def test_propagation_thresholds_are_checked(onnx_predictor, kwargs, match):
    """A NaN threshold never stopped a sweep (every comparison with NaN is False)."""
    from napari_edgesam.inference.volume.propagation import propagate_object

    seed = np.zeros((96, 128), bool)
    seed[25:35, 25:35] = True
    with pytest.raises(ValueError, match=match):
        propagate_object(onnx_predictor, lambda z: pytest.fail("decoded"), {1: seed}, 3, **kwargs)


def test_empty_names_are_not_the_current_folder(tmp_path, monkeypatch):
    """'' is Path('.'): run_batch wrote its outputs into the working folder, load_model('')
    called the working folder a model folder."""
    from napari_edgesam import load_model
    from napari_edgesam.inference.batch.engine import BatchConfig, run_batch

    monkeypatch.chdir(tmp_path)
    tifffile.imwrite(tmp_path / "a.tif", _cells())
    with pytest.raises(ValueError, match="out_dir must name an output folder"):
        run_batch([tmp_path / "a.tif"], "", BatchConfig(model="edgesam-nuclei"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]
    with pytest.raises(ValueError, match="no model given"):
        load_model("")
    with pytest.raises(ValueError, match="model must be a model name"):
        BatchConfig(model="")
    with pytest.raises(ValueError, match="channel must be None or an integer"):
        BatchConfig(model="edgesam-nuclei", channel="x")


def test_prior_auto_without_a_prior_is_said(tmp_path, caplog):
    from napari_edgesam import load_model

    for name in ("m_encoder.onnx", "m_decoder.onnx"):
        (tmp_path / name).write_bytes((SHIPPED / name.replace("m_", "edge_sam_nuclei_")).read_bytes())
    with caplog.at_level("WARNING", logger="napari_edgesam.inference.loading.api"):
        predictor = load_model(tmp_path / "m_encoder.onnx", prior="auto")
    assert predictor.prior is None
    assert any("no granularity prior" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_an_image_named_report_keeps_its_record(tmp_path, capsys):
    """report.tif's record was report.json, overwritten by the run's report: lost, and the
    image was segmented again on every rerun."""
    from napari_edgesam.inference.batch.io import output_keys

    assert output_keys([Path("report.tif"), Path("REPORT.png"), Path("a.tif")]) == ["report_tif", "REPORT_png", "a"]
    inp = tmp_path / "in"
    inp.mkdir()
    tifffile.imwrite(inp / "report.tif", _cells())
    csv = _write(tmp_path / "p.csv", "image,object,kind,x,y,label\n,1,point,30,30,1\n")
    argv = ["batch", str(inp), "-o", str(tmp_path / "out"), "--prompts", str(csv), "--model", "edgesam-nuclei",
            "--no-progress"]
    rc, printed, _ = _run(capsys, argv)
    assert rc == 0 and "1 ok" in printed
    assert json.loads((tmp_path / "out" / "report_tif.json").read_text())["status"] == "ok"
    assert "summary" in json.loads((tmp_path / "out" / "report.json").read_text())
    rc, printed, _ = _run(capsys, argv)
    assert rc == 0 and "0 ok, 1 skipped" in printed


@pytest.mark.parametrize("n,match", [("x", "positive integer, got 'x'"), (1.5, "got 1.5"), (0, "got 0"), (True, "got True")])
def test_num_threads_is_checked_once_for_every_backend(n, match):
    from napari_edgesam import load_model

    with pytest.raises(ValueError, match=f"num_threads must be a {match}" if "positive" in match
                       else f"num_threads must be a positive integer, {match}"):
        load_model("edgesam-nuclei", backend="onnxruntime", num_threads=n)


@pytest.mark.parametrize("kwargs,match", [
    ({"percentiles": (99, 1)}, "percentiles must be finite with low <= high"),  # a black image before
    ({"percentiles": (5,)}, "percentiles must be two numbers"),
    ({"percentiles": "ab"}, "percentiles must be two numbers"),  # numpy's ufunc 'divide' message
    ({"contrast_limits": (None, 3)}, "contrast_limits must be two numbers"),
    ({"contrast_limits": (1 + 1j, 3)}, "contrast_limits must be two numbers"),
    ({"channel": "0"}, "channel must be an integer"),  # "'<=' not supported between 'int' and 'str'"
])
def test_normalisation_arguments_are_checked(kwargs, match):
    from napari_edgesam.inference.core.preprocess import to_rgb_uint8

    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(np.random.default_rng(0).random((20, 20)), **kwargs)


def test_outputs_never_replace_an_input_image(tmp_path, capsys):
    """segment -o <the input> replaced the image with its labels; a batch into the input
    folder wrote a.tif's labels over an input image named a_labels.tif."""
    img = tmp_path / "a.tif"
    tifffile.imwrite(img, _cells())
    before = img.read_bytes()
    rc, _, err = _run(capsys, ["segment", str(img), "--point", "30,30", "-o", str(tmp_path / "." / "a.tif")])
    assert rc == 1 and "is the input image" in _one_error_line(err) and img.read_bytes() == before
    (tmp_path / "a_labels.tif").write_bytes(before)
    csv = _write(tmp_path / "p.csv", "image,object,kind,x,y,label\n,1,point,30,30,1\n")
    rc, _, err = _run(capsys, ["batch", str(tmp_path), "-o", str(tmp_path), "--prompts", str(csv), "--model",
                               "edgesam-nuclei", "--no-progress"])
    assert rc == 1 and "would overwrite the input image" in _one_error_line(err)
    assert (tmp_path / "a_labels.tif").read_bytes() == before and not (tmp_path / "a.json").exists()
    # the usual rerun into the input folder still works: earlier outputs are recognised as outputs
    (tmp_path / "a_labels.tif").unlink()
    for _ in range(2):
        rc, printed, err = _run(capsys, ["batch", str(tmp_path), "-o", str(tmp_path), "--prompts", str(csv),
                                         "--model", "edgesam-nuclei", "--no-progress"])
        assert rc == 0, err
    assert "0 ok, 1 skipped" in printed and img.read_bytes() == before


@pytest.mark.parametrize("pattern", ["/tmp/*", "../*", "a/../../*"])
def test_patterns_stay_inside_the_input_folder(tmp_path, pattern):
    """'/tmp/*' was pathlib's 'Non-relative patterns are unsupported'; '../*' segmented the
    images of the parent folder."""
    from napari_edgesam.inference.batch.io import find_inputs

    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "outside.tif", _cells())
    with pytest.raises(ValueError, match="must be relative to the input folder and stay inside it"):
        find_inputs([tmp_path / "in"], pattern)


def test_embedding_cache_disk_layer_under_attack(tmp_path, caplog):
    from napari_edgesam.inference.core.predictor import ImageEmbedding
    from napari_edgesam.inference.embeddings.cache import EmbeddingCache

    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (40, 50), (819, 1024))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):  # FileExistsError traceback before
        EmbeddingCache(disk_dir=tmp_path / "file")
    cache = EmbeddingCache(disk_dir=tmp_path / "c")
    cache.disk_path("dir").mkdir()  # a folder where a cache file goes: a miss, not IsADirectoryError
    assert EmbeddingCache(disk_dir=tmp_path / "c").get("dir") is None
    cache.put("k", emb)
    cache.disk_path("k").write_bytes(b"random bytes, no pickle in sight")
    with caplog.at_level("WARNING"):
        assert EmbeddingCache(disk_dir=tmp_path / "c").get("k") is None
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "not an embedding cache file" in text and "pickle" not in text
    assert not cache.disk_path("k").exists()

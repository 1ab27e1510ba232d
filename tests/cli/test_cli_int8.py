"""``napari-edgesam export --int8`` and ``napari-edgesam gate`` on the golden weights."""

from __future__ import annotations

import json

import pytest
import tifffile

from napari_edgesam.cli import main
from napari_edgesam.datasets import synthetic_nuclei_2d


def _folder(root, seed: int, with_labels: bool = True):
    (root / "images").mkdir(parents=True)
    image, labels = synthetic_nuclei_2d(seed=seed, shape=(256, 256), n_nuclei=8)
    tifffile.imwrite(root / "images" / "a.tif", image)
    if with_labels:
        (root / "labels").mkdir()
        tifffile.imwrite(root / "labels" / "a.tif", labels)
    return root


@pytest.mark.slow
def test_export_int8_writes_checks_and_loads(tmp_path, golden_checkpoint, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from napari_edgesam import load_model

    train = _folder(tmp_path / "train", seed=21, with_labels=False)
    heldout = _folder(tmp_path / "heldout", seed=22)
    out = tmp_path / "onnx"
    rc = main(["export", str(golden_checkpoint), "-o", str(out), "--int8", "--calibration", str(train / "images"),
               "--gate", str(heldout)])
    text = capsys.readouterr().out
    int8 = out / "edge_sam_encoder_int8.onnx"
    assert f"int8 encoder: {int8}" in text and "calibrated on 4 images" in text  # 1 from the folder + 3 synthetic
    assert int8.stat().st_size < 0.5 * (out / "edge_sam_encoder.onnx").stat().st_size
    record = json.loads((out / "edge_sam_encoder_int8.gate.json").read_text())
    assert record["n_objects"] == 8 and 0 <= record["mean_iou"] <= 1
    assert rc == (0 if record["passed"] else 1) and ("passed" if record["passed"] else "FAILED") in text
    # the file loads by path (its float32 decoder found beside it) and segments
    predictor = load_model(int8, num_threads=1)
    assert predictor.backend.encoder_path == int8 and predictor.backend.decoder_path.name == "edge_sam_decoder.onnx"
    image, labels = synthetic_nuclei_2d(seed=22, shape=(256, 256), n_nuclei=8)
    assert predictor.encode(image).features.shape == (1, 256, 64, 64)
    # the gate command re-checks it and finds the same value
    assert main(["gate", str(int8), "--data", str(heldout), "--json", "--threads", "1"]) == rc
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["mean_iou"] == pytest.approx(record["mean_iou"], abs=1e-6)


def test_export_int8_refuses_held_out_calibration_before_any_work(tmp_path, golden_checkpoint, capsys):
    pytest.importorskip("torch")
    heldout = _folder(tmp_path / "heldout", seed=23)
    out = tmp_path / "onnx"
    assert main(["export", str(golden_checkpoint), "-o", str(out), "--int8", "--calibration",
                 str(heldout / "images")]) == 1
    assert "held-out data" in capsys.readouterr().err and not any(out.glob("*.onnx"))
    assert main(["export", str(golden_checkpoint), "-o", str(out), "--gate", str(heldout)]) == 1
    assert "go with --int8" in capsys.readouterr().err


def test_gate_command_needs_an_int8_model(tmp_path, capsys):
    assert main(["gate", "edgesam", "--data", str(tmp_path)]) == 1
    assert "no int8 encoder" in capsys.readouterr().err


def test_gate_data_without_objects_is_an_error_before_any_work(tmp_path, golden_checkpoint, capsys):
    import numpy as np

    gate = _folder(tmp_path / "gate", seed=5)
    tifffile.imwrite(gate / "labels" / "a.tif", np.zeros((256, 256), np.uint16))
    out = tmp_path / "onnx"
    assert main(["export", str(golden_checkpoint), "-o", str(out), "--int8", "--gate", str(gate)]) == 1
    assert "no labelled object in" in capsys.readouterr().err and not any(out.glob("*.onnx"))
    nolabels = _folder(tmp_path / "nolabels", seed=5, with_labels=False)
    assert main(["export", str(golden_checkpoint), "-o", str(out), "--int8", "--gate", str(nolabels)]) == 1
    assert "no labels for" in capsys.readouterr().err and not any(out.glob("*.onnx"))


def test_gate_refuses_an_encoder_against_itself(tmp_path, capsys):
    from napari_edgesam.inference.loading import weights

    gate = _folder(tmp_path / "gate", seed=5)
    fp32 = weights.fetch_weight("edgesam-nuclei", "onnx_encoder", progress=False)
    assert main(["gate", str(fp32), "--data", str(gate)]) == 1
    assert "MODEL is the *_encoder_int8.onnx file" in capsys.readouterr().err
    assert main(["gate", str(fp32), "--reference", str(fp32), "--data", str(gate)]) == 1
    assert "compares two encoders" in capsys.readouterr().err

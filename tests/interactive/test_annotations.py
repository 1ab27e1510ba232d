"""Annotations as data: export a session's planes, labels and prompts as a training folder,
read it back, replay the prompts (issue #14)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _helpers import LabelOraclePredictor
from napari_edgesam.interactive.annotations import (
    AnnotatedImage,
    ObjectPrompts,
    export_annotations,
    read_annotations,
    read_prompts,
    replay_prompts,
)


def _plane(seed: int = 0):
    """Labels whose pixel values are the ids (the oracle segments them back)."""
    lab = np.zeros((64, 80), np.uint16)
    lab[5:20, 5:25] = 3
    lab[30:50, 40:70] = 9
    lab[45:60, 5:20] = 12
    return lab.astype(np.uint8), lab


def _prompts():
    return [ObjectPrompts(3, box=[5, 5, 24, 19]),
            ObjectPrompts(9, points=[[55, 40], [10, 10]], point_labels=[1, 0]),
            ObjectPrompts(12, points=[[12, 52]], point_labels=[1])]


def test_export_read_roundtrip(tmp_path):
    image, lab = _plane()
    other = np.rot90(lab).copy()
    out = export_annotations(tmp_path / "ann", [AnnotatedImage("a", image, lab, _prompts()),
                                                AnnotatedImage("b_z003", other.astype(np.uint8), other, [])])
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.tif", "b_z003.tif"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.tif", "b_z003.tif"]
    assert json.loads((out / "prompts.json").read_text())["format"] == "napari-edgesam-annotations"
    back = {it.name: it for it in read_annotations(out)}
    np.testing.assert_array_equal(back["a"].labels, lab)
    np.testing.assert_array_equal(back["a"].image, image)
    np.testing.assert_array_equal(back["b_z003"].labels, other)
    p = back["a"].prompts
    assert [o.id for o in p] == [3, 9, 12] and p[0].box.tolist() == [5, 5, 24, 19] and p[1].point_labels.tolist() == [1, 0]
    assert [o.id for o in read_prompts(out / "prompts.json")["a"]] == [3, 9, 12]
    with pytest.raises(ValueError, match="already holds"):
        export_annotations(out, [AnnotatedImage("a", image, lab, [])])
    export_annotations(out, [AnnotatedImage("a", image, lab, [])], overwrite=True)


def test_bad_annotations_are_named(tmp_path):
    image, lab = _plane()
    with pytest.raises(ValueError, match="invalid annotation name"):
        AnnotatedImage("../x", image, lab)
    with pytest.raises(ValueError, match="must be one plane"):
        AnnotatedImage("x", image, lab[:, :10])
    with pytest.raises(ValueError, match="no prompt"):
        ObjectPrompts(1)
    with pytest.raises(ValueError, match="must differ"):
        export_annotations(tmp_path, [AnnotatedImage("x", image, lab), AnnotatedImage("x", image, lab)])
    (tmp_path / "prompts.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a napari-edgesam annotations"):
        read_prompts(tmp_path)


def test_replay_prompts_gives_the_labels_back():
    image, lab = _plane()
    predictor = LabelOraclePredictor()
    out = replay_prompts(predictor, image, _prompts())
    assert out.dtype == np.uint16 and out.shape == lab.shape
    np.testing.assert_array_equal(out, lab)
    # from the JSON form too, and an empty list gives empty labels
    out2 = replay_prompts(predictor, image, [o.to_json() for o in _prompts()[:1]])
    np.testing.assert_array_equal(out2, np.where(lab == 3, 3, 0))
    assert not replay_prompts(predictor, image, []).any()


def test_exported_folder_is_training_data(tmp_path):
    """``train finetune`` (find_records) and ``train adapt`` (data_from_folder) read the export."""
    from napari_edgesam.training.adapt.folder import data_from_folder
    from napari_edgesam.training.config import DataConfig
    from napari_edgesam.training.records import find_records

    image, lab = _plane()
    out = export_annotations(tmp_path / "ann", [AnnotatedImage("a", image, lab, _prompts())])
    recs = find_records(DataConfig(images=str(out / "images"), labels=str(out / "labels")))
    assert len(recs) == 1 and recs[0].labels.name == "a.tif"
    data = data_from_folder(out / "images", out / "labels")
    assert len(data.objects) == 3
    by_area = sorted(data.objects, key=lambda o: o.area)
    assert by_area[-1].area == int((lab == 9).sum()) and by_area[-1].points.tolist() == [[55, 40], [10, 10]]
    assert any(o.box is not None and o.box.tolist() == [5, 5, 24, 19] for o in data.objects)


@pytest.mark.parametrize("images", ['{"a": 5}', '{"a": {"objects": 5}}', '{"a": {"objects": [{"id": "x", "box": [1, 2, 3, 4]}]}}',
                                    '{"a": {"objects": [{"id": 1, "box": [1, 2, 3]}]}}', '{"../../x": {"objects": []}}'])
def test_malformed_prompts_json_is_one_clear_error(tmp_path, images):
    (tmp_path / "prompts.json").write_text('{"format": "napari-edgesam-annotations", "images": ' + images + "}")
    with pytest.raises(ValueError, match=r"prompts.json: (image|invalid image name)"):
        read_annotations(tmp_path)


def test_corrupt_annotation_tif_is_named(tmp_path):
    image, lab = _plane()
    out = export_annotations(tmp_path / "ann", [AnnotatedImage("a", image, lab, _prompts())])
    (out / "labels" / "a.tif").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read the annotation 'a'"):
        read_annotations(out)


def test_replay_names_the_object_whose_prompts_are_bad():
    from napari_edgesam import load_model

    pytest.importorskip("torch")
    image, _ = _plane()
    predictor = load_model("edgesam-nuclei", backend="torch", device="cpu")
    with pytest.raises(ValueError, match=r"object 7's saved prompts: point \(500, -3\) lies outside the image"):
        replay_prompts(predictor, image, [ObjectPrompts(3, box=[5, 5, 24, 19]),
                                          ObjectPrompts(7, points=[[500, -3]], point_labels=[1])])


def test_foreign_prompts_json_beside_a_training_folder_is_not_fatal(tmp_path, caplog):
    """``train adapt`` keeps saved prompts for the record only: another tool's prompts.json
    beside the images is skipped with a warning, the labels are still read."""
    from napari_edgesam.training.adapt.folder import data_from_folder

    image, lab = _plane()
    out = export_annotations(tmp_path / "ann", [AnnotatedImage("a", image, lab, _prompts())])
    (out / "prompts.json").write_text('{"format": "someone-elses", "images": []}')
    with caplog.at_level("WARNING"):
        data = data_from_folder(out / "images", out / "labels")
    assert len(data.objects) == 3 and all(o.box is None and not len(o.points) for o in data.objects)
    assert "not a napari-edgesam annotations file" in caplog.text

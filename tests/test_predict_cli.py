"""``deepage predict``: folders, JSON lines / CSV / table, annotated copies, bad files, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepage.cli import main

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "crops").mkdir(parents=True)
    shutil.copy(ASTRONAUT, folder / "astronaut.jpg")
    rgb = cv2.imread(str(ASTRONAUT))
    cv2.imwrite(str(folder / "crops" / "face.png"), rgb[60:200, 160:290])
    (folder / "broken.jpg").write_text("this is not a photo")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_folder_json_annotate_and_a_bad_file(photos, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "annotated"
    rc = main(["predict", str(photos), "--model", str(tiny_checkpoint), "--format", "json",
               "--annotate", str(out)])
    captured = capsys.readouterr()
    assert rc == 1  # one file failed
    rows = {Path(r["source"]).name: r for r in _json_lines(captured.out)}
    assert set(rows) == {"astronaut.jpg", "broken.jpg", "face.png"}
    assert rows["broken.jpg"]["error"] == "not an image (unrecognised format)"
    assert "broken.jpg: not an image" in captured.err
    face = rows["astronaut.jpg"]["faces"][0]
    assert face["age_low"] <= face["age"] <= face["age_high"]
    assert set(face["groups"]) == {"utk14", "utk8"} and len(face["box"]) == 4
    annotated = cv2.imread(str(out / "astronaut.jpg"))
    assert annotated.shape == (512, 512, 3)
    assert np.abs(annotated.astype(int) - cv2.imread(str(ASTRONAUT)).astype(int)).max() > 100  # drawn on
    assert (out / "crops" / "face.png").is_file() and not (out / "broken.jpg").exists()


def test_crop_without_detection(photos, tiny_checkpoint, capsys):
    crop = photos / "crops" / "face.png"
    args = ["predict", str(crop), "--model", str(tiny_checkpoint), "--no-detect", "--format", "json"]
    assert main(args) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert row["faces"][0]["box"] == [0, 0, 130, 140] and row["faces"][0]["detection_score"] is None


def test_csv_and_table(photos, tiny_checkpoint, capsys):
    assert main(["predict", str(photos / "astronaut.jpg"), "--model", str(tiny_checkpoint),
                 "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("source,face,x0,y0,x1,y1,age,age_low,age_high,utk14")
    assert len(lines) == 2 and lines[1].split(",")[1] == "0"
    assert main(["predict", str(photos / "broken.jpg"), "--model", str(tiny_checkpoint)]) == 1
    assert "broken.jpg: ERROR not an image" in capsys.readouterr().out


def test_onnx_backend(photos, tiny_checkpoint, capsys):
    pytest.importorskip("onnxruntime")
    args = ["predict", str(photos / "astronaut.jpg"), "--model", str(tiny_checkpoint), "--format", "json"]
    assert main(args) == 0
    torch_age = _json_lines(capsys.readouterr().out)[0]["faces"][0]["age"]
    assert main(args + ["--backend", "onnx"]) == 0
    assert _json_lines(capsys.readouterr().out)[0]["faces"][0]["age"] == pytest.approx(torch_age, abs=0.01)


def test_explain_needs_an_al_resnet(photos, tiny_checkpoint, capsys):
    assert main(["predict", str(photos), "--model", str(tiny_checkpoint), "--explain"]) == 2
    assert "--explain needs a model that reports attended regions" in capsys.readouterr().err


def test_missing_model_and_empty_folder(tmp_path, tiny_checkpoint, capsys):
    assert main(["predict", str(ASTRONAUT), "--model", str(tmp_path / "none.pt")]) == 2
    assert "none.pt not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--model", str(tiny_checkpoint)]) == 1
    assert "no image files found" in capsys.readouterr().err


@pytest.mark.slow
def test_explain_with_an_al_resnet(photos, tmp_path, capsys):
    """An (untrained) AL-ResNet-18 reports its attended regions, mapped back onto the photo and drawn."""
    from deepage.checkpoint import save_checkpoint
    from deepage.models import create_model

    model = create_model("alresnet18", head="dex", input_size=32)
    ckpt = tmp_path / "al.pt"
    save_checkpoint(ckpt, {"spec": model.spec.to_dict(), "state_dict": model.state_dict()})
    out = tmp_path / "annotated"
    args = ["predict", str(photos / "astronaut.jpg"), "--model", str(ckpt), "--explain", "--format", "json",
            "--annotate", str(out)]
    assert main(args) == 0
    face = _json_lines(capsys.readouterr().out)[0]["faces"][0]
    x0, y0, x1, y1 = face["box"]
    assert len(face["regions"]) == 3  # one per attention step (3 by default)
    for rx0, ry0, rx1, ry1 in face["regions"]:  # inside the face chip, which spans ~1.6 face boxes
        assert x0 - 60 <= rx0 < rx1 <= x1 + 60 and y0 - 60 <= ry0 < ry1 <= y1 + 60
    assert (out / "astronaut.jpg").is_file()

"""``deepage predict``: folders, JSON lines / CSV / table, annotated copies, bad files, exit codes."""

from __future__ import annotations

import json
import re
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


def test_backends_and_an_onnx_file_without_flags(photos, tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from deepage.inference.export import export_onnx

    args = ["predict", str(photos / "astronaut.jpg"), "--format", "json"]
    assert main(args + ["--model", str(tiny_checkpoint), "--backend", "torch"]) == 0
    torch_age = _json_lines(capsys.readouterr().out)[0]["faces"][0]["age"]
    onnx_file = export_onnx(tiny_checkpoint, tmp_path / "m.onnx")
    for extra in (["--model", str(tiny_checkpoint), "--backend", "onnx"], ["--model", str(tiny_checkpoint)],
                  ["--model", str(onnx_file)]):  # the backend follows the file: no --backend onnx needed
        assert main(args + extra) == 0, capsys.readouterr().err
        assert _json_lines(capsys.readouterr().out)[0]["faces"][0]["age"] == pytest.approx(torch_age, abs=0.01)


def test_explain_needs_an_al_resnet(photos, tiny_checkpoint, capsys):
    assert main(["predict", str(photos), "--model", str(tiny_checkpoint), "--explain"]) == 2
    assert "--explain needs a model that reports attended regions" in capsys.readouterr().err


def test_a_thin_image_is_one_line(photos, tiny_checkpoint, capsys):
    cv2.imwrite(str(photos / "strip.png"), np.full((1, 20000, 3), 128, np.uint8))
    assert main(["predict", str(photos / "strip.png"), "--model", str(tiny_checkpoint)]) == 1
    captured = capsys.readouterr()
    assert captured.out == (f"{photos / 'strip.png'}: ERROR image too small or too thin: 20000x1 pixels (each "
                            "side must be at least 16)\n")
    assert captured.err == ""
    assert main(["predict", str(photos / "strip.png"), "--model", str(tiny_checkpoint), "--format", "json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("strip.png: image too small or too thin: 20000x1 pixels (each side "
                                             "must be at least 16)")


def test_annotated_copies_of_inputs_sharing_a_name_do_not_overwrite(tmp_path, tiny_checkpoint, capsys):
    rgb = cv2.imread(str(ASTRONAUT))
    for sub, shift in (("a", 0), ("b", 40)):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "x.jpg"), np.roll(rgb, shift, axis=1))
    out = tmp_path / "annotated"
    inputs = [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")]
    assert main(["predict", *inputs, "--model", str(tiny_checkpoint), "--annotate", str(out), "-q"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["a/x.jpg", "b/x.jpg"]
    # two folder arguments holding the same relative name, and one file given twice
    out2 = tmp_path / "annotated2"
    assert main(["predict", str(tmp_path / "a"), str(tmp_path / "b"), inputs[0], "--model",
                 str(tiny_checkpoint), "--annotate", str(out2)]) == 0
    assert sorted(p.relative_to(out2).as_posix() for p in out2.rglob("*.jpg")) == ["a/x-2.jpg", "a/x.jpg",
                                                                                   "b/x.jpg"]


def test_piped_run_has_no_progress_bar(photos, tiny_checkpoint, capsys):
    assert main(["predict", str(photos / "crops"), "--model", str(tiny_checkpoint), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.splitlines()) == 2


def test_progress_bar_on_a_terminal(photos, tiny_checkpoint, tmp_path, monkeypatch):
    """stderr on a pseudo-terminal: the bar shows count, rate and ETA; --quiet turns it off."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    def run(*extra: str) -> str:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # rows, columns
        with open(slave, "w", closefd=True) as tty:
            monkeypatch.setattr("sys.stderr", tty)
            main(["predict", str(photos), "--model", str(tiny_checkpoint), "--format", "csv", "-o",
                  str(tmp_path / f"out{len(extra)}.csv"), *extra])
            tty.flush()
        monkeypatch.undo()
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the slave side is closed: all was read
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        return b"".join(chunks).decode(errors="replace")

    shown = run()
    assert re.search(r"predict: 100%.*\b3/3 \[.*<00:00.*img/s", shown), shown  # count, ETA, rate
    quiet = run("--quiet")
    assert "img/s" not in quiet and "broken.jpg: not an image" in quiet


def test_answers_stream_out_and_an_interrupted_run_resumes(photos, tiny_checkpoint, tmp_path, monkeypatch,
                                                          capsys):
    from deepage.inference.predictor import Predictor

    out = tmp_path / "ages.csv"
    args = ["predict", str(photos), "--model", str(tiny_checkpoint), "--format", "csv", "-o", str(out)]
    original = Predictor.predict_iter

    def interrupted(self, images, **kw):  # the run is killed after its first answer
        yield next(original(self, images, **kw))
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "predict_iter", interrupted)
    assert main(args) == 130
    assert "interrupted (add --skip-existing to resume)" in capsys.readouterr().err
    monkeypatch.undo()
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith(str(photos / "astronaut.jpg"))  # flushed as it was made
    with open(out, "a") as fh:
        fh.write(str(photos / "broken.jpg") + ",0,1,2")  # a line cut short by the kill

    assert main(args) == 2  # an existing output is not overwritten by accident
    assert "--skip-existing" in capsys.readouterr().err
    assert main(args + ["--skip-existing"]) == 1  # broken.jpg fails again
    assert "skipped 1 images already in" in capsys.readouterr().err
    rows = out.read_text().splitlines()
    assert rows[0].startswith("source,face") and sum(r.startswith("source,") for r in rows) == 1
    assert sorted(Path(r.split(",")[0]).name for r in rows[1:]) == ["astronaut.jpg", "broken.jpg", "face.png"]


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

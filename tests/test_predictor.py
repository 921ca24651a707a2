"""The Predictor API: image loading (EXIF, odd formats, bombs), same answers for every input type."""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepage.crops
import deepage.imageio
from deepage.imageio import ImageDecodeError
from deepage.inference import predictor as predictor_module
from deepage.inference.predictor import Predictor, load_rgb
from deepage.models.heads import age_quantiles

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint)


# ---- image loading -------------------------------------------------------------------------------------
def _jpeg_with_orientation(path: Path, orientation: int) -> None:
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, 10, 20))  # a blue stripe on the left, to see where it went
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    _jpeg_with_orientation(path, 6)  # 6: stored image must be turned 90° clockwise to display
    for source in (path, path.read_bytes(), Image.open(path)):
        rgb, _ = load_rgb(source)
        assert rgb.shape == (40, 20, 3)
        assert rgb[2, 10, 2] > 150 and rgb[-3, 10, 0] > 150  # the left stripe is now at the top


@pytest.mark.parametrize("kind", ["grey", "rgba", "cmyk", "png16"])
def test_odd_formats_are_accepted(tmp_path, kind):
    if kind == "grey":
        path = tmp_path / "g.jpg"
        Image.new("L", (30, 20), 77).save(path)
    elif kind == "rgba":
        path = tmp_path / "a.png"
        Image.new("RGBA", (30, 20), (10, 20, 30, 0)).save(path)
    elif kind == "cmyk":
        path = tmp_path / "c.jpg"
        Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(path)  # red
    else:
        path = tmp_path / "w.png"
        Image.fromarray(np.full((20, 30), 65535, np.uint16)).save(path)
    rgb, name = load_rgb(path)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8 and name == str(path)
    expected = {"grey": (77, 77, 77), "rgba": (10, 20, 30), "cmyk": (255, 0, 0),
                "png16": (255, 255, 255)}[kind]
    np.testing.assert_allclose(rgb[10, 15], expected, atol=6)
    pil_rgb, _ = load_rgb(Image.open(path))
    np.testing.assert_allclose(pil_rgb.astype(int), rgb.astype(int), atol=6)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(100_000, 100_000))  # 10^10 pixels claimed in 100 bytes
    with pytest.raises(ImageDecodeError, match=r"bomb\.png: image too large"):
        load_rgb(bomb)
    # below Pillow's own limit, DeepAge's limit applies
    monkeypatch.setattr(deepage.imageio, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ImageDecodeError, match="30x20 pixels exceeds the limit of 500"):
        load_rgb(_small_png())


def _small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buf, "PNG")
    return buf.getvalue()


def test_non_images_are_refused(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg: not an image"):
        load_rgb(text)
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_rgb(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="unsupported input type int"):
        load_rgb(42)
    with pytest.raises(ImageDecodeError, match="shape"):
        load_rgb(np.zeros((4, 4, 2), np.uint8))


# ---- predictions ---------------------------------------------------------------------------------------
def test_every_input_type_gives_the_same_answer(predictor):
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    inputs = [ASTRONAUT, str(ASTRONAUT), ASTRONAUT.read_bytes(), Image.open(ASTRONAUT), rgb,
              np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])]
    results = predictor.predict(inputs)
    assert [r.source for r in results[:3]] == [str(ASTRONAUT), str(ASTRONAUT), "<bytes>"]
    first = results[0]
    assert first.error is None and (first.width, first.height) == (512, 512) and len(first.faces) == 1
    for r in results[1:]:
        assert r.faces[0].box == first.faces[0].box
        assert r.faces[0].age == pytest.approx(first.faces[0].age, abs=1e-4)
    # a single input, and predict_one, answer the same
    assert predictor.predict(ASTRONAUT)[0].faces[0].age == pytest.approx(first.faces[0].age, abs=1e-5)
    assert predictor.predict_one(rgb).faces[0].age == pytest.approx(first.faces[0].age, abs=1e-4)


def test_answer_fields(predictor):
    face = predictor.predict_one(ASTRONAUT).faces[0]
    assert 0 <= face.age_low <= face.age <= face.age_high <= 100
    assert set(face.groups) == {"utk14", "utk8"}
    for g in face.groups.values():
        assert len(g.probabilities) == (14 if g.scheme == "utk14" else 8)
        assert sum(g.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert g.probabilities[g.label] == g.probability == max(g.probabilities.values())
    assert 0.5 <= face.detection_score <= 1.0 and face.regions is None  # a BlazeFace probability
    json.dumps(predictor.predict_one(ASTRONAUT).to_dict())  # plain JSON


def test_matches_the_model_on_the_aligned_chip(predictor):
    """The predictor's age is the model's answer on the chip, preprocessed as in training."""
    from deepage.checkpoint import model_from_checkpoint
    from deepage.preprocessing import images_to_batch

    model = model_from_checkpoint(predictor.checkpoint_path)
    chip = predictor.aligner.align_largest(load_rgb(ASTRONAUT)[0])
    with torch.no_grad():
        age = model.predict(model(images_to_batch([chip], model.spec.preprocessing))).age.item()
    assert predictor.predict_one(ASTRONAUT).faces[0].age == pytest.approx(age, abs=1e-5)


def test_no_face_is_not_an_error(predictor):
    result = predictor.predict_one(np.full((240, 320, 3), 128, np.uint8))
    assert result.error is None and result.faces == [] and (result.width, result.height) == (320, 240)


def test_no_detect_uses_the_whole_image(predictor):
    result = predictor.predict_one(np.full((50, 60, 3), 128, np.uint8), detect=False)
    assert len(result.faces) == 1 and result.faces[0].box == (0, 0, 60, 50)
    assert result.faces[0].detection_score is None


def test_bad_items_do_not_stop_the_others(predictor, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    results = predictor.predict([bad, ASTRONAUT])
    assert results[0].source == str(bad) and results[0].error and results[0].faces == []
    assert results[1].error is None and len(results[1].faces) == 1


def test_quantiles_of_the_age_distribution():
    probs = np.zeros(101)
    probs[30] = 1.0
    assert age_quantiles(probs, 0.1) == pytest.approx(29.6)
    assert age_quantiles(probs, 0.9) == pytest.approx(30.4)
    uniform = np.full(101, 1 / 101)
    assert age_quantiles(uniform, 0.5) == pytest.approx(50.0)
    # Batched: each row on its own; half the mass on 20 and half on 40 puts the median at the seam.
    split = np.zeros(101)
    split[[20, 40]] = 0.5
    assert age_quantiles(np.stack([probs, uniform, split]), 0.5) == pytest.approx([30.0, 50.0, 20.5])


def test_explain_maps_regions_back_to_the_image(tiny_checkpoint):
    p = Predictor.from_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match="attended regions"):
        p.predict_one(ASTRONAUT, explain=True)
    n = p.spec.preprocessing.input_size
    p._model.attended_regions = lambda x: torch.tensor([[[0.0, 0.0, n, n]]]).repeat(x.shape[0], 1, 1)
    crop = p.spec.preprocessing.crop_pct
    result = p.predict_one(np.zeros((100, 100, 3), np.uint8), detect=False, explain=True)
    margin = round(100 * (1 - crop) / 2)
    assert result.faces[0].regions == [(margin, margin, 100 - margin, 100 - margin)]
    # with detection, the whole model input maps onto (most of) the face chip, around her face (the box
    # checked by eye in test_faces.py; the detector's own box may be a pyramid step larger)
    region = p.predict_one(ASTRONAUT, explain=True).faces[0].regions[0]
    face = (179, 83, 267, 171)
    assert region[0] < face[0] and region[1] < face[1] and region[2] > face[2] and region[3] > face[3]


def test_model_file_errors(tmp_path, monkeypatch, tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "none.pt")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    with pytest.raises(ValueError, match="backend='onnx'"):
        Predictor.from_checkpoint(onnx_file, backend="torch")
    if importlib.util.find_spec("onnxruntime"):  # "auto" reads an .onnx file with ONNX Runtime
        with pytest.raises(ValueError, match=r"m\.onnx is not a readable ONNX model"):
            Predictor.from_checkpoint(onnx_file)
    with pytest.raises(ValueError, match="backend must be"):
        Predictor.from_checkpoint(tiny_checkpoint, backend="tensorrt")
    monkeypatch.setattr(predictor_module, "DEFAULT_MODEL", tmp_path / "default_model.pt")
    with pytest.raises(FileNotFoundError, match="bundled model .* is missing"):
        Predictor.default()


def test_an_unexpected_decoder_error_is_reported_not_raised(predictor, monkeypatch):
    def broken(item, name=None):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(deepage.crops, "load_rgb", broken)
    (result,) = predictor.predict([ASTRONAUT])
    assert result.error == "unexpected error: RuntimeError: decoder exploded" and result.faces == []


# ---- hostile inputs (issue 10) ----------------------------------------------------------------------------
BOMB_CHECK = """
import resource, sys
{first}
from deepage.inference.predictor import Predictor, load_rgb
from deepage.imageio import ImageDecodeError
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_rgb(sys.argv[1])
except ImageDecodeError as exc:
    print("refused:", exc.reason)
print("peak_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


@pytest.mark.parametrize("first", ["import cv2", ""])
def test_a_real_decompression_bomb_is_refused_before_decoding(bomb_png, first):
    """A valid 20000 x 20000 PNG of ~390 KB: refused from its header, whatever was imported first (OpenCV
    before deepage used to decode it in full: 3.1 GB). Run in a fresh process to measure its peak memory."""
    out = subprocess.run([sys.executable, "-c", BOMB_CHECK.format(first=first), str(bomb_png)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "refused: image too large" in out, out
    peak_mb = float(out.split("peak_mb")[1])
    assert peak_mb < 300, f"refusing the bomb raised the peak memory by {peak_mb:.0f} MB"


@pytest.mark.parametrize("shape", [(1, 20000, 3), (20000, 1, 3), (8, 8, 3)])
def test_thin_or_tiny_images_are_refused_by_name(predictor, tmp_path, shape):
    path = tmp_path / "strip.png"
    Image.fromarray(np.full(shape, 128, np.uint8)).save(path)
    for detect in (True, False):
        (result,) = predictor.predict([path], detect=detect)
        assert result.error == (f"image too small or too thin: {shape[1]}x{shape[0]} pixels (each side must "
                                "be at least 16)") and result.faces == []


def test_predict_iter_streams_in_order_and_workers_agree(tiny_checkpoint, tmp_path):
    """Batches mix crops of several images; worker processes give the same answers, in input order."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    crop = np.asarray(Image.open(ASTRONAUT).convert("RGB"))[60:200, 160:290]
    items = [ASTRONAUT, bad, crop] * 12  # 36 images: more than one model batch
    with Predictor.from_checkpoint(tiny_checkpoint, workers=1) as one:
        stream = one.predict_iter(items)
        first = next(stream)
        assert first.source == str(ASTRONAUT) and len(first.faces) == 1
        serial = [first, *stream]
    threads = []
    real_threads = predictor_module.torch_threads

    def recording(n):
        threads.append(n)
        return real_threads(n)

    with Predictor.from_checkpoint(tiny_checkpoint, workers=2) as two:
        predictor_module.torch_threads, before = recording, torch.get_num_threads()
        try:
            parallel = two.predict(items)
        finally:
            predictor_module.torch_threads = real_threads
        assert torch.get_num_threads() == before  # restored after each batch
    # while the two workers find faces, this process's batch work keeps to the cores they leave
    assert threads and set(threads) == {predictor_module.model_threads(2)}
    assert [r.source for r in parallel] == [r.source for r in serial]
    assert [r.error for r in parallel] == [r.error for r in serial]
    assert [f.age for r in parallel for f in r.faces] == pytest.approx([f.age for r in serial for f in r.faces],
                                                                       abs=1e-5)


def test_torch_threads_are_set_for_the_block_and_restored():
    before = torch.get_num_threads()
    with predictor_module.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with predictor_module.torch_threads(None):
        assert torch.get_num_threads() == before


def test_the_model_leaves_the_face_finding_workers_their_cores(monkeypatch, tiny_checkpoint):
    pytest.importorskip("onnxruntime")
    from deepage.inference.predictor import model_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert [model_threads(w) for w in (1, 2, 3, 4, 8)] == [None, 2, 1, 1, 1]
    with Predictor.from_checkpoint(tiny_checkpoint, backend="onnx", workers=3) as p:
        assert p._session.get_session_options().intra_op_num_threads == 1
    with Predictor.from_checkpoint(tiny_checkpoint, backend="onnx", workers=1) as p:
        assert p._session.get_session_options().intra_op_num_threads == 4

"""Hostile inputs, round two (issue 17): stalled uploads, decoder bombs that pass the header check, paths
that are not files, and the errors that were tracebacks or unclear.

The corpus is generated here (nothing binary is committed): the recipes of the issue, disguised formats
and a few dozen seeded mutations of small JPEG / PNG / WebP files. Memory is measured in a fresh process
(peak RSS), network tests use 127.0.0.1 only, and every slow-client test is bounded to a few seconds.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from deepage.cli import main
from deepage.imageio import ImageDecodeError, decode_image, read_image_file
from deepage.inference.server import create_app
from tests.test_server import LiveServer, assert_json_error, astronaut_jpeg, png_claiming_size, post_file

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "deepage" / "assets" / "astronaut.jpg"
EMPTY_SCAN = bytes.fromhex("FFDA0008010100013F00")  # an SOS header with no entropy-coded data after it


# ---- the corpus -------------------------------------------------------------------------------------------
def _encoded(fmt: str, side: int = 96, seed: int = 0, **kw) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def scan_bomb(side: int = 256, scans: int = 500_000) -> bytes:
    """The issue's recipe: a progressive JPEG with ``scans`` empty scans before its end marker (5 MB)."""
    return _encoded("JPEG", side, progressive=True)[:-2] + EMPTY_SCAN * scans + b"\xff\xd9"


def png_with_idat_length(length: int) -> bytes:
    """The issue's recipe: signature and IHDR, then an IDAT chunk claiming ``length`` bytes, then 2,000."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", length) + b"IDAT" + b"\0" * 2000


def png_flipped_length() -> bytes:
    """A real PNG whose IDAT length field had its top byte flipped (the issue's "random flip")."""
    data = bytearray(_encoded("PNG", 64))
    pos = data.index(b"IDAT") - 4
    data[pos] ^= 0x22
    return bytes(data)


def psd_file(side: int = 32) -> bytes:
    """A minimal valid PSD (RGB, 8 bit, raw): Pillow reads it, OpenCV does not."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, side, side, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\x80" * (3 * side * side)


def disguised() -> dict[str, tuple[bytes, str]]:
    """``name → (bytes, expected reason pattern)`` for the recipes and disguised formats."""
    webp = _encoded("WEBP", 96)
    return {
        "scans.jpg": (scan_bomb(), r"JPEG with 500,\d{3} scans exceeds the limit of 256"),
        "idat2g.png": (png_with_idat_length(0x7FFFFFFF), r"chunk IDAT .* declares 2,147,483,647 bytes"),
        "idat1g.png": (png_with_idat_length(0x40000000), r"chunk IDAT .* declares 1,073,741,824 bytes"),
        "flip.png": (png_flipped_length(), r"truncated or corrupt PNG"),
        "huge.png": (png_claiming_size(20_000, 20_000),
                     r"^image too large: 400,000,000 pixels exceeds the limit of 64,000,000$"),
        "icon.jpg": (_encoded("ICO", 32), r"^unsupported format \(ICO;"),
        "paint.jpg": (_encoded("PCX", 32), r"^unsupported format \(PCX;"),
        "layers.png": (psd_file(), r"^unsupported format \(PSD;"),
        "cut.webp": (webp[: len(webp) // 2], r"^truncated or corrupt WebP"),
    }


def mutations(n_each: int = 8, seed: int = 17) -> dict[str, bytes]:
    """Seeded byte flips of small JPEG, progressive JPEG, PNG and WebP files (``name → bytes``)."""
    rng = np.random.default_rng(seed)
    sources = {"jpg": _encoded("JPEG", 96), "pjpg": _encoded("JPEG", 96, progressive=True),
               "png": _encoded("PNG", 96), "webp": _encoded("WEBP", 96)}
    out = {}
    for kind, data in sources.items():
        for k in range(n_each):
            mutated = bytearray(data)
            for _ in range(4):
                mutated[int(rng.integers(len(data) // 10, len(data)))] = int(rng.integers(0, 256))
            out[f"m{k}_{kind}.{'png' if kind == 'png' else 'webp' if kind == 'webp' else 'jpg'}"] = bytes(mutated)
    return out


# ---- decoders (items 2, 3, 7, 8) ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(disguised()))
def test_recipes_and_disguised_formats_are_refused_with_their_reason(name):
    data, pattern = disguised()[name]
    t = time.monotonic()
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, name)
    assert info.value.name == name
    assert re.search(pattern, info.value.reason), info.value.reason
    assert "178956970" not in info.value.reason  # Pillow's limit is not deepage's
    assert time.monotonic() - t < 2  # the scan bomb kept libjpeg busy for minutes


MEMORY_CHECK = """
import resource, sys
from deepage.crops import load_rgb
from deepage.imageio import ImageDecodeError
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:]:
    try:
        load_rgb(path)
    except ImageDecodeError as exc:
        print("refused:", exc.reason)
print("peak_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def test_chunk_lengths_past_the_file_allocate_nothing(tmp_path):
    """A 2 KB PNG claiming a 2 GB IDAT took 2.15 GB in the decoder (1 GB for 0x40000000; a flipped length
    574 MB): now refused from its chunk walk. Peak memory measured in a fresh process, as the bomb test
    does; the scan bomb rides along."""
    recipes = [png_with_idat_length(0x7FFFFFFF), png_with_idat_length(0x40000000), png_flipped_length(),
               scan_bomb()]
    paths = []
    for k, data in enumerate(recipes):
        paths.append(tmp_path / f"r{k}.bin")
        paths[-1].write_bytes(data)
    out = subprocess.run([sys.executable, "-c", MEMORY_CHECK, *map(str, paths)], capture_output=True,
                         text=True, timeout=120, check=True, cwd=REPO).stdout
    assert out.count("refused:") == 4, out
    peak_mb = float(out.split("peak_mb")[1])
    assert peak_mb < 200, f"the recipes raised the peak memory by {peak_mb:.0f} MB"


def test_decoder_noise_is_one_line_naming_the_file(capfd, caplog):
    """libjpeg's and libpng's own lines (~100 unnamed ones over the fuzz corpus) no longer reach standard
    error: a file decoded despite damage is one WARNING naming it; a failed one says why in its error."""
    caplog.set_level(logging.WARNING, logger="deepage")
    jpeg = bytearray(_encoded("JPEG", 96))
    jpeg[len(jpeg) // 2: len(jpeg) // 2 + 40] = b"\0" * 40  # damaged entropy-coded data
    decode_image(bytes(jpeg), "damaged.jpg")
    png = bytearray(_encoded("PNG", 96))
    png[-40] ^= 0xFF  # inside the compressed data: zlib's check fails
    with pytest.raises(ImageDecodeError, match=r"corrupt image \(decoder failed: libpng error"):
        decode_image(bytes(png), "damaged.png")
    assert capfd.readouterr().err == ""
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("deepage")]
    assert len(ours) == 1 and ours[0].startswith("damaged.jpg: decoded despite damage (decoder said: Corrupt JPEG")


# ---- paths that are not files (item 4, item 10) -------------------------------------------------------------
def _read_in_thread(path: Path, **kw) -> ImageDecodeError:
    """``read_image_file(path)`` in a thread given 5 s: a FIFO used to block the caller for good."""
    got: dict = {}

    def run() -> None:
        try:
            read_image_file(path, **kw)
        except ImageDecodeError as exc:
            got["exc"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), f"reading {path} blocked"
    return got["exc"]


def test_only_regular_files_of_a_bounded_size_are_read(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    assert _read_in_thread(fifo).reason == "not a regular file (a FIFO)"
    assert _read_in_thread(Path("/dev/zero")).reason == "not a regular file (a device)"
    (tmp_path / "dir.jpg").mkdir()
    assert _read_in_thread(tmp_path / "dir.jpg").reason == "not a regular file (a folder)"
    sparse = tmp_path / "sparse.jpg"
    with open(sparse, "wb") as fh:
        fh.truncate(3 * 2**30)  # 3 GiB, no block written: took 4.0 GB of memory before "not an image"
    exc = _read_in_thread(sparse)
    assert exc.reason == "file too large: 3,072.0 MiB exceeds the limit of 64.0 MiB" and exc.name == str(sparse)
    small = tmp_path / "small.jpg"
    small.write_bytes(b"\xff\xd8" + b"\0" * 998)
    assert _read_in_thread(small, max_bytes=100).reason == "file too large: 1,000 bytes exceeds the limit of 100 bytes"


def test_predict_names_a_fifo_a_device_and_a_folder_in_one_line_each(tmp_path, tiny_checkpoint, capsys):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    (tmp_path / "folder.jpg").mkdir()  # produced no line at all
    t = time.monotonic()
    rc = main(["predict", str(fifo), "/dev/zero", str(tmp_path / "folder.jpg"), "--model", str(tiny_checkpoint),
               "--format", "json", "--no-detect"])
    assert rc == 1 and time.monotonic() - t < 60
    captured = capsys.readouterr()
    errors = {json.loads(line)["source"]: json.loads(line)["error"] for line in captured.out.splitlines()}
    assert errors == {str(fifo): "not a regular file (a FIFO)", "/dev/zero": "not a regular file (a device)",
                      str(tmp_path / "folder.jpg"): "not a regular file (a folder)"}
    assert len(captured.err.strip().splitlines()) == 3


def test_skip_existing_tries_failed_images_again(tmp_path, tiny_checkpoint, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(ASTRONAUT.read_bytes())
    (photos / "b.jpg").write_bytes(b"not yet a photo")
    out = tmp_path / "ages.json"
    args = ["predict", str(photos), "--model", str(tiny_checkpoint), "--format", "json", "-o", str(out),
            "--no-detect"]
    assert main(args) == 1
    capsys.readouterr()
    (photos / "b.jpg").write_bytes(ASTRONAUT.read_bytes())  # mended: the rerun must answer it (it was "done")
    assert main(args + ["--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert f"trying again 1 images that failed in {out}" in err and "skipped 1 images" in err
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(Path(a["source"]).name, a["error"]) for a in answers] == [("a.jpg", None), ("b.jpg", None)]


# ---- the fuzz corpus through Predictor and the CLI (items 2, 3, 7) --------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, (data, _) in disguised().items():
        (folder / name).write_bytes(data)
    for name, data in mutations().items():
        (folder / name).write_bytes(data)
    (folder / "good.jpg").write_bytes(_encoded("JPEG", 96))
    return folder


def test_fuzz_corpus_through_predictor_and_cli(corpus, tiny_checkpoint, capfd):
    """A few dozen hostile files: every bad one is one line on stderr naming it, nothing else reaches
    standard error (no decoder noise), the good one is answered, and the run is quick."""
    from deepage.inference.predictor import Predictor

    files = sorted(p for p in corpus.iterdir())
    t = time.monotonic()
    results = Predictor.from_checkpoint(tiny_checkpoint, backend="torch", detect=False).predict(files)
    assert time.monotonic() - t < 30
    assert {Path(r.source).name for r in results} == {p.name for p in files}
    for name, (_, _pattern) in disguised().items():
        assert next(r for r in results if Path(r.source).name == name).error, name
    assert next(r for r in results if r.source.endswith("good.jpg")).error is None
    capfd.readouterr()
    rc = main(["predict", str(corpus), "--model", str(tiny_checkpoint), "--format", "json", "--no-detect",
               "--backend", "torch"])
    captured = capfd.readouterr()
    answers = [json.loads(line) for line in captured.out.splitlines()]
    failed = [a for a in answers if a["error"]]
    assert rc == 1 and len(answers) == len(files)
    lines = captured.err.strip().splitlines()
    refused = [ln for ln in lines if ln.startswith("deepage predict: ")]
    warned = [ln for ln in lines if "decoded despite damage" in ln]
    assert len(refused) == len(failed) and len(refused) + len(warned) == len(lines), lines
    assert all(any(a["source"] in ln for a in failed) for ln in refused)


def test_fuzz_corpus_through_the_server_is_4xx_json(predictor, corpus):
    with LiveServer(create_app(predictor, max_upload_bytes=8 * 2**20)) as server:
        for path in sorted(corpus.iterdir()):
            if path.name == "good.jpg" or path.name.startswith("m"):
                continue
            r = post_file(server.url, path.read_bytes(), name=path.name)
            assert_json_error(r, 415, rf"could not read {path.name}: ")
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["in_flight"] == 0 and health["uploading"] == 0


# ---- the server (items 1, 2, 9, 10) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    from deepage.inference.predictor import Predictor

    return Predictor.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def photo() -> bytes:
    return astronaut_jpeg()


def _stalled_upload(url: str) -> socket.socket:
    """The issue's recipe: the headers of a multipart POST of 100,000 bytes, then ``--b``, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 100000\r\n\r\n--b\r\n")
    return sock


def _health(server: LiveServer) -> dict:
    return httpx.get(f"{server.url}/healthz", timeout=5).json()


def test_stalled_uploads_do_not_lock_the_server_out(predictor, photo):
    """Stalled uploads held every model slot with no time limit (each valid request: 503). Now they hold
    only upload slots, for at most ``upload_timeout_s``, and a valid request is served beside them."""
    app = create_app(predictor, max_concurrency=2, max_uploads=6, upload_timeout_s=3.0)
    with LiveServer(app) as server:
        stalled = [_stalled_upload(server.url) for _ in range(4)]
        try:
            deadline = time.monotonic() + 5
            while _health(server)["uploading"] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert _health(server)["in_flight"] == 0  # a stalled upload holds no model slot
            t = time.monotonic()
            assert post_file(server.url, photo).status_code == 200
            assert time.monotonic() - t < 3
            stalled += [_stalled_upload(server.url) for _ in range(2)]  # every upload slot taken
            time.sleep(0.2)
            assert_json_error(post_file(server.url, photo), 503, r"6 uploads already being received")
            replies = [s.recv(4096) for s in stalled]  # cut off at the deadline, the slot given back
            assert all(r.startswith(b"HTTP/1.1 408") for r in replies), replies
        finally:
            for s in stalled:
                s.close()
        health = _health(server)
        assert health["uploading"] == 0 and health["upload_timed_out"] == 6
        assert post_file(server.url, photo).status_code == 200


class StuckOnce:
    """A predictor whose first call never ends (until ``release``), as a decode that runs for minutes."""

    def __init__(self, inner) -> None:
        self.inner, self.checkpoint_path = inner, inner.checkpoint_path
        self.release = threading.Event()
        self.calls = 0

    def predict_one(self, image, detect=None, explain=False):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(30)
        return self.inner.predict_one(image, detect=detect, explain=explain)


def test_a_timed_out_prediction_does_not_hold_the_worker(predictor, photo):
    """The worker stayed busy with a decode the request had given up on: every later request got 504."""
    stuck = StuckOnce(predictor)
    with LiveServer(create_app(stuck, max_concurrency=4, request_timeout_s=1.0, workers=1)) as server:
        try:
            assert_json_error(post_file(server.url, photo), 504, r"did not finish within 1 s")
            t = time.monotonic()
            assert post_file(server.url, photo).status_code == 200
            assert time.monotonic() - t < 1.0
            assert _health(server)["in_flight"] == 1  # the stuck one still holds its admission slot
        finally:
            stuck.release.set()


@pytest.mark.parametrize("body", [b"--xyz", b"--xyz\r\ngarbage", b"\r\n--xyz\r\n",
                                  b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\nab'])
def test_a_multipart_body_cut_short_is_400_malformed(live_small, body):
    """These got 422 "multipart field 'file' is missing", where the README documents 400."""
    r = httpx.post(f"{live_small.url}/predict", content=body,
                   headers={"content-type": "multipart/form-data; boundary=xyz"}, timeout=10)
    assert_json_error(r, 400, r"malformed multipart body: it does not end with the closing delimiter '--xyz--'")


@pytest.fixture(scope="module")
def live_small(predictor):
    with LiveServer(create_app(predictor, max_upload_bytes=128 * 1024, max_concurrency=4)) as server:
        yield server


def test_serve_logs_its_own_lines(monkeypatch, capfd):
    """``deepage.serve`` was never configured: no "serving on" line, and no client-disconnect note."""
    import uvicorn

    import deepage.inference.server as server

    class Fake:
        checkpoint_path, backend = Path("/somewhere/model.onnx"), "onnx"

    def fake_run(app, **kw):
        logging.getLogger("deepage.serve").info("client 1.2.3.4 disconnected during the upload; request dropped")

    monkeypatch.setattr(server, "load_predictor", lambda model: Fake())
    monkeypatch.setattr(server, "create_app", lambda *a, **kw: None)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    try:
        server.serve(port=8123)
        server.serve(port=8123)  # configured once: no doubled lines
    finally:
        root = logging.getLogger("deepage")
        root.handlers = [h for h in root.handlers if not getattr(h, "_deepage_serve", False)]
        root.setLevel(logging.NOTSET)
    err = capfd.readouterr().err.splitlines()
    assert err.count("INFO:     serving model.onnx (onnx backend) on http://127.0.0.1:8123/") == 2
    assert err.count("INFO:     client 1.2.3.4 disconnected during the upload; request dropped") == 2
    assert len(err) == 4 and "/somewhere" not in "".join(err)


# ---- one-line errors, exit status 2 (items 5, 6, 10) -----------------------------------------------------------
def _one_error(capsys, command: str, *patterns: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"deepage {command}: error: ") and err.count("\n") == 1, err
    for pattern in patterns:
        assert re.search(pattern, err), err
    assert "Traceback" not in err and len(err) < 600
    return err


def _h5_without(path: Path, missing: str) -> Path:
    with h5py.File(path, "w") as f:
        for name in ("images", "age", "gender", "race"):
            if name != missing:
                f.create_dataset(name, data=np.zeros((4, 16, 16, 3) if name == "images" else (4,), np.uint8))
        f.attrs.update({"complete": True, "size": 16})
    return path


@pytest.mark.parametrize("missing", ["age", "images"])
def test_a_complete_file_without_its_datasets_is_one_line(tmp_path, tiny_checkpoint, capsys, missing):
    data = _h5_without(tmp_path / "odd.h5", missing)
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(data), "--out", str(tmp_path / "e")]) == 2
    _one_error(capsys, "evaluate", rf"odd\.h5 is not a complete deepage ingest: no dataset '{missing}'")
    assert main(["train", f"data={data}", f"out_dir={tmp_path}", "model=mobilenet_v2_tiny"]) == 2
    _one_error(capsys, "train", rf"no dataset '{missing}'")


def test_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: [unclosed\n")
    assert main(["train", "--config", str(config)]) == 2
    _one_error(capsys, "train", r"bad\.yaml: not valid YAML \(.* at line 2, column 1\)")
    assert main(["train", "model=[unclosed", f"out_dir={tmp_path}"]) == 2
    _one_error(capsys, "train", r"override 'model=\[unclosed': not valid YAML")


def _tampered(tiny_checkpoint: Path, path: Path, edit) -> Path:
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def test_a_spec_without_preprocessing_and_wrong_weights_are_one_line(tmp_path, tiny_checkpoint, capsys):
    no_pre = _tampered(tiny_checkpoint, tmp_path / "nopre.pt", lambda c: c["spec"].pop("preprocessing"))
    assert main(["predict", str(ASTRONAUT), "--model", str(no_pre)]) == 2
    _one_error(capsys, "predict", r"nopre\.pt: its model spec is incomplete or invalid \(no 'preprocessing'\)")

    def wrong(ckpt: dict) -> None:
        state = ckpt["state_dict"]
        for key in list(state)[:5]:
            state[key + ".other"] = state.pop(key)
        head = [k for k in state if k.startswith("head.")][0]
        state[head] = torch.zeros(7, *state[head].shape[1:])

    bad = _tampered(tiny_checkpoint, tmp_path / "wrong.pt", wrong)
    assert main(["predict", str(ASTRONAUT), "--model", str(bad), "--backend", "torch"]) == 2
    _one_error(capsys, "predict", r"wrong\.pt: the weights do not fit model 'mobilenet_v2_tiny': 5 missing \(",
               r"\.\.\. \(2 more\)", r"5 unexpected", r"1 of another shape \(head\.")


def test_files_that_are_not_hdf5_are_named(tmp_path, tiny_checkpoint, capsys):
    fake = tmp_path / "fake.h5"
    fake.write_text("not hdf5")
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(fake)]) == 2
    _one_error(capsys, "evaluate", r"fake\.h5 is not an HDF5 file")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "1_0_0_x.jpg").write_bytes(ASTRONAUT.read_bytes())
    assert main(["ingest", str(tmp_path / "imgs"), "-o", str(fake), "--workers", "1"]) == 2
    _one_error(capsys, "ingest", r"fake\.h5 is not an HDF5 file.*--overwrite")
    assert main(["ingest", str(tmp_path / "imgs"), "-o", str(tmp_path), "--workers", "1"]) == 2
    _one_error(capsys, "ingest", r"is a folder: give the HDF5 file to write")


def test_ingest_refuses_an_empty_folder_and_bad_worker_counts(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o.h5"
    assert main(["ingest", str(tmp_path / "empty"), "-o", str(out), "--workers", "1"]) == 2
    _one_error(capsys, "ingest", r"empty holds no image files")
    assert not out.exists() and not list(tmp_path.glob("o.h5*"))
    for workers in ("0", "-3"):
        assert main(["ingest", str(tmp_path / "empty"), "-o", str(out), "--workers", workers]) == 2
        _one_error(capsys, "ingest", rf"--workers must be at least 1 .*got {workers}")


def test_an_onnx_file_whose_graph_does_not_fit_its_spec_is_refused_at_load(tmp_path, tiny_checkpoint):
    """It loaded, then failed at the first prediction with "size mismatch ... vec (101)"."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from deepage.inference.predictor import Predictor

    spec = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["spec"]
    size = spec["preprocessing"]["input_size"]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["outputs"], axes=[2, 3], keepdims=0)], "other",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    entry = model.metadata_props.add()
    entry.key, entry.value = "deepage_spec", json.dumps(spec)
    path = tmp_path / "other.onnx"
    onnx.save(model, path)
    with pytest.raises(ValueError, match=r"other\.onnx: the ONNX graph's output \(outputs \['batch', 3\]\) does "
                                         r"not fit its deepage spec, which needs outputs \[B, 101\]"):
        Predictor.from_checkpoint(path)


def test_a_decompression_bomb_refusal_escaping_a_command_exits_2(monkeypatch, capsys):
    import deepage.inference.predict_cli as predict_cli

    def bomb(*a, **kw):
        raise Image.DecompressionBombError("Image size (400000000 pixels) exceeds limit of 178956970 pixels")

    monkeypatch.setattr(predict_cli, "run_predict", bomb)
    assert main(["predict", "x.png"]) == 2
    _one_error(capsys, "predict", r"exceeds limit")


UNGUARDED = """
import sys
sys.path.insert(0, {repo!r})
from deepage.inference.predictor import Predictor
predictor = Predictor.from_checkpoint({ckpt!r}, backend="torch", workers=2, detect=False)
print(predictor.predict([{photo!r}])[0].error)
"""


def test_workers_in_a_script_without_a_main_guard_is_one_line(tmp_path, tiny_checkpoint):
    """It died with BrokenProcessPool and a traceback per worker (multiprocessing's "bootstrapping" text)."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(repo=str(REPO), ckpt=str(tiny_checkpoint), photo=str(ASTRONAUT)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("Traceback") == 1 and "bootstrapping phase" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: Predictor(workers=2): the worker processes died"), done.stderr
    assert 'build the predictor under `if __name__ == "__main__":`' in last and last.endswith("or use workers=1")

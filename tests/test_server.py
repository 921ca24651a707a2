"""``deepage serve``: a real uvicorn server on a loopback port, driven by httpx and by headless Chromium.

Each server runs in a background thread (``uvicorn.Server.run`` on a socket bound to a free port) around
an app from :func:`deepage.inference.server.create_app` and a predictor loaded from the tiny checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

import deepage
from deepage.inference.server import create_app

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class LiveServer:
    """uvicorn serving ``app`` on ``127.0.0.1:<free port>`` in a daemon thread (a context manager)."""

    def __init__(self, app) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn listens on this very socket
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not shut down"


class BlockingPredictor:
    """Wraps a predictor; ``predict_one`` signals ``entered`` and then waits for ``release``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.checkpoint_path = inner.checkpoint_path
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict_one(self, image, detect=None, explain=False):
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise RuntimeError("test never released the blocking predictor")
        return self.inner.predict_one(image, detect=detect, explain=explain)


def astronaut_jpeg() -> bytes:
    """A real face photo (NASA, public domain): the bundled copy, else scikit-image's, as JPEG bytes."""
    if ASTRONAUT.is_file():
        return ASTRONAUT.read_bytes()
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression-bomb stand-in)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    from deepage.inference.predictor import Predictor

    return Predictor.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def live(predictor):
    """One server for the plain request tests (a 128 KiB upload limit keeps the 413 tests small)."""
    with LiveServer(create_app(predictor, max_upload_bytes=128 * 1024, max_concurrency=4)) as server:
        yield server


@pytest.fixture(scope="module")
def photo() -> bytes:
    return astronaut_jpeg()


def post_file(url: str, data: bytes, name: str = "photo.jpg", mime: str = "image/jpeg",
              **params) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data, mime)}, params=params, timeout=30)


def assert_json_error(response: httpx.Response, status: int, pattern: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert re.search(pattern, body["error"], re.IGNORECASE), body["error"]


def test_healthz_names_the_model_but_no_path(live, tiny_checkpoint):
    r = httpx.get(f"{live.url}/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["version"] == deepage.__version__
    assert body["model"]["model_file"] == "best.pt" and body["model"]["model"] == "mobilenet_v2_tiny"
    assert str(tiny_checkpoint.parent) not in r.text  # the server's folders are nobody's business
    assert body["max_upload_bytes"] == 128 * 1024 and body["in_flight"] == 0


def test_predict_a_face_photo(live, photo, predictor, tiny_checkpoint):
    r = post_file(live.url, photo)
    assert r.status_code == 200, r.text
    body = r.json()
    width, height = Image.open(io.BytesIO(photo)).size
    assert (body["width"], body["height"]) == (width, height)
    assert body["error"] is None and body["filename"] == "photo.jpg"
    assert len(body["faces"]) == 1, body["faces"]
    face = body["faces"][0]
    x0, y0, x1, y1 = face["box"]
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    # The astronaut's face lies around x 170-290, y 60-200 of the 512 x 512 photo.
    assert 150 < (x0 + x1) / 2 < 300 and 50 < (y0 + y1) / 2 < 220, face["box"]
    assert 0 <= face["age_low"] <= face["age"] <= face["age_high"] <= 120
    for scheme, n_classes in (("utk14", 14), ("utk8", 8)):
        group = face["groups"][scheme]
        assert len(group["probabilities"]) == n_classes
        assert sum(group["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)  # each rounded to 1e-4
        assert group["label"] == max(group["probabilities"], key=group["probabilities"].get)
    assert set(body["timing"]) == {"queue_ms", "inference_ms", "total_ms"}
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0
    # The service returns what the library returns for the same bytes.
    direct = predictor.predict_one(photo).to_dict()
    assert face["age"] == pytest.approx(direct["faces"][0]["age"], abs=1e-4)


def test_predict_without_detection_uses_the_whole_image(live, photo):
    r = post_file(live.url, photo, detect="false")
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert len(faces) == 1
    assert faces[0]["box"] == pytest.approx([0, 0, 512, 512], abs=1)


def test_raw_image_body_is_accepted(live, photo):
    r = httpx.post(f"{live.url}/predict", content=photo, headers={"content-type": "image/jpeg"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["width"] == 512


def test_upload_over_the_limit_is_413_from_content_length(live):
    assert_json_error(post_file(live.url, b"\xff" * 200_000), 413, r"exceeds the limit of 131,072 bytes")


def test_upload_over_the_limit_is_413_while_reading_a_chunked_body(live):
    def chunks():  # no Content-Length: the body is sent chunked and counted as it arrives
        for _ in range(40):
            yield b"\0" * 8192

    r = httpx.post(f"{live.url}/predict", content=chunks(), headers={"content-type": "image/jpeg"},
                   timeout=30)
    assert "content-length" not in r.request.headers
    assert_json_error(r, 413, r"exceeds the limit")


def test_not_an_image_is_415_naming_the_reason(live):
    r = post_file(live.url, b"name,age\nalice,31\n", name="ages.csv", mime="text/csv")
    assert_json_error(r, 415, r"could not read ages\.csv: not an image \(unrecognised format\)")


def test_truncated_jpeg_is_415(live, photo):
    assert_json_error(post_file(live.url, photo[: len(photo) // 2]), 415, r"truncated JPEG")


def test_huge_dimensions_are_415(live):
    assert_json_error(post_file(live.url, png_claiming_size(100_000, 100_000), mime="image/png"), 415,
                      r"too large")


@pytest.mark.parametrize(("kwargs", "status", "pattern"), [
    ({}, 415, r"expected multipart/form-data"),                                        # empty body
    ({"files": {"photo": ("a.jpg", b"x", "image/jpeg")}}, 422, r"'file' is missing.*photo"),
    ({"data": {"file": "not a file"}, "files": {"other": ("a", b"x")}}, 422, r"must be a file upload"),
    ({"content": b"garbage\r\n--xyz\r\n", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
     400, r"malformed multipart"),
    ({"content": b"--xyz--\r\n", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
     422, r"'file' is missing \(the form is empty\)"),
    ({"content": b"--xyz\r\n", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},  # issue 17:
     400, r"malformed multipart body: it does not end with the closing delimiter '--xyz--'"),        # was 422
    ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400, r"missing boundary"),
    ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 415, r"empty"),
    ({"json": {"file": "x"}}, 415, r"got Content-Type 'application/json'"),
])
def test_bad_requests_are_clean_4xx(live, kwargs, status, pattern):
    assert_json_error(httpx.post(f"{live.url}/predict", timeout=30, **kwargs), status, pattern)


def test_bad_query_and_unknown_paths_are_json(live, photo):
    assert_json_error(post_file(live.url, photo, detect="maybe"), 422, r"detect")
    assert_json_error(httpx.get(f"{live.url}/nowhere"), 404, r"not found")
    assert_json_error(httpx.get(f"{live.url}/predict"), 405, r"method not allowed")


@contextlib.contextmanager
def one_request_held(server: LiveServer, blocking: BlockingPredictor, photo: bytes):
    """Take the one slot of ``server`` with a request held inside ``blocking`` until the block exits; then
    let it go and check that it succeeded."""
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(r=post_file(server.url, photo)))
    worker.start()
    try:
        assert blocking.entered.wait(10), "the first request never reached the predictor"
        yield
    finally:
        blocking.release.set()
        worker.join(30)
    assert first["r"].status_code == 200


def test_busy_server_answers_503_and_stays_healthy(predictor, photo):
    blocking = BlockingPredictor(predictor)
    with LiveServer(create_app(blocking, max_concurrency=1)) as server:
        with one_request_held(server, blocking, photo):
            second = post_file(server.url, photo)
            assert_json_error(second, 503, r"server busy")
            assert second.headers["retry-after"] == "1"
            health = httpx.get(f"{server.url}/healthz", timeout=5)  # the event loop is not blocked
            assert health.json()["in_flight"] == 1 and health.json()["rejected_busy"] == 1
        assert httpx.get(f"{server.url}/healthz").json()["in_flight"] == 0
        assert post_file(server.url, photo).status_code == 200  # the slot was given back


def test_slow_prediction_is_504_and_keeps_its_slot_until_done(predictor, photo):
    blocking = BlockingPredictor(predictor)
    with LiveServer(create_app(blocking, max_concurrency=1, request_timeout_s=0.3)) as server:
        try:
            assert_json_error(post_file(server.url, photo), 504, r"did not finish within 0.3 s")
            # The thread still runs, so the slot is still taken: no unbounded pile-up behind timeouts.
            assert httpx.get(f"{server.url}/healthz").json()["in_flight"] == 1
            assert_json_error(post_file(server.url, photo), 503, r"busy")
        finally:
            blocking.release.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/healthz").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{server.url}/healthz").json()["in_flight"] == 0


def test_server_survives_a_barrage_of_bad_input(predictor, photo):
    with LiveServer(create_app(predictor, max_upload_bytes=256 * 1024)) as server:
        bad = [b"", photo[:100], photo[:-10], b"\x89PNG\r\n\x1a\n" + b"\0" * 50,
               png_claiming_size(70_000, 70_000),
               np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes(), b"\xff" * 300_000]
        codes = [post_file(server.url, data).status_code for data in bad]
        assert all(400 <= c < 500 for c in codes), codes
        assert codes[-1] == 413
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["status"] == "ok" and health["in_flight"] == 0
        assert post_file(server.url, photo).status_code == 200


def _raw(url: str, head: str, body: bytes = b"", timeout: float = 5.0, close_after_send: bool = False) -> bytes:
    """Send ``head`` (request line and headers, CRLF-joined) and ``body`` on a raw socket; the reply's first
    bytes (b"" when ``close_after_send``: the client hangs up mid-request)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        if close_after_send:
            return b""
        return sock.recv(65536)


def _post_head(length: int, content_type: str = "image/jpeg") -> str:
    return f"POST /predict HTTP/1.1\nHost: test\nContent-Type: {content_type}\nContent-Length: {length}"


def test_an_oversized_upload_is_refused_from_its_header_alone(live):
    """413 on the declared length: the 1 GB body is never sent, and the answer does not wait for it."""
    t = time.monotonic()
    reply = _raw(live.url, _post_head(10**9))
    assert reply.startswith(b"HTTP/1.1 413") and time.monotonic() - t < 3, reply[:200]


def test_busy_server_refuses_before_reading_the_body(predictor, photo):
    """Admission comes before the upload: a client beyond the limit gets 503 at once, although it has not
    sent (and never sends) its body; uploads held in memory stay under the limit x the upload cap."""
    blocking = BlockingPredictor(predictor)
    with LiveServer(create_app(blocking, max_concurrency=1)) as server:
        with one_request_held(server, blocking, photo):
            t = time.monotonic()
            replies = [_raw(server.url, _post_head(5 * 2**20)) for _ in range(5)]
            assert all(r.startswith(b"HTTP/1.1 503") for r in replies), replies
            assert time.monotonic() - t < 5
        assert httpx.get(f"{server.url}/healthz").json()["rejected_busy"] == 5


@pytest.mark.parametrize("content_type", ["image/jpeg", "multipart/form-data; boundary=xyz"])
def test_a_client_gone_mid_upload_is_one_log_line(live, caplog, content_type):
    caplog.set_level(logging.INFO)
    before = httpx.get(f"{live.url}/healthz").json()["client_gone"]
    part = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    _raw(live.url, _post_head(100_000, content_type), part + b"\0" * 1000, close_after_send=True)
    deadline = time.monotonic() + 10
    while httpx.get(f"{live.url}/healthz").json()["client_gone"] == before:
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.05)
    ours = [r for r in caplog.records if r.name.startswith("deepage")]
    assert [r.getMessage() for r in ours] == ["client 127.0.0.1 disconnected during the upload; request dropped"]
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert httpx.get(f"{live.url}/healthz").json()["in_flight"] == 0  # its slot was given back


def test_a_real_bomb_and_a_thin_strip_are_415_at_once(predictor, bomb_png, photo):
    """A valid 20000 x 20000 PNG (~390 KB) is refused from its header (it used to take 3.2 GB and 4 s), and a
    1 x 20000 strip gets a 415 naming the problem (it used to be a 500)."""
    with LiveServer(create_app(predictor)) as server:
        t = time.monotonic()
        r = httpx.post(f"{server.url}/predict", content=bomb_png.read_bytes(),
                       headers={"content-type": "image/png"}, timeout=30)
        assert_json_error(r, 415, r"too large")
        assert time.monotonic() - t < 3
        strip = io.BytesIO()
        Image.fromarray(np.full((1, 20000, 3), 128, np.uint8)).save(strip, "PNG")
        assert_json_error(post_file(server.url, strip.getvalue(), name="strip.png", mime="image/png"), 415,
                          r"could not read strip\.png: image too small or too thin: 20000x1 pixels")
        assert post_file(server.url, photo).status_code == 200


class CrashingPredictor:
    """A predictor with a bug: every call raises."""

    def __init__(self, inner) -> None:
        self.checkpoint_path = inner.checkpoint_path

    def predict_one(self, image, detect=None, explain=False):
        raise RuntimeError("a bug in the model code")


def test_a_crash_in_the_predictor_is_a_json_500_and_the_server_lives_on(predictor, photo):
    with LiveServer(create_app(CrashingPredictor(predictor), max_concurrency=2)) as server:
        for _ in range(3):  # more crashes than slots: each one gives its slot back
            assert_json_error(post_file(server.url, photo), 500, r"internal error \(RuntimeError\)")
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["status"] == "ok" and health["in_flight"] == 0


def test_page_and_its_assets_are_local(live):
    page = httpx.get(f"{live.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    # The page has one address: its copy under /static redirects there, so it never comes without its CSP.
    other = httpx.get(f"{live.url}/static/index.html")
    assert other.status_code == 308 and other.headers["location"] == "/"
    for asset in ("static/app.js", "static/style.css"):
        headers = httpx.get(f"{live.url}/{asset}").headers
        assert headers["x-content-type-options"] == "nosniff" and "content-security-policy" in headers
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "the page must not load anything external"
    for asset in ("static/app.js", "static/style.css"):
        r = httpx.get(f"{live.url}/{asset}")
        assert r.status_code == 200 and len(r.text) > 500
        assert not re.search(r"https?://", r.text), f"{asset} refers to an external address"


def _chromium():
    """Playwright's sync API and a Chromium binary, or a test failure saying how to install them."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"the browser test needs Playwright for Python ({exc}); install it with "
                    "`.venv/bin/pip install playwright` (the wheel has its driver; no `playwright install`)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"the browser test needs Chromium at {CHROMIUM}; install it with "
                    "`apt-get update && apt-get install -y chromium`")
    return sync_playwright


def test_web_page_in_headless_chromium(live, photo, tmp_path):
    sync_playwright = _chromium()
    photo_path = tmp_path / "astronaut.jpg"
    photo_path.write_bytes(photo)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            console_errors: list[str] = []
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{live.url}/")
            # A locator waits in Playwright's own script world: a string predicate (wait_for_function) is eval'd
            # in the page, which the page's Content-Security-Policy (script-src 'self') refuses once it polls.
            page.locator("#model", has_text="mobilenet_v2_tiny (best.pt)").wait_for()

            page.set_input_files("#file", str(photo_path))
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            age_text = page.text_content("#age")
            assert re.fullmatch(r"\d{1,3}", age_text), age_text
            result = page.evaluate("window.deepage.result")
            assert int(age_text) == round(result["faces"][0]["age"])
            assert page.locator(".chart[data-scheme=utk14] .row").count() == 14
            assert page.locator(".chart[data-scheme=utk8] .row").count() == 8
            assert page.locator(".chart[data-scheme=utk14] .row.top").count() == 1

            # The box is really on the canvas: its left edge is drawn in the selected-face colour (#f5a300).
            edge = page.evaluate("""() => {
                const c = document.getElementById('canvas'), ctx = c.getContext('2d');
                const [x0, y0, x1, y1] = window.deepage.boxes[0];
                let hits = 0, n = 0;
                for (let y = Math.ceil(y0) + 2; y < y1 - 2; y += 2, n++) {
                    const [r, g, b] = ctx.getImageData(Math.round(x0), y, 1, 1).data;
                    if (Math.abs(r - 245) < 12 && Math.abs(g - 163) < 12 && b < 30) hits++;
                }
                const cx = Math.round((x0 + x1) / 2), cy = Math.round((y0 + y1) / 2);
                const inside = ctx.getImageData(cx, cy, 1, 1).data;
                return {hits, n, inside: Array.from(inside), width: c.width};
            }""")
            assert edge["width"] == 512
            assert edge["n"] > 10 and edge["hits"] >= 0.9 * edge["n"], edge
            assert edge["inside"][:3] != [245, 163, 0], "the photo should show inside the box"
            assert console_errors == []
            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000

            # A file that is not an image: the page shows the server's reason.
            page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                  "buffer": b"just some text"}])
            page.wait_for_selector("body[data-state=error]", timeout=30_000)
            assert "could not read notes.txt: not an image" in page.text_content("#status")
            assert "HTTP 415" in page.text_content("#status")
            # ... and nothing of the previous photo stays on screen to be read as this file's answer.
            assert page.locator("#result").is_hidden()
            assert page.text_content("#age") == "" and page.locator(".chart").count() == 0
            assert page.evaluate("window.deepage.result") is None
        finally:
            browser.close()
    assert all(u.startswith(live.url) or u.startswith(("blob:", "data:")) for u in requests), requests

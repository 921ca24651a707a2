"""``deepage serve``: an HTTP service (FastAPI on uvicorn) with a web page.

Endpoints
---------
``POST /predict``
    The photo as multipart field ``file`` (or a raw ``image/*`` / ``application/octet-stream`` body);
    optional query ``detect=true|false`` (default: the predictor's setting). Returns ``200`` with the
    :class:`~deepage.inference.predictor.ImagePrediction` dict (``source, width, height, faces, error``;
    boxes in pixels of the uploaded image, ages in years) plus ``filename`` and ``timing``
    (``queue_ms``, ``inference_ms``, ``total_ms``).
``GET /healthz``
    ``{"status": "ok", "model": {"model": <name>, "model_file": <file name>, "backend": ...}, "version":
    <deepage version>, "in_flight": n, ...}`` (names only: no path of the server's disk).
``GET /``
    The web page (``static/index.html``, with ``static/app.js`` and ``static/style.css``; it makes no
    external requests), always with its Content-Security-Policy and ``nosniff`` headers (the assets carry
    them too); ``/static/index.html`` redirects to ``/``.

Every error is JSON ``{"error": "..."}``:

- ``413`` upload larger than ``max_upload_bytes`` (``Content-Length`` is checked before a byte of the body
  is read, and the body is counted while it streams in, so a chunked upload cannot slip past);
- ``415`` not an image (``error`` names the reason: empty, truncated JPEG, unrecognised format, too many
  pixels, ...) or a request that is neither multipart nor an image body;
- ``400`` malformed multipart (a body that stops before its closing delimiter included), ``422`` missing
  ``file`` field or a bad query value;
- ``408`` when the body has not arrived ``upload_timeout_s`` seconds after the headers (the connection is
  closed and its upload slot given back);
- ``503`` (with ``Retry-After``) when ``max_concurrency`` requests are already admitted to the model, or
  ``max_uploads`` bodies are already being received;
- ``504`` when a request has not finished ``request_timeout_s`` seconds after admission;
- ``500`` for anything unexpected (logged with its traceback; the server keeps serving).

Concurrency: a request is admitted to the model only once its whole body is in. While it is still being
received it holds one of ``max_uploads`` upload slots, for at most ``upload_timeout_s`` seconds, so clients
that send headers and then stall cannot lock the model out, and the memory held by uploads stays under
``(max_uploads + max_concurrency) x max_upload_bytes``. A request that arrives while ``max_concurrency``
are admitted is refused with 503 before its body is read; beyond that, one more is refused rather than
queued without bound. A client that disconnects mid-upload is logged in one line (``INFO``) and its slot
given back. Admitted requests run in a private pool of threads, at most ``workers`` predictions at a time
(the event loop never decodes or runs the model), so the service keeps answering ``/healthz`` while
inference is busy. A request that times out gives its worker turn back at once, so a decode that never
ends does not hold up the requests after it, but keeps its admission slot until its thread really finishes
(Python threads cannot be interrupted), so timeouts never let more work pile up than the limit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..imageio import ImageDecodeError

if TYPE_CHECKING:
    from .predictor import Predictor

__all__ = ["create_app", "serve", "MAX_UPLOAD_BYTES", "MAX_CONCURRENCY", "MAX_UPLOADS", "REQUEST_TIMEOUT_S",
           "UPLOAD_TIMEOUT_S", "STATIC_DIR", "configure_logging"]

log = logging.getLogger("deepage.serve")

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
"""Largest accepted request body (bytes): 10 MiB."""

MAX_CONCURRENCY = 64
"""Requests admitted at once (running + waiting for a worker thread); the next one gets 503."""

REQUEST_TIMEOUT_S = 30.0
"""Seconds from admission to answer (waiting for a worker included) before a 504."""

MAX_UPLOADS = 64
"""Request bodies received at once (before admission to the model); the next request gets 503."""

UPLOAD_TIMEOUT_S = 20.0
"""Seconds a client has to send its whole body after the headers before a 408 (10 MiB at 4 Mbit/s)."""

STATIC_DIR = Path(__file__).resolve().parent / "static"

_PAGE_HEADERS = {
    # The page loads only its own script and style; images are shown from blob: URLs of the chosen file.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class _TooLargeError(Exception):
    """The request body grew past the upload limit while it was being read."""


class _Gate:
    """A non-blocking counting gate: ``try_enter`` admits up to ``limit`` holders; ``leave`` from any thread.

    Why not ``threading.BoundedSemaphore``: it gives the non-blocking acquire and the thread-safe release,
    but not the number of holders, which ``/healthz`` reports (``in_flight``) and the tests rely on; reading
    its private ``_value`` would be the alternative. ``asyncio.Semaphore`` cannot be released from the
    worker thread that finishes a prediction."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self._count >= self.limit:
                return False
            self._count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count


class _AbandonedError(Exception):
    """The request gave up waiting before its prediction began."""


class _Ticket:
    """One admitted prediction's state for :class:`_Lanes`: waiting, running, or abandoned by its request."""

    __slots__ = ("running", "abandoned")

    def __init__(self) -> None:
        self.running = False
        self.abandoned = False


class _Lanes:
    """At most ``n`` predictions at a time. A prediction whose request timed out (``abandon``) gives its lane
    back at once and runs on outside the lanes, so a decode that never ends holds up nobody behind it;
    one abandoned before it began is not run at all."""

    def __init__(self, n: int) -> None:
        self._free = threading.Semaphore(n)
        self._lock = threading.Lock()

    def run(self, ticket: _Ticket, fn: Callable[[], Any]) -> Any:
        self._free.acquire()
        with self._lock:
            if ticket.abandoned:
                self._free.release()
                raise _AbandonedError
            ticket.running = True
        try:
            return fn()
        finally:
            with self._lock:
                ticket.running = False
                if not ticket.abandoned:
                    self._free.release()

    def abandon(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket.running and not ticket.abandoned:
                self._free.release()
            ticket.abandoned = True


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _CountingReceive:
    """An ASGI ``receive`` whose body raises :class:`_TooLargeError` once it exceeds ``limit`` bytes, and that
    notes whether ``marker`` (a multipart body's closing delimiter, ``--BOUNDARY--``) went by in it."""

    def __init__(self, receive: Callable[[], Awaitable[dict]], limit: int, marker: bytes = b"") -> None:
        self.receive, self.limit, self.marker = receive, limit, marker
        self.seen = 0
        self.marker_seen = not marker
        self._tail = b""  # the end of the last chunk: a delimiter may straddle two

    async def __call__(self) -> dict:
        message = await self.receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            self.seen += len(body)
            if self.seen > self.limit:
                raise _TooLargeError(self.seen)
            if not self.marker_seen:
                window = self._tail + body
                self.marker_seen = self.marker in window
                self._tail = window[-len(self.marker):]
        return message


def _closing_delimiter(content_type: str) -> bytes:
    """``--BOUNDARY--``, the end of a multipart body of this Content-Type, or b"" when it names no boundary
    (starlette refuses that one itself)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return b"--" + match[1].strip().encode("latin-1", "replace") + b"--" if match else b""


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n:,} bytes"


async def _read_upload(request: Request, body: _CountingReceive) -> tuple[bytes, str] | JSONResponse:
    """The uploaded bytes and their file name, or an error response (raises :class:`_TooLargeError` and
    starlette's ``ClientDisconnect``). ``body``: the receive ``request`` reads through."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except StarletteHTTPException as exc:  # starlette turns multipart parse errors into 400s
            return _error(400, f"malformed multipart body: {exc.detail}")
        try:
            field = form.get("file")
            if field is None and not body.marker_seen:  # the parser gave up quietly on a body cut short
                return _error(400, f"malformed multipart body: it does not end with the closing delimiter "
                                   f"{body.marker.decode('latin-1')!r} (cut short, or not multipart)")
            if field is None:
                sent = ", ".join(sorted(set(form.keys())))
                return _error(422, "multipart field 'file' is missing"
                                   + (f" (fields sent: {sent})" if sent else " (the form is empty)"))
            if not isinstance(field, UploadFile):
                return _error(422, "multipart field 'file' must be a file upload, not a text value")
            return await field.read(), field.filename or "upload"
        finally:
            await form.close()
    if media_type.startswith("image/") or media_type == "application/octet-stream":
        return await request.body(), "upload"
    return _error(415, "expected multipart/form-data with a 'file' field (or an image/* body), got "
                       + (f"Content-Type {content_type!r}" if content_type else "no Content-Type"))


def _declared_size_error(request: Request, limit: int) -> JSONResponse | None:
    """A 400/413 from the ``Content-Length`` header alone (before any byte of the body is read), or None."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        return _error(400, f"invalid Content-Length header {declared!r}")
    if int(declared) > limit:
        return _error(413, f"upload of {_megabytes(int(declared))} exceeds the limit of {_megabytes(limit)}")
    return None


class _Service:
    """What ``/predict`` and ``/healthz`` share: the predictor, its worker threads, the admission gate and
    the counters. See the module docstring for the order of the checks."""

    def __init__(self, predictor: Predictor, max_upload_bytes: int, max_concurrency: int,
                 request_timeout_s: float, workers: int, max_uploads: int = MAX_UPLOADS,
                 upload_timeout_s: float = UPLOAD_TIMEOUT_S) -> None:
        self.predictor = predictor
        self.max_upload_bytes = max_upload_bytes
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self.workers = workers
        self.upload_timeout_s = upload_timeout_s
        # One thread per admitted request at most; _Lanes lets `workers` of them predict at a time.
        self.executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="deepage-predict")
        self.lanes = _Lanes(workers)
        self.gate = _Gate(max_concurrency)
        self.uploads = _Gate(max_uploads)
        self.started = time.monotonic()
        self.counters = {"served": 0, "rejected_busy": 0, "timed_out": 0, "client_gone": 0, "upload_timed_out": 0}
        describe = getattr(predictor, "describe", None)
        # Names, not paths: the service does not tell the world where its files lie.
        self.model = describe() if callable(describe) else {"model_file": Path(predictor.checkpoint_path).name}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model, "version": __version__, "in_flight": self.gate.count,
                "uploading": self.uploads.count, "max_concurrency": self.max_concurrency,
                "max_uploads": self.uploads.limit, "workers": self.workers,
                "max_upload_bytes": self.max_upload_bytes, "request_timeout_s": self.request_timeout_s,
                "upload_timeout_s": self.upload_timeout_s,
                "uptime_s": round(time.monotonic() - self.started, 1), **self.counters}

    def _run(self, ticket: _Ticket, data: bytes, detect: bool | None, submitted: float) -> tuple[Any, float, float]:
        def timed() -> tuple[Any, float, float]:
            begun = time.perf_counter()
            result = self.predictor.predict_one(data, detect=detect)
            return result, begun - submitted, time.perf_counter() - begun

        return self.lanes.run(ticket, timed)

    def _busy(self, what: str) -> JSONResponse:
        self.counters["rejected_busy"] += 1
        return _error(503, f"server busy: {what}; retry shortly", headers={"Retry-After": "1"})

    async def predict(self, request: Request, detect: bool | None) -> JSONResponse:
        t0 = time.perf_counter()
        refused = _declared_size_error(request, self.max_upload_bytes)
        if refused is not None:
            return refused
        # The model is saturated: refuse before reading a byte of the body.
        if self.gate.count >= self.max_concurrency:
            return self._busy(f"{self.max_concurrency} requests already in progress")
        if not self.uploads.try_enter():
            return self._busy(f"{self.uploads.limit} uploads already being received")
        try:
            upload = await self._upload(request)
        finally:
            self.uploads.leave()
        if isinstance(upload, JSONResponse):
            return upload
        # Admission to the model only now that the body is in: a stalled upload never holds a model slot.
        if not self.gate.try_enter():
            return self._busy(f"{self.max_concurrency} requests already in progress")
        ticket = _Ticket()
        try:
            future: Future = self.executor.submit(self._run, ticket, upload[0], detect, time.perf_counter())
        except RuntimeError:  # the executor is shutting down
            self.gate.leave()
            return _error(503, "server is shutting down")
        # From here the slot is released when the work really ends (finished, failed, or cancelled before
        # it began), not when the request gives up waiting.
        future.add_done_callback(lambda _f: self.gate.leave())
        return await self._answer(future, ticket, upload[1], t0)

    async def _upload(self, request: Request) -> tuple[bytes, str] | JSONResponse:
        """The body, read within ``upload_timeout_s``, or the error response."""
        marker = _closing_delimiter(request.headers.get("content-type", ""))
        body = _CountingReceive(request.receive, self.max_upload_bytes, marker)
        try:
            return await asyncio.wait_for(_read_upload(Request(request.scope, body), body),
                                          timeout=self.upload_timeout_s)
        except TimeoutError:
            self.counters["upload_timed_out"] += 1
            client = request.client.host if request.client else "?"
            log.info("client %s sent %s of its body in %g s; upload cut off", client, _megabytes(body.seen),
                     self.upload_timeout_s)
            return _error(408, f"upload did not arrive within {self.upload_timeout_s:g} s",
                          headers={"Connection": "close"})
        except _TooLargeError:
            return _error(413, f"upload exceeds the limit of {_megabytes(self.max_upload_bytes)}")
        except ClientDisconnect:
            # Nobody is left to answer: one line in the log, not a traceback.
            self.counters["client_gone"] += 1
            client = request.client.host if request.client else "?"
            log.info("client %s disconnected during the upload; request dropped", client)
            return _error(400, "client disconnected during the upload")

    async def _answer(self, future: Future, ticket: _Ticket, filename: str, t0: float) -> JSONResponse:
        try:
            result, queued_s, inference_s = await asyncio.wait_for(asyncio.wrap_future(future),
                                                                    timeout=self.request_timeout_s)
        except TimeoutError:
            future.cancel()  # drops it if it is still waiting for a thread
            self.lanes.abandon(ticket)  # its worker turn goes to the next request; its thread runs on
            self.counters["timed_out"] += 1
            return _error(504, f"prediction did not finish within {self.request_timeout_s:g} s")
        except ImageDecodeError as exc:
            return _error(415, f"could not read {filename}: {exc.reason}")
        except ValueError as exc:
            return _error(422, f"{filename}: {exc}")
        if result.error:  # the predictor reports unreadable (or too small) images this way
            return _error(415, f"could not read {filename}: {result.error}")
        body = result.to_dict()
        body["filename"] = filename
        body["timing"] = {"queue_ms": round(queued_s * 1000, 1), "inference_ms": round(inference_s * 1000, 1),
                          "total_ms": round((time.perf_counter() - t0) * 1000, 1)}
        self.counters["served"] += 1
        return JSONResponse(body)


class _Assets(StaticFiles):
    """The page's script and style, with the page's security headers. ``index.html`` is not served here:
    the page has one address, ``/``, so it always comes with its Content-Security-Policy."""

    async def get_response(self, path: str, scope) -> Response:
        if path.strip("/") in ("", "index.html"):
            return RedirectResponse("/", status_code=308)
        response = await super().get_response(path, scope)
        response.headers.update(_PAGE_HEADERS)
        return response


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{"error": ...}``."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                 for e in exc.errors()]
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, f"internal error ({type(exc).__name__})")


def create_app(predictor: Predictor, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_concurrency: int = MAX_CONCURRENCY, request_timeout_s: float = REQUEST_TIMEOUT_S,
               workers: int = 1, max_uploads: int = MAX_UPLOADS,
               upload_timeout_s: float = UPLOAD_TIMEOUT_S) -> FastAPI:
    """The FastAPI app serving ``predictor`` (anything with ``predict_one`` and ``checkpoint_path``).

    ``max_upload_bytes``: largest request body; ``max_uploads``: bodies received at once, each within
    ``upload_timeout_s`` seconds (else 408); ``max_concurrency``: requests admitted to the model at once
    (running or waiting), beyond which 503; ``request_timeout_s``: seconds after admission before 504;
    ``workers``: predictions at a time, in threads running ``predictor.predict_one`` (1 suits a CPU model,
    whose ops already use every core; the predictor must be thread-safe, as a timed-out prediction runs on
    beside the next one).
    """
    if min(max_upload_bytes, max_concurrency, workers, max_uploads) < 1 or min(request_timeout_s,
                                                                                upload_timeout_s) <= 0:
        raise ValueError(f"create_app: max_upload_bytes ({max_upload_bytes}), max_concurrency "
                         f"({max_concurrency}), max_uploads ({max_uploads}) and workers ({workers}) must be "
                         f">= 1, request_timeout_s ({request_timeout_s}) and upload_timeout_s "
                         f"({upload_timeout_s}) > 0")
    service = _Service(predictor, max_upload_bytes, max_concurrency, request_timeout_s, workers,
                       max_uploads=max_uploads, upload_timeout_s=upload_timeout_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="DeepAge", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.predictor = predictor
    app.mount("/static", _Assets(directory=STATIC_DIR), name="static")
    _install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return service.health()

    @app.post("/predict")
    async def predict(request: Request, detect: bool | None = None) -> JSONResponse:
        return await service.predict(request, detect)

    return app


def load_predictor(model: str | Path | None = None) -> Predictor:
    """``model=None`` → the bundled model; a ``.onnx`` file → the ONNX Runtime backend; else a checkpoint."""
    from .predictor import Predictor

    return Predictor.default() if model is None else Predictor.from_checkpoint(model)  # backend "auto"


def configure_logging(log_level: str = "info") -> None:
    """Send the ``deepage`` loggers (``deepage.serve``'s one-line notes, ``deepage.imageio``'s decoder
    warnings) to standard error at ``log_level``, in uvicorn's format; once, however often it is called."""
    root = logging.getLogger("deepage")
    root.setLevel(log_level.upper())
    if not any(getattr(h, "_deepage_serve", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        handler._deepage_serve = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def serve(host: str = "127.0.0.1", port: int = 8000, model: str | Path | None = None, *,
          max_upload_bytes: int = MAX_UPLOAD_BYTES, max_concurrency: int = MAX_CONCURRENCY,
          request_timeout_s: float = REQUEST_TIMEOUT_S, workers: int = 1, log_level: str = "info",
          max_uploads: int = MAX_UPLOADS, upload_timeout_s: float = UPLOAD_TIMEOUT_S) -> None:
    """Run the service on ``host:port`` with uvicorn until interrupted (``model=None``: the bundled model)."""
    import uvicorn

    configure_logging(log_level)
    predictor = load_predictor(model)
    app = create_app(predictor, max_upload_bytes=max_upload_bytes, max_concurrency=max_concurrency,
                     request_timeout_s=request_timeout_s, workers=workers, max_uploads=max_uploads,
                     upload_timeout_s=upload_timeout_s)
    log.info("serving %s (%s backend) on http://%s:%d/", Path(predictor.checkpoint_path).name,
             predictor.backend, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)

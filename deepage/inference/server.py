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
- ``400`` malformed multipart, ``422`` missing ``file`` field or a bad query value;
- ``503`` (with ``Retry-After``) when ``max_concurrency`` requests are already admitted;
- ``504`` when a request has not finished ``request_timeout_s`` seconds after admission;
- ``500`` for anything unexpected (logged with its traceback; the server keeps serving).

Concurrency: at most ``max_concurrency`` requests are admitted at once (reading their upload, running or
waiting); one more is refused at once with 503 rather than queued without bound, and before its body is
read, so the memory held by uploads stays under ``max_concurrency x max_upload_bytes``. A client that
disconnects mid-upload is logged in one line (``INFO``) and its slot given back. Admitted requests run
in a private pool of ``workers`` threads (the event loop never decodes or runs the model), so the service
keeps answering ``/healthz`` while inference is busy. A request that times out keeps its slot until its thread really
finishes (Python threads cannot be interrupted), so timeouts never let more work pile up than the limit.
"""

from __future__ import annotations

import asyncio
import logging
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

__all__ = ["create_app", "serve", "MAX_UPLOAD_BYTES", "MAX_CONCURRENCY", "REQUEST_TIMEOUT_S", "STATIC_DIR"]

log = logging.getLogger("deepage.serve")

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
"""Largest accepted request body (bytes): 10 MiB."""

MAX_CONCURRENCY = 64
"""Requests admitted at once (running + waiting for a worker thread); the next one gets 503."""

REQUEST_TIMEOUT_S = 30.0
"""Seconds from admission to answer (waiting for a worker included) before a 504."""

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


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _counting_receive(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    """Wrap an ASGI ``receive``: the body raises :class:`_TooLargeError` once it exceeds ``limit`` bytes."""
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLargeError(seen)
        return message

    return wrapped


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n:,} bytes"


async def _read_upload(request: Request) -> tuple[bytes, str] | JSONResponse:
    """The uploaded bytes and their file name, or an error response (raises :class:`_TooLargeError` and
    starlette's ``ClientDisconnect``)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except StarletteHTTPException as exc:  # starlette turns multipart parse errors into 400s
            return _error(400, f"malformed multipart body: {exc.detail}")
        try:
            field = form.get("file")
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
                 request_timeout_s: float, workers: int) -> None:
        self.predictor = predictor
        self.max_upload_bytes = max_upload_bytes
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deepage-predict")
        self.gate = _Gate(max_concurrency)
        self.started = time.monotonic()
        self.counters = {"served": 0, "rejected_busy": 0, "timed_out": 0, "client_gone": 0}
        describe = getattr(predictor, "describe", None)
        # Names, not paths: the service does not tell the world where its files lie.
        self.model = describe() if callable(describe) else {"model_file": Path(predictor.checkpoint_path).name}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model, "version": __version__, "in_flight": self.gate.count,
                "max_concurrency": self.max_concurrency, "workers": self.workers,
                "max_upload_bytes": self.max_upload_bytes, "request_timeout_s": self.request_timeout_s,
                "uptime_s": round(time.monotonic() - self.started, 1), **self.counters}

    def _run(self, data: bytes, detect: bool | None, submitted: float) -> tuple[Any, float, float]:
        begun = time.perf_counter()
        result = self.predictor.predict_one(data, detect=detect)
        return result, begun - submitted, time.perf_counter() - begun

    async def predict(self, request: Request, detect: bool | None) -> JSONResponse:
        t0 = time.perf_counter()
        refused = _declared_size_error(request, self.max_upload_bytes)
        if refused is not None:
            return refused
        # Admission before the body is read: memory stays below max_concurrency x max_upload_bytes.
        if not self.gate.try_enter():
            self.counters["rejected_busy"] += 1
            return _error(503, f"server busy: {self.max_concurrency} requests already in progress; retry "
                               "shortly", headers={"Retry-After": "1"})
        handed_over = False
        try:
            upload = await self._upload(request)
            if isinstance(upload, JSONResponse):
                return upload
            future: Future = self.executor.submit(self._run, upload[0], detect, time.perf_counter())
            # From here the slot is released when the work really ends (finished, failed, or cancelled
            # before it began), not when the request gives up waiting.
            future.add_done_callback(lambda _f: self.gate.leave())
            handed_over = True
        except RuntimeError:  # the executor is shutting down
            return _error(503, "server is shutting down")
        finally:
            if not handed_over:
                self.gate.leave()
        return await self._answer(future, upload[1], t0)

    async def _upload(self, request: Request) -> tuple[bytes, str] | JSONResponse:
        counted = Request(request.scope, _counting_receive(request.receive, self.max_upload_bytes))
        try:
            return await _read_upload(counted)
        except _TooLargeError:
            return _error(413, f"upload exceeds the limit of {_megabytes(self.max_upload_bytes)}")
        except ClientDisconnect:
            # Nobody is left to answer: one line in the log, not a traceback.
            self.counters["client_gone"] += 1
            client = request.client.host if request.client else "?"
            log.info("client %s disconnected during the upload; request dropped", client)
            return _error(400, "client disconnected during the upload")

    async def _answer(self, future: Future, filename: str, t0: float) -> JSONResponse:
        try:
            result, queued_s, inference_s = await asyncio.wait_for(asyncio.wrap_future(future),
                                                                    timeout=self.request_timeout_s)
        except TimeoutError:
            future.cancel()  # drops it if it is still waiting for a worker
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
               workers: int = 1) -> FastAPI:
    """The FastAPI app serving ``predictor`` (anything with ``predict_one`` and ``checkpoint_path``).

    ``max_upload_bytes``: largest request body; ``max_concurrency``: requests admitted at once (reading
    their upload, running or waiting), beyond which 503; ``request_timeout_s``: seconds after admission
    before 504; ``workers``: threads running ``predictor.predict_one`` (1 suits a CPU model, whose ops
    already use every core; more than one requires a thread-safe predictor).
    """
    if max_upload_bytes < 1 or max_concurrency < 1 or workers < 1 or request_timeout_s <= 0:
        raise ValueError(f"create_app: max_upload_bytes ({max_upload_bytes}), max_concurrency "
                         f"({max_concurrency}) and workers ({workers}) must be >= 1 and request_timeout_s "
                         f"({request_timeout_s}) > 0")
    service = _Service(predictor, max_upload_bytes, max_concurrency, request_timeout_s, workers)

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


def serve(host: str = "127.0.0.1", port: int = 8000, model: str | Path | None = None, *,
          max_upload_bytes: int = MAX_UPLOAD_BYTES, max_concurrency: int = MAX_CONCURRENCY,
          request_timeout_s: float = REQUEST_TIMEOUT_S, workers: int = 1, log_level: str = "info") -> None:
    """Run the service on ``host:port`` with uvicorn until interrupted (``model=None``: the bundled model)."""
    import uvicorn

    predictor = load_predictor(model)
    app = create_app(predictor, max_upload_bytes=max_upload_bytes, max_concurrency=max_concurrency,
                     request_timeout_s=request_timeout_s, workers=workers)
    log.info("serving %s (%s backend) on http://%s:%d/", predictor.checkpoint_path, predictor.backend, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)

"""`dabnet serve`: an HTTP API and a web page for segmentation that hold up under load and bad input.

One model, loaded once, runs in one inference thread fed by a bounded queue; concurrent requests for
images of one size are batched. A full queue answers 503 at once (with Retry-After), a body over the
byte limit 413, an image over the pixel limit 413, a request that waits too long 504, and anything
that is not a readable image a 4xx with a reason. No request can name a file on the server.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at run time.
import asyncio
import io
import logging
import queue
import threading
import time
from importlib import resources
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..config import ServeConfig
from ..inference.segmenter import Segmenter
from ..io.images import READ_FORMATS, encode_png, pil_to_rgb
from ..io.visualize import colorize, overlay
from ..runtimes import resolve_device

log = logging.getLogger("dabnet.serve")


class HTTPProblem(Exception):
    """An error answer: status code, message and optional headers."""

    def __init__(self, status: int, detail: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB; only the formats READ_FORMATS names, chosen by their signature; the pixel count
    is checked from the header before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise HTTPProblem(400, "empty body: send an image (PNG, JPEG, ...)")
    try:
        im = Image.open(io.BytesIO(data), formats=READ_FORMATS)
    except Image.DecompressionBombError as e:  # over Pillow's own limit: as large as ours says 413
        raise HTTPProblem(413, f"image is over the pixel limit: {e}") from None
    except UnidentifiedImageError:
        raise HTTPProblem(415, "the body is not an image format this server reads (PNG, JPEG, BMP, TIFF, WebP)") from None
    except Exception as e:
        raise HTTPProblem(400, f"unreadable image: {e}") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise HTTPProblem(400, f"zero-sized image ({w}x{h})")
    if w * h > max_pixels:
        raise HTTPProblem(413, f"image of {w}x{h} = {w * h} pixels is over this server's limit of {max_pixels}")
    try:
        im.load()
        return pil_to_rgb(im)  # as a viewer shows it: EXIF orientation, 16-bit scaled, CMYK/palette converted
    except Image.DecompressionBombError as e:
        raise HTTPProblem(413, f"image is over the pixel limit: {e}") from None
    except Exception as e:  # truncated data, corrupt streams, bombs that lie in their header
        raise HTTPProblem(400, f"image data is truncated or corrupt: {e}") from None


class InferenceWorker:
    """One thread that owns the model; requests come through a bounded queue and are batched."""

    RELEASE_AFTER_PIXELS = 2**22  # after a batch this large, once idle, memory goes back to the OS (a trim costs ms)

    def __init__(self, seg: Segmenter, cfg: ServeConfig) -> None:
        self.seg, self.cfg = seg, cfg
        self.queue: "queue.Queue[Tuple[np.ndarray, asyncio.AbstractEventLoop, asyncio.Future]]" = queue.Queue(cfg.max_queue)
        self.thread = threading.Thread(target=self._run, name="dabnet-inference", daemon=True)
        self.thread.start()

    def submit(self, image: np.ndarray) -> "asyncio.Future[Tuple[np.ndarray, float]]":
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        try:
            self.queue.put_nowait((image, loop, fut))
        except queue.Full:
            raise HTTPProblem(503, "the server is busy: try again shortly", {"Retry-After": "1"}) from None
        return fut

    def _take_batch(self) -> List[Tuple[np.ndarray, Any, Any]]:
        first = self.queue.get()
        batch = [first]
        deadline = time.perf_counter() + self.cfg.batch_wait_ms / 1000
        while len(batch) < self.cfg.max_batch:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            batch.append(item)
        return batch

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                self._serve_one_batch()
            except Exception:  # the thread must outlive any one batch; /healthz reports it if it ever ends
                log.exception("inference worker: a batch failed outside the model")

    def _serve_one_batch(self) -> None:
        """Take a batch, run it, answer it; memory goes back to the OS after a large one once idle."""
        batch = self._take_batch()
        live = [b for b in batch if not b[2].cancelled()]
        if not live:
            return
        if not self._answer(live) and len(live) > 1:
            for item in live:  # one request's bad input must not fail the others batched with it
                self._answer([item])
        pixels = sum(b[0].shape[0] * b[0].shape[1] for b in live)
        del batch, live
        if pixels > self.RELEASE_AFTER_PIXELS and self.queue.empty():
            release_memory()

    def _answer(self, items: List[Tuple[np.ndarray, Any, Any]]) -> bool:
        """Run `items` as one batch and answer each; on failure answer only a lone item (its own error) and
        return False, so that the caller can retry a batch's items one by one."""
        t0 = time.perf_counter()
        try:
            labels = self.seg.predict_batch([b[0] for b in items])
        except Exception as e:  # the model failed on this input: answer, keep serving
            if len(items) == 1:
                _post(items[0][1], _fail, items[0][2], e)
            return False
        ms = (time.perf_counter() - t0) * 1000
        for (_, loop, fut), label in zip(items, labels):
            _post(loop, _resolve, fut, (label, ms))
        return True


def release_memory() -> None:
    """Give freed memory back to the OS (glibc keeps large freed blocks in its arenas: a burst of big images
    would leave the process at its peak size while idle)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _post(loop: asyncio.AbstractEventLoop, fn, fut: asyncio.Future, value) -> None:
    try:
        loop.call_soon_threadsafe(fn, fut, value)
    except RuntimeError:  # that request's event loop has closed: nobody is waiting any more
        pass


def _resolve(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class MemoryBudget:
    """Bytes held by requests in flight (bodies as they arrive, decoded images), across all of them: a request
    whose next chunk does not fit is answered 503 at once, so many slow uploads cannot grow the process."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = int(limit), 0
        self._lock = threading.Lock()

    def take(self, n: int, held: List[int]) -> None:
        """Reserve `n` bytes for a request (added to its `held` tally), or 503."""
        with self._lock:
            if self.used + n > self.limit:
                raise HTTPProblem(503, f"the server holds {self.used / 2**20:.0f} MiB of requests in flight, its limit: "
                                  "try again shortly", {"Retry-After": "1"})  # fmt: skip
            self.used += n
        held[0] += n

    def give_back(self, held: List[int]) -> None:
        with self._lock:
            self.used -= held[0]
        held[0] = 0


async def read_body(request, max_bytes: int, budget: Optional[MemoryBudget] = None, held: Optional[List[int]] = None) -> bytes:
    """The request body, refused with 413 past `max_bytes` (before reading it when the length is declared), and
    counted against `budget` chunk by chunk (503 when the server holds too much)."""
    from starlette.requests import ClientDisconnect

    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise HTTPProblem(413, f"request body of {length} bytes is over the limit of {max_bytes}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPProblem(413, f"request body is over the limit of {max_bytes} bytes")
            if budget is not None:
                budget.take(len(chunk), held if held is not None else [0])
            chunks.append(chunk)
    except ClientDisconnect:  # one line in the log, not an ASGI traceback: nobody is left to answer
        log.warning("client %s disconnected during its upload (%d bytes received)", request.client, size)
        raise HTTPProblem(400, "client disconnected during the upload") from None
    return b"".join(chunks)


async def image_bytes(request, max_bytes: int, budget: Optional[MemoryBudget] = None, held: Optional[List[int]] = None) -> bytes:
    """The image of a request: raw image/* (or octet-stream) bytes, or a multipart 'file' field."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_bytes, budget, held)
    if ctype == "multipart/form-data":
        request._body = body  # the size-checked body, already read: let the form parser reuse it
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPProblem(400, "multipart request without a 'file' field")
        return await upload.read()
    if ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        return body
    raise HTTPProblem(415, f"content type {ctype!r} is not accepted: send image/* bytes or multipart with a 'file' field")


def create_app(cfg: ServeConfig, seg: Optional[Segmenter] = None):
    """The FastAPI application (model loaded once, here)."""
    try:
        from fastapi import FastAPI, Query, Request
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError as e:
        raise ImportError(f"dabnet serve needs FastAPI ({e.name} is missing): pip install 'dabnet[serve]'") from None

    seg = seg or Segmenter.from_checkpoint(cfg.checkpoint, resolve_device(cfg.device, cfg.backend, cfg.checkpoint),
                                           backend=cfg.backend, scale=cfg.scale)  # fmt: skip
    backend = seg.backend
    worker = InferenceWorker(seg, cfg)
    model_info = {
        "name": seg.model_name,
        "checkpoint": cfg.checkpoint,
        "backend": backend,
        "num_classes": len(seg.class_names),
        "classes": seg.class_names,
        "colors": [list(map(int, c)) for c in seg.palette],
        "normalisation": {"mean": list(seg.mean), "std": list(seg.std), "scale": "0-255 RGB"},
        "note": seg.spec.note if seg.spec else "",  # what describe assumed where the checkpoint was silent
        "limits": {"max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels, "timeout_s": cfg.timeout_s, "max_queue": cfg.max_queue},
    }
    # /docs and /redoc would load their scripts from a CDN: blank offline, and code from elsewhere. The schema stays.
    app = FastAPI(title="dabnet", version="1", description="Real-time semantic segmentation with DABNet.", docs_url=None,
                  redoc_url=None)  # fmt: skip
    app.state.worker = worker
    budget = MemoryBudget(cfg.max_inflight_bytes)
    app.state.budget = budget

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        if not worker.alive:  # every request would time out: say so, for the load balancer to act on
            return JSONResponse({"status": "dead", "detail": "the inference thread has stopped"}, status_code=503)
        return {"status": "ok", "queue": worker.queue.qsize(), "inflight_mb": round(budget.used / 2**20, 1)}

    @app.get("/v1/model")
    async def model() -> Dict[str, Any]:
        return model_info

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def page() -> str:
        return (resources.files("dabnet") / "assets" / "index.html").read_text()

    @app.post(
        "/v1/segment",
        responses={200: {"content": {"application/json": {}, "image/png": {}}}, 400: {}, 413: {}, 415: {}, 503: {}, 504: {}},
    )
    async def segment(
        request: Request,
        format: str = Query("json", pattern="^(json|label|overlay)$", description="json, label (PNG of class ids) or overlay (PNG)"),
    ):
        """Segment one image (raw image bytes, or multipart with a 'file' field)."""
        held = [0]
        try:
            return await _segment(request, format, held)
        finally:
            budget.give_back(held)

    async def _segment(request: Request, format: str, held: List[int]):
        t0 = time.perf_counter()
        try:  # a slow client cannot hold a connection for ever
            data = await asyncio.wait_for(image_bytes(request, cfg.max_bytes, budget, held), timeout=cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPProblem(408, f"the upload did not complete within {cfg.timeout_s} s") from None
        # Decoding and encoding large images take a while: off the event loop, so /healthz and others stay prompt.
        image = await asyncio.to_thread(decode_image, data, cfg.max_pixels)
        budget.take(image.nbytes, held)
        del data
        fut = worker.submit(image)
        try:
            label, model_ms = await asyncio.wait_for(fut, timeout=cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPProblem(504, f"no answer within {cfg.timeout_s} s: the server is overloaded") from None
        total_ms = (time.perf_counter() - t0) * 1000
        headers = {"X-Latency-Ms": f"{total_ms:.1f}", "X-Model-Ms": f"{model_ms:.1f}"}
        if format == "label":
            return Response(await asyncio.to_thread(encode_png, label), media_type="image/png", headers=headers)
        if format == "overlay":
            png = await asyncio.to_thread(lambda: encode_png(overlay(image, colorize(label, seg.palette))))
            return Response(png, media_type="image/png", headers=headers)
        counts = np.bincount(label.ravel(), minlength=len(seg.class_names))
        fractions = {n: round(float(c) / label.size, 6) for n, c in zip(seg.class_names, counts)}
        return JSONResponse(
            {"width": int(image.shape[1]), "height": int(image.shape[0]), "class_fractions": fractions,
             "latency_ms": round(total_ms, 2), "model_ms": round(model_ms, 2), "model": model_info["name"]},
            headers=headers,
        )  # fmt: skip

    return app


class OncePerInterval(logging.Filter):
    """Lets a message through once per `interval` seconds: a flood of one error (a client storm, a full file
    table) reads as one line, then one line saying how many more came."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: Dict[Tuple[int, str], Tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.levelno, f"{record.getMessage()[:200]}|{type(exc).__name__ if exc else ''}|{str(exc)[:100] if exc else ''}")
        now = time.monotonic()
        with self._lock:
            last, hidden = self._last.get(key, (-1e18, 0))
            if now - last < self.interval:
                self._last[key] = (last, hidden + 1)
                return False
            self._last[key] = (now, 0)
        if hidden:
            record.msg = f"{record.msg} (and {hidden} more like it in the last {self.interval:g} s)"
        return True


def quiet_repeats(interval: float = 10.0) -> OncePerInterval:
    """One OncePerInterval on the loggers a server under attack fills: asyncio's (accept errors), uvicorn's, ours."""
    limiter = OncePerInterval(interval)
    for name in ("asyncio", "uvicorn.error", "dabnet.serve"):
        logging.getLogger(name).addFilter(limiter)
    return limiter


def guarded_protocol(header_timeout_s: float, max_connections: int):
    """uvicorn's HTTP/1.1 protocol, closing a connection that does not send a request's headers within
    `header_timeout_s` (at the start, and again after each response), and any connection beyond `max_connections`:
    trickling clients can neither hold the server's sockets nor exhaust its open files."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _deadline: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("connection from %s closed: %d connections open, the limit (--max-connections)", self.client,
                            len(self.connections) - 1)  # fmt: skip
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._armed_cycle = self.cycle
            self._deadline = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            if self.cycle is self._armed_cycle and not self.transport.is_closing():  # no request began in time
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self._deadline is not None and self.cycle is not self._armed_cycle:  # a request's headers arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_config(app, cfg: ServeConfig, **options: Any):
    """uvicorn's settings for `app` as `cfg` says: the guarded protocol, keep-alive no longer than the header timeout."""
    import uvicorn

    return uvicorn.Config(app, log_level="warning", http=guarded_protocol(cfg.header_timeout_s, cfg.max_connections),
                          timeout_keep_alive=max(1, int(cfg.header_timeout_s)), **options)  # fmt: skip


def server_url(host: str, port: int) -> str:
    """http://HOST:PORT/, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(cfg: ServeConfig) -> None:
    """Run the app with uvicorn (127.0.0.1 unless told otherwise); the banner comes once the port is bound."""
    import resource
    import socket

    try:
        import uvicorn
    except ImportError:
        raise ImportError("dabnet serve needs uvicorn: pip install 'dabnet[serve]'") from None
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if files != resource.RLIM_INFINITY and cfg.max_connections > files - 64:
        raise RuntimeError(f"--max-connections {cfg.max_connections} leaves no room in this process's limit of {files} open "
                           f"files (the model, logs and sockets need some): use at most {max(1, files - 64)}, or raise "
                           "the limit (ulimit -n)")  # fmt: skip
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror} (another server there? pick --port)") from None
    app = create_app(cfg)  # the model loads once the address is ours
    port = sock.getsockname()[1]
    quiet_repeats()
    server = uvicorn.Server(uvicorn_config(app, cfg))
    print(f"dabnet serve: {cfg.checkpoint} on {server_url(cfg.host, port)}  (API schema: /openapi.json)", flush=True)
    server.run(sockets=[sock])

"""`dabnet serve`: an HTTP API and a web page for segmentation that hold up under load and bad input.

One model, loaded once, runs in one inference thread fed by a bounded queue; concurrent requests for
images of one size are batched. Work is admitted by its cost before it is done (inference/admission.py):
an image's header gives its pixels, the network passes they take and their seconds here, and the bytes
decoding and answering it will hold. An image that alone takes longer than --timeout is refused (413),
one that does not fit behind the work already accepted waits outside (503 with Retry-After), as does one
whose bytes do not fit --max-inflight-mb; a client with --max-per-client requests open gets 429. A request
whose client has gone, or whose time is up, is dropped before the network sees it. Only the names this
server answers to may reach it (Host and Origin), and no answer names a file on the server.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at run time.
import asyncio
import ipaddress
import json
import logging
import queue
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple
from urllib.parse import urlsplit

import numpy as np

from ..config import ServeConfig
from ..inference.admission import ClientLimit, CostModel, MemoryBudget, Plan, Refused, Ticket, WorkLedger
from ..inference.segmenter import Segmenter, pass_pixels
from ..io.header import ImageHeader, ImageTooLarge, NotAnImage, decode, decode_peak_bytes, read_header
from ..io.images import ImageReadError, encode_png
from ..io.visualize import colorize, overlay
from ..runtimes import resolve_device
from ..util.state import trim_heap

log = logging.getLogger("dabnet.serve")


class HTTPProblem(Exception):
    """An error answer: status code, message and optional headers."""

    def __init__(self, status: int, detail: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def _as_problem(e: ImageReadError) -> HTTPProblem:
    if isinstance(e, NotAnImage):
        return HTTPProblem(415, "the body is not an image format this server reads (PNG, JPEG, BMP, TIFF, WebP)")
    if isinstance(e, ImageTooLarge):
        return HTTPProblem(413, f"{e} (this server's --max-pixels)")
    if str(e).startswith("empty"):
        return HTTPProblem(400, "empty body: send an image (PNG, JPEG, ...)")
    return HTTPProblem(400, str(e))


def image_header(data: bytes, max_pixels: int) -> ImageHeader:
    """The header of an uploaded image (no pixel decoded), or the 4xx that refuses it."""
    try:
        return read_header(data, max_pixels)
    except ImageReadError as e:
        raise _as_problem(e) from None


def decode_header(header: ImageHeader, reserve: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """The RGB pixels of an image whose header was read, as a viewer shows them, or the 4xx that refuses it."""
    try:
        return decode(header, reserve)
    except ImageReadError as e:
        raise _as_problem(e) from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB; only the formats READ_FORMATS names, chosen by their signature; the pixel count
    is checked from the header before decoding."""
    return decode_header(image_header(data, max_pixels))


# Bytes a pixel holds while a request is answered, beside the decoded RGB image (3) and its labels: `label` encodes a
# one-byte copy and its PNG; `overlay` a colour mask, the blend, Pillow's copy of it and its PNG. JSON counts in chunks.
ANSWER_BYTES = {"json": 0, "label": 2, "overlay": 13}
COUNT_CHUNK = 2**20


def answer_bytes(pixels: int, format: str, label_bytes: int = 1) -> int:
    """Bytes one request holds from its decoded image to its answer, for an image of `pixels` answered as `format`."""
    return pixels * (3 + label_bytes + ANSWER_BYTES[format])


def class_counts(label: np.ndarray, n: int) -> np.ndarray:
    """Pixels per class id of a label map, counted in chunks (bincount makes an 8-byte copy of what it counts)."""
    counts = np.zeros(n, np.int64)
    flat = label.ravel()
    for i in range(0, flat.size, COUNT_CHUNK):
        counts += np.bincount(flat[i : i + COUNT_CHUNK], minlength=n)[:n]
    return counts


class Job:
    """One image on its way through the worker: dropped unanswered if its future is cancelled (the client left, or its
    time ran out) or its deadline passes before the network takes it."""

    __slots__ = ("image", "loop", "future", "plan", "ticket", "deadline", "running")

    def __init__(self, image: np.ndarray, loop: asyncio.AbstractEventLoop, future: asyncio.Future, plan: Optional[Plan] = None,
                 ticket: Optional[Ticket] = None, deadline: float = float("inf")) -> None:  # fmt: skip
        self.image: Optional[np.ndarray] = image
        self.loop, self.future, self.plan, self.ticket, self.deadline = loop, future, plan, ticket, deadline
        self.running = False

    def abandon(self) -> None:
        """The request is over: the queue lets go of its image, and its seconds leave the ledger unless it is running."""
        self.image = None
        if not self.running and self.ticket is not None:
            self.ticket.release()

    def done(self) -> None:
        """The network has run it: its seconds leave the ledger."""
        if self.ticket is not None:
            self.ticket.release()


class InferenceWorker:
    """One thread that owns the model; requests come through a bounded queue and are batched."""

    RELEASE_AFTER_PIXELS = 2**22  # after a batch this large, once idle, memory goes back to the OS (a trim costs ms)

    def __init__(self, seg: Segmenter, cfg: ServeConfig, cost: Optional[CostModel] = None) -> None:
        self.seg, self.cfg, self.cost = seg, cfg, cost
        self.queue: "queue.Queue[Job]" = queue.Queue(cfg.max_queue)
        self.dropped = 0  # jobs let go unanswered: their clients had gone or their time was up
        self.thread = threading.Thread(target=self._run, name="dabnet-inference", daemon=True)
        self.thread.start()

    def submit(self, image: np.ndarray) -> "asyncio.Future[Tuple[np.ndarray, float]]":
        """Queue one image; its future gives (labels, model milliseconds)."""
        loop = asyncio.get_running_loop()
        job = Job(image, loop, loop.create_future())
        self.put(job)
        return job.future

    def put(self, job: Job) -> None:
        """Queue a job, or 503 at once when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise HTTPProblem(503, "the server is busy: try again shortly", {"Retry-After": "1"}) from None

    def _take_batch(self) -> List[Job]:
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
        """Take a batch, drop what nobody waits for, run the rest, answer it; memory goes back to the OS after a large
        one once idle."""
        batch = self._take_batch()
        live = []
        now = time.monotonic()
        for job in batch:
            image = job.image
            if image is None or job.future.cancelled() or now > job.deadline:
                self.dropped += 1
                job.abandon()
                continue
            job.running = True
            live.append((job, image))
        del batch
        if not live:
            return
        t0 = time.perf_counter()
        ok = self._answer(live)
        if ok and self.cost is not None:
            model_s = sum(job.plan.model_s for job, _ in live if job.plan is not None)
            if model_s > 0:
                self.cost.observe(model_s, time.perf_counter() - t0)
        if not ok and len(live) > 1:
            for item in live:  # one request's bad input must not fail the others batched with it
                self._answer([item])
        pixels = sum(pass_pixels(*image.shape[:2]) for _, image in live)  # what the passes held, padding included
        for job, _ in live:
            job.image = None
            job.done()
        del live
        if pixels > self.RELEASE_AFTER_PIXELS and self.queue.empty():
            release_memory(self.seg)

    def _answer(self, items: List[Tuple[Job, np.ndarray]]) -> bool:
        """Run `items` as one batch and answer each; on failure answer only a lone item (its own error) and
        return False, so that the caller can retry a batch's items one by one."""
        t0 = time.perf_counter()
        try:
            labels = self.seg.predict_batch([image for _, image in items])
        except Exception as e:  # the model failed on this input: answer, keep serving
            if len(items) == 1:
                _post(items[0][0].loop, _fail, items[0][0].future, e)
            return False
        ms = (time.perf_counter() - t0) * 1000
        for (job, _), label in zip(items, labels):
            _post(job.loop, _resolve, job.future, (label, ms))
        return True


def release_memory(seg: Optional[Segmenter] = None) -> None:
    """Give memory back to the OS: what `seg`'s runtime keeps for the largest image so far (from the inference
    thread only, while it runs nothing), and the heap freed since (glibc keeps large freed blocks)."""
    if seg is not None:
        seg.release_memory()
    else:
        trim_heap()


def _release_soon() -> None:
    """release_memory in a thread of its own: a trim of a large heap takes milliseconds the event loop has not."""
    threading.Thread(target=release_memory, name="dabnet-trim", daemon=True).start()


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


class ClientGone(Exception):
    """The client closed its connection while its request waited."""


async def answer_or_leave(future: asyncio.Future, receive, timeout: float):
    """The future's result; ClientGone as soon as the client disconnects, asyncio.TimeoutError after `timeout`
    seconds. Either way the future is cancelled, so the worker drops the job unrun."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":  # the body is read: only a disconnect comes now
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({future, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if future in done:
        return future.result()
    future.cancel()
    if watcher in done:
        raise ClientGone()
    raise asyncio.TimeoutError()


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_names(cfg: ServeConfig) -> Set[str]:
    """The names this server answers to: loopback, --host (unless it is every address) and --allowed-hosts."""
    names = set(LOOPBACK_NAMES) | {h.lower().rstrip(".") for h in cfg.allowed_hosts}
    if cfg.host not in ("", "0.0.0.0", "::"):
        names.add(cfg.host.lower().strip("[]").rstrip("."))
    return names


def _hostname(netloc: str) -> str:
    """The host of HOST[:PORT] or [V6]:PORT, lower case, without a trailing dot."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    if netloc.count(":") == 1:
        netloc = netloc.split(":")[0]
    return netloc.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_refusal(host: Optional[str], origin: Optional[str], names: Set[str], extra: Iterable[str] = ()) -> Optional[str]:
    """Why a request with these Host and Origin headers is refused, or None. A Host is accepted when it is one of
    `names` or an IP address (a page can reach an address only from that address; DNS rebinding needs a name); an
    Origin when it is the Host itself (the server's own page) or one of `extra` (--allowed-hosts)."""
    if "*" in names:
        return None
    if host is not None:
        name = _hostname(host)
        if name not in names and not _is_ip(name):
            return (f"this server does not answer to the host name {name[:80]!r} (a page elsewhere may be reaching a local "
                    f"server through DNS rebinding); if it is this server's name, start it with --allowed-hosts {name[:80]}")  # fmt: skip
    if origin is not None:
        parts = urlsplit(origin.strip())
        same = host is not None and parts.netloc.lower() == host.strip().lower()
        if not same and _hostname(parts.netloc) not in {h.lower().rstrip(".") for h in extra}:
            return (f"requests from pages at {origin.strip()[:80]!r} are not accepted (only this server's own page, or "
                    "origins named by --allowed-hosts)")  # fmt: skip
    return None


class HostGuard:
    """ASGI middleware refusing (403) a request whose Host or Origin header `host_refusal` refuses, before it reaches
    the application: a web page elsewhere cannot drive a local server through a browser."""

    def __init__(self, app, names: Set[str], extra: Iterable[str] = ()) -> None:
        self.app, self.names, self.extra = app, set(names), tuple(extra)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            why = host_refusal(headers.get("host"), headers.get("origin"), self.names, self.extra)
            if why is not None:
                body = json.dumps({"detail": why}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def create_app(cfg: ServeConfig, seg: Optional[Segmenter] = None, cost: Optional[CostModel] = None):
    """The FastAPI application (model loaded once, here, and its speed measured unless `cost` is given)."""
    try:
        from fastapi import FastAPI, Query, Request
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError as e:
        raise ImportError(f"dabnet serve needs FastAPI ({e.name} is missing): pip install 'dabnet[serve]'") from None

    seg = seg or Segmenter.from_checkpoint(cfg.checkpoint, resolve_device(cfg.device, cfg.backend, cfg.checkpoint),
                                           backend=cfg.backend, scale=cfg.scale)  # fmt: skip
    backend = seg.backend
    cost = cost or CostModel(seg).calibrate()
    worker = InferenceWorker(seg, cfg, cost)
    ledger = WorkLedger(cfg.timeout_s)
    budget = MemoryBudget(cfg.max_inflight_bytes, on_drained=_release_soon, retry_after=ledger.retry_after)
    clients = ClientLimit(cfg.max_per_client)
    label_bytes = 1 if len(seg.class_names) <= 256 else 2
    model_info = {
        "name": seg.model_name,
        "checkpoint": Path(cfg.checkpoint).name,  # its name only: where the server keeps it is nobody's business
        "backend": backend,
        "num_classes": len(seg.class_names),
        "classes": seg.class_names,
        "colors": [list(map(int, c)) for c in seg.palette],
        "normalisation": {"mean": list(seg.mean), "std": list(seg.std), "scale": "0-255 RGB"},
        "note": seg.spec.note if seg.spec else "",  # what describe assumed where the checkpoint was silent
        "limits": {"max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels, "timeout_s": cfg.timeout_s, "max_queue": cfg.max_queue,
                   "max_inflight_mb": cfg.max_inflight_mb, "max_per_client": cfg.max_per_client},  # fmt: skip
    }
    # /docs and /redoc would load their scripts from a CDN: blank offline, and code from elsewhere. The schema stays.
    app = FastAPI(title="dabnet", version="1", description="Real-time semantic segmentation with DABNet.", docs_url=None,
                  redoc_url=None)  # fmt: skip
    app.add_middleware(HostGuard, names=host_names(cfg), extra=cfg.allowed_hosts)
    app.state.worker, app.state.budget, app.state.ledger, app.state.clients, app.state.cost = worker, budget, ledger, clients, cost

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        if not worker.alive:  # every request would time out: say so, for the load balancer to act on
            return JSONResponse({"status": "dead", "detail": "the inference thread has stopped"}, status_code=503)
        return {"status": "ok", "queue": worker.queue.qsize(), "inflight_mb": round(budget.used / 2**20, 1),
                "queued_s": round(ledger.pending_s, 2), "dropped": worker.dropped}  # fmt: skip

    @app.get("/v1/model")
    async def model() -> Dict[str, Any]:
        return model_info

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def page() -> str:
        return (resources.files("dabnet") / "assets" / "index.html").read_text()

    @app.post(
        "/v1/segment",
        responses={200: {"content": {"application/json": {}, "image/png": {}}}, 400: {}, 403: {}, 413: {}, 415: {}, 429: {},
                   503: {}, 504: {}},  # fmt: skip
    )
    async def segment(
        request: Request,
        format: str = Query("json", pattern="^(json|label|overlay)$", description="json, label (PNG of class ids) or overlay (PNG)"),
    ):
        """Segment one image (raw image bytes, or multipart with a 'file' field)."""
        client = request.client.host if request.client else ""
        clients.acquire(client)
        held: List[int] = [0]
        state: Dict[str, Any] = {}
        try:
            return await _segment(request, format, held, state)
        finally:
            if "job" in state:
                state["job"].abandon()
            elif "ticket" in state:
                state["ticket"].release()
            budget.give_back(held)
            clients.release(client)

    async def _segment(request: Request, format: str, held: List[int], state: Dict[str, Any]):
        t0 = time.perf_counter()
        try:  # a slow client cannot hold a connection for ever
            data = await asyncio.wait_for(image_bytes(request, cfg.max_bytes, budget, held), timeout=cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPProblem(408, f"the upload did not complete within {cfg.timeout_s} s") from None
        # What the image costs, from its header, before any pixel of it is allocated.
        carried = held[0] + (len(data) if request.headers.get("content-type", "").lower().startswith("multipart/") else 0)
        header = image_header(data, cfg.max_pixels)
        if worker.queue.full():  # before decoding what could not be queued
            raise HTTPProblem(503, "the server is busy: try again shortly", {"Retry-After": str(ledger.retry_after())})
        plan = cost.plan(header.height, header.width)
        state["ticket"] = ledger.admit(plan, cost.plan(1, 1))
        answering = answer_bytes(header.pixels, format, label_bytes)
        budget.resize(held, carried + max(decode_peak_bytes(header), answering))
        # Decoding and encoding large images take a while: off the event loop, so /healthz and others stay prompt.
        image = await asyncio.to_thread(decode_header, header, lambda n: budget.take(n, held))
        del data, header
        budget.resize(held, carried + answering)  # decoding's transient bytes are free again
        job = Job(image, asyncio.get_running_loop(), asyncio.get_running_loop().create_future(), plan, state.pop("ticket"),
                  time.monotonic() + cfg.timeout_s)  # fmt: skip
        state["job"] = job
        worker.put(job)
        try:
            label, model_ms = await answer_or_leave(job.future, request.receive, cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPProblem(504, f"no answer within {cfg.timeout_s} s: the server is overloaded") from None
        except ClientGone:
            log.warning("client %s left before its answer: its image was dropped%s", request.client,
                        "" if job.running else " unrun")  # fmt: skip
            raise HTTPProblem(499, "client closed the connection") from None
        total_ms = (time.perf_counter() - t0) * 1000
        headers = {"X-Latency-Ms": f"{total_ms:.1f}", "X-Model-Ms": f"{model_ms:.1f}"}
        if format == "label":
            return Response(await asyncio.to_thread(encode_png, label), media_type="image/png", headers=headers)
        if format == "overlay":
            png = await asyncio.to_thread(lambda: encode_png(overlay(image, colorize(label, seg.palette))))
            return Response(png, media_type="image/png", headers=headers)
        counts = class_counts(label, len(seg.class_names))
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

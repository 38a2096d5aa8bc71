"""`unix-cxr serve --api`: an OpenAI-compatible REST server around one `UniXPipeline` (FastAPI + uvicorn).

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /v1/chat/completions``: the last ``user`` message must hold one ``image_url`` part with a ``data:`` URL of
  a PNG, JPEG or DICOM file (``data:image/png;base64,...``; a ``application/dicom`` media type also reads a DICOM
  data set without its preamble) and at most one ``text`` part, the report prompt (absent: the pipeline's default).
  Other messages are ignored (no multi-turn). The report is the assistant message; ``finish_reason`` is ``stop``
  when the model ended it, ``length`` when ``max_tokens`` (default: the pipeline's ``max_new_tokens``) cut it.
  ``stream: true`` sends ``chat.completion.chunk`` server-sent events as the tokens are chosen, then
  ``data: [DONE]``. Decoding follows the pipeline's settings (greedy) unless ``temperature`` is given: 0 is
  greedy, > 0 samples at that temperature with ``top_p`` (default 1), seeded by ``seed`` (default: a random one).
  ``model`` is not checked. ``usage`` counts the prompt's text tokens (not the image's) and the report's tokens.
* ``POST /v1/images/generations``: ``prompt`` (a report), ``n`` (1..MAX_IMAGES), ``size`` ``"SxS"`` (a side the
  pipeline can draw; default its ``image_size``), ``seed`` (extension; default random) -> ``data[i].b64_json``, a PNG
  marked synthetic (:func:`unix_cxr.infer.marking.synthetic_png`), with ``revised_prompt`` the text-to-image
  prompt it was drawn from. Only ``response_format: "b64_json"`` (also the default here) is served.
* ``GET /v1/models`` (the one model, id ``pipe.name``) and ``GET /health`` (no API key needed).

Limits: one model call at a time in a single worker thread (the event loop never waits on the model); at most
``max_queue`` calls wait behind the running one, more are refused with 503 and ``Retry-After``. A request body over
``max_upload_mb`` is refused with 413 (from ``Content-Length``, else while it is read), so is an image over
MAX_IMAGE_PIXELS pixels (from its header, before decoding). Prompts hold 1..MAX_PROMPT_CHARS characters.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (invalid JSON
or fields, bad base64, not an image, a truncated image, a bad prompt, ``n`` or ``size``, a ``url`` response
format), 401 for a missing or wrong API key (``Authorization: Bearer KEY``, when the server has one), 404 / 405 for
unknown routes, 413, 503, and 500 for a model failure (logged; the server stays up). Research use only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import secrets
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, StringConstraints
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data.imageio import read_image
from ..data.sources import as_tokenize
from ..data.transforms import as_uint8_grey, vae_size
from ..infer.marking import synthetic_png
from ..infer.pipeline import Report, UniXPipeline

log = logging.getLogger(__name__)

__all__ = ["MAX_IMAGES", "MAX_IMAGE_PIXELS", "MAX_PROMPT_CHARS", "build_api", "run_api"]

MAX_PROMPT_CHARS = 2000
"""Longest prompt (report text or report instruction) accepted, in characters."""
MAX_IMAGES = 4
"""Most images one ``/v1/images/generations`` request may ask for."""
MAX_IMAGE_PIXELS = 40_000_000
"""Largest uploaded image, in pixels (a 43 x 43 cm detector at 0.1 mm is ~18.5 MP)."""
MAX_NEW_TOKENS = 4096
"""Largest ``max_tokens`` accepted (the model's context may allow fewer: then 400)."""
RETRY_AFTER_S = 2
"""The ``Retry-After`` of a 503 (queue full), in seconds."""

_DICOM_TYPES = ("application/dicom", "image/dicom")
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)", re.DOTALL)
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")

Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)]


# ---- request models ---------------------------------------------------------------------------------------------
class ImageURL(BaseModel):
    url: str = Field(description="a data: URL of a PNG, JPEG or DICOM file, base64-encoded")


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class TextPart(BaseModel):
    type: Literal["text"]
    text: Prompt


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Annotated[ImagePart | TextPart, Field(discriminator="type")]] | None = None


class ChatCompletionRequest(BaseModel):
    model: str | None = Field(None, description="ignored: the server has one model")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2, description="> 0: sample at this temperature; else greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling, when temperature > 0")
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS, description="as max_tokens")
    seed: int | None = Field(None, ge=0, description="seed of the sampling (temperature > 0)")


class ImageGenerationRequest(BaseModel):
    prompt: Prompt = Field(description="a report to draw the radiograph of")
    model: str | None = Field(None, description="ignored: the server has one model")
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = Field(None, description="'SxS', e.g. '512x512' (default: the model's image size)")
    response_format: str | None = Field("b64_json", description="only 'b64_json' is supported")
    seed: int | None = Field(None, ge=0, description="extension: the same seed draws the same images")


# ---- errors -----------------------------------------------------------------------------------------------------
class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _server_error(exc: Exception) -> APIError:
    return APIError(500, f"the server failed ({type(exc).__name__}); see its log", kind="server_error")


def _validation_error(exc: RequestValidationError) -> APIError:
    first = max(exc.errors(), key=lambda e: len(e.get("loc", ())))  # of a union's alternatives: the deepest
    parts = [str(part) for part in first.get("loc", ()) if part != "body" and "[" not in str(part)]
    where = [part for i, part in enumerate(parts) if not i or part != parts[i - 1]]  # no discriminator tags
    param = ".".join(where) or None
    return APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code="invalid_value")


class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, from Content-Length or while reading it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = APIError(413, f"the request body is larger than the limit of {self.max_bytes / 2**20:g} MB",
                           code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            await refusal.response()(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await refusal.response()(scope, receive, send)
                return
            more = message.get("more_body", False)
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


# ---- the model queue --------------------------------------------------------------------------------------------
class _ModelQueue:
    """One worker thread for every model call; at most ``max_waiting`` calls wait behind the running one."""

    def __init__(self, max_waiting: int) -> None:
        self.capacity = max_waiting + 1
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unix-cxr-api")
        self._lock = threading.Lock()
        self._pending = 0

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """``fn(*args, **kwargs)`` in the worker; APIError 503 when the queue is full."""
        with self._lock:
            if self._pending >= self.capacity:
                raise APIError(503, f"the server is busy ({self.capacity - 1} requests waiting); retry later",
                               kind="server_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
            self._pending += 1
        future = self._worker.submit(fn, *args, **kwargs)
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: Future) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


async def _result(future: Future) -> Any:
    """The result of a model call; a ValueError (bad input the model refused) as a 400, any other failure logged
    and answered 500 (handled here, so that the connection stays open)."""
    try:
        return await asyncio.wrap_future(future)
    except ValueError as err:
        raise APIError(400, str(err)) from None
    except Exception as err:
        log.error("model call failed", exc_info=err)
        raise _server_error(err) from None


# ---- helpers ----------------------------------------------------------------------------------------------------
def _decode_image(url: str) -> np.ndarray:
    """A ``data:`` URL of a PNG, JPEG or DICOM file -> (H, W) uint8 grey; APIError 400 / 413 for a bad one."""
    match = _DATA_URL.fullmatch(url.strip())
    if match is None:
        raise APIError(400, "image_url.url must be a base64 data: URL (data:image/png;base64,...); the server "
                            "fetches nothing", param="image_url")
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "image_url.url: the data is not valid base64", param="image_url") from None
    if not data:
        raise APIError(400, "image_url.url: the image is empty", param="image_url")
    with tempfile.TemporaryDirectory(prefix="unix-cxr-api-") as folder:
        path = Path(folder) / ("upload.dcm" if match["type"] in _DICOM_TYPES else "upload")
        path.write_bytes(data)
        try:
            return as_uint8_grey(read_image(path, max_pixels=MAX_IMAGE_PIXELS))
        except ValueError as err:
            message = "the image: " + str(err).replace(f"{path}: ", "").replace(str(path), "the image")
            if "decompression-bomb guard" in message:  # read_image's refusal of a huge image, from its header
                raise APIError(413, message, param="image_url", code="image_too_large") from None
            raise APIError(400, message, param="image_url") from None


def _chat_inputs(request: ChatCompletionRequest) -> tuple[str, str | None]:
    """The image URL and the prompt (None: the default) of the last user message."""
    users = [m for m in request.messages if m.role == "user"]
    parts = users[-1].content if users else None
    if not isinstance(parts, list):
        raise APIError(400, "the last user message must be a list of content parts with one image_url part",
                       param="messages")
    images = [p.image_url.url for p in parts if isinstance(p, ImagePart)]
    texts = [p.text for p in parts if isinstance(p, TextPart)]
    if len(images) != 1 or len(texts) > 1:
        raise APIError(400, f"the last user message needs exactly one image_url part and at most one text part, "
                            f"got {len(images)} and {len(texts)}", param="messages")
    return images[0], texts[0] if texts else None


def _decoding(request: ChatCompletionRequest) -> tuple[dict[str, Any], int | None]:
    """The decoding overrides of a chat request and its sampling seed (None: the pipeline's)."""
    overrides: dict[str, Any] = {}
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        overrides["max_new_tokens"] = max_tokens
    if request.temperature is None:
        return overrides, None
    if request.temperature == 0:
        return {**overrides, "do_sample": False}, None
    overrides.update(do_sample=True, temperature=request.temperature, top_p=request.top_p or 1.0)
    return overrides, secrets.randbits(63) if request.seed is None else request.seed


@contextmanager
def _settings(pipe: UniXPipeline, decoding: dict[str, Any], seed: int | None) -> Iterator[None]:
    """The pipeline with these decoding overrides and read seed, for one call (in the worker thread only)."""
    saved = pipe.decoding, pipe.read_seed
    pipe.decoding = {**pipe.decoding, **decoding}
    pipe.read_seed = pipe.read_seed if seed is None else seed
    try:
        yield
    finally:
        pipe.decoding, pipe.read_seed = saved


def _side(size: str | None, pipe: UniXPipeline) -> int:
    """``"SxS"`` -> S, checked against the pipeline (None: its image size); APIError 400 otherwise."""
    if size is None:
        return pipe.image_size
    match = _SIZE.fullmatch(size)
    if match is None or match[1] != match[2]:
        raise APIError(400, f"size must be 'SxS' (a square, e.g. '{pipe.image_size}x{pipe.image_size}'), got "
                            f"{size!r}", param="size")
    try:
        return vae_size(int(match[1]), pipe.model.cfg)
    except ValueError as err:
        raise APIError(400, f"size {size!r}: {err}", param="size") from None


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


# ---- the app ----------------------------------------------------------------------------------------------------
def build_api(pipe: UniXPipeline, *, api_key: str | None = None, max_queue: int = 16,
              max_upload_mb: float = 20.0) -> FastAPI:
    """The REST app of ``pipe`` (module doc): one worker thread, at most ``max_queue`` requests waiting, bodies up
    to ``max_upload_mb`` MB, and ``Authorization: Bearer API_KEY`` required on ``/v1`` when ``api_key`` is set."""
    if max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {max_queue}")
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    queue = _ModelQueue(max_queue)
    count_tokens = as_tokenize(pipe.tokenizer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.shutdown()

    app = FastAPI(title="unix-cxr", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API of a UniX chest X-ray model. Research use only; not for "
                              "diagnosis.")
    app.add_middleware(_BodyLimit, max_bytes=int(max_upload_mb * 2**20))

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception) -> JSONResponse:  # a bug: uvicorn logs it
        return _server_error(exc).response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    v1 = [Depends(authorize)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": pipe.name}

    @app.get("/v1/models", dependencies=v1)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": pipe.name, "object": "model", "created": 0, "owned_by": "unix-cxr"}]}

    @app.post("/v1/chat/completions", dependencies=v1, response_model=None)
    async def chat(request: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        url, prompt = _chat_inputs(request)
        grey = await asyncio.to_thread(_decode_image, url)
        decoding, seed = _decoding(request)
        prompt_tokens = len(pipe.prompt_ids if prompt is None else count_tokens(prompt))
        head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": pipe.name}

        def read(on_token: Callable[[dict[int, int]], None] | None = None) -> Report:
            with _settings(pipe, decoding, seed):
                [report] = pipe.report([grey], prompt=prompt, on_token=on_token)
            log.info("report: %d tokens in %.1f s", len(report.token_ids), report.seconds)
            return report

        def finish(report: Report) -> str:
            return "stop" if report.finished else "length"

        if not request.stream:
            report = await _result(queue.submit(read))
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(report.token_ids),
                     "total_tokens": prompt_tokens + len(report.token_ids)}
            return {**head, "object": "chat.completion", "usage": usage, "choices": [{
                "index": 0, "message": {"role": "assistant", "content": report.text}, "logprobs": None,
                "finish_reason": finish(report)}]}

        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[int | None] = asyncio.Queue()
        job = queue.submit(read, lambda new: loop.call_soon_threadsafe(tokens.put_nowait, new[0]))
        job.add_done_callback(lambda _job: loop.call_soon_threadsafe(tokens.put_nowait, None))

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
            return _sse({**head, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            ids: list[int] = []
            sent = ""
            while (token := await tokens.get()) is not None:
                ids.append(token)
                text = pipe.tokenizer.decode(ids, skip_special_tokens=True).strip()
                if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
                    yield chunk({"content": text[len(sent):]})
                    sent = text
            try:
                report = await _result(job)
            except APIError as err:  # the response has begun: the error is its last event
                yield _sse(err.body())
            else:
                if not report.text.startswith(sent):
                    log.warning("the streamed text is not a prefix of the report (the tokenizer decodes a prefix "
                                "differently); the stream differs from the report")
                elif report.text != sent:
                    yield chunk({"content": report.text[len(sent):]})
                yield chunk({}, finish(report))
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/images/generations", dependencies=v1)
    async def images(request: ImageGenerationRequest) -> dict[str, Any]:
        if request.response_format not in (None, "b64_json"):
            raise APIError(400, f"response_format {request.response_format!r} is not supported: only 'b64_json' "
                                "(the server keeps no files to link to)", param="response_format")
        side = _side(request.size, pipe)
        drawn = await _result(queue.submit(pipe.generate, [request.prompt], n=request.n, seed=request.seed,
                                           size=side))
        log.info("images: %d of %dx%d, seed %d", len(drawn), side, side, drawn[0].seed)
        pngs = await asyncio.to_thread(lambda: [synthetic_png(i.pixels, model=pipe.name, prompt=i.prompt,
                                                              seed=i.seed) for i in drawn])
        return {"created": int(time.time()), "data": [
            {"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": image.prompt}
            for png, image in zip(pngs, drawn, strict=True)]}

    return app


def run_api(pipe: UniXPipeline, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
            max_queue: int = 16, max_upload_mb: float = 20.0) -> None:
    """Serve :func:`build_api` on ``host``:``port`` with uvicorn until interrupted."""
    app = build_api(pipe, api_key=api_key, max_queue=max_queue, max_upload_mb=max_upload_mb)
    log.info("OpenAI-compatible API of %s on http://%s:%d/v1%s (research use only; not for diagnosis)", pipe.name,
             host, port, "" if api_key else ", no API key")
    uvicorn.run(app, host=host, port=port, log_config=None)

"""The OpenAI-compatible REST server (unix_cxr.serve.api) over real HTTP on localhost.

uvicorn runs in a background thread with a pipeline of a tiny random release folder (tests/conftest.py); the
official ``openai`` client and httpx talk to it. Random weights: the texts and images mean nothing; these tests pin
the protocol (answers equal the pipeline's own, streaming, seeds, marking), the queue and the error answers.

Run: pytest tests/test_serve_api.py
"""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from conftest import write_release
from PIL import Image as PILImage
from test_imageio import ramp, write_dicom
from test_pipeline import word_tokenizer

from unix_cxr.config import load_config
from unix_cxr.infer.marking import read_marking
from unix_cxr.infer.pipeline import UniXPipeline
from unix_cxr.serve.api import MAX_IMAGE_PIXELS, MAX_PROMPT_CHARS, build_api

SETTINGS = {"decoding": {"max_new_tokens": 6}, "sampling": {"num_timesteps": 3}, "image_size": 32, "batch_size": 1}
API_KEY = "sk-test"
MAX_QUEUE = 2  # with the running call: 3 requests in the server at most
MAX_UPLOAD_MB = 0.5
REPORT = "FINDINGS: Moderate right pleural effusion. IMPRESSION: Effusion."


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` on a free localhost port in a background thread: yields its base URL, then stops it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> UniXPipeline:
    cfg = load_config("tiny")
    folder = write_release(tmp_path_factory.mktemp("api") / "release", cfg, word_tokenizer(cfg.decoder.vocab_size))
    t = cfg.tokens
    return UniXPipeline.from_pretrained(folder, special_tokens=(t.bos, t.eos, t.start_of_image, t.end_of_image),
                                        **SETTINGS)


@pytest.fixture(scope="module")
def base(pipe) -> Iterator[str]:
    with serving(build_api(pipe, api_key=API_KEY, max_queue=MAX_QUEUE, max_upload_mb=MAX_UPLOAD_MB)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(base) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def radiograph() -> tuple[bytes, np.ndarray]:
    """An 8-bit grey PNG (a smooth ramp with a bright blob) and its pixels."""
    y, x = np.mgrid[:48, :40]
    pixels = (x * 3 + y * 2 + 120 * np.exp(-((x - 25) ** 2 + (y - 20) ** 2) / 60)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue(), pixels


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def user(url: str, text: str | None = None) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}] + ([{"type": "text", "text": text}] if text else [])
    return [{"role": "system", "content": "ignored"}, {"role": "user", "content": parts}]


def huge_png_header(side: int = 7000) -> bytes:
    """A PNG that claims side x side pixels (49 MP) in a few bytes: only its header can be read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_error(response: httpx.Response, status: int, fragment: str) -> dict:
    """``response`` is an OpenAI-shaped error with this status whose message contains ``fragment``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and fragment in error["message"], error
    return error


# ------------------------------------------------------------------------------------------------ chat completions


def test_chat_completion_is_the_pipelines_report_plain_and_streamed(client, pipe, radiograph, tmp_path):
    png, pixels = radiograph
    [expected] = pipe.report([pixels])
    assert len(expected.token_ids) >= 2 and not expected.finished  # random weights: runs to max_new_tokens

    reply = client.chat.completions.create(model="anything", messages=user(data_url(png)))
    assert reply.object == "chat.completion" and reply.model == pipe.name and reply.id.startswith("chatcmpl-")
    assert reply.created > 0 and len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == "length"  # Report.finished is False: max_new_tokens was reached
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.prompt_tokens == len(pipe.prompt_ids) > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="anything", messages=user(data_url(png)), stream=True))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(pieces) == choice.message.content
    assert len(pieces) == len(expected.token_ids)  # one delta per token: streamed as they are chosen
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]

    # a text part is the prompt; max_tokens cuts the report
    prompted = client.chat.completions.create(model="m", messages=user(data_url(png), "w5 w6 w7"), max_tokens=2)
    [short] = pipe.report([pixels], prompt="w5 w6 w7")
    assert prompted.choices[0].message.content == pipe.tokenizer.decode(short.token_ids[:2]).strip()
    assert prompted.usage.completion_tokens == 2 and prompted.usage.prompt_tokens == 3
    assert pipe.decoding == SETTINGS["decoding"]  # the request's settings were for that request only

    # a DICOM file is read as the pipeline reads it
    dicom = write_dicom(tmp_path / "cxr.dcm", ramp(40, 36))
    reply = client.chat.completions.create(model="m", messages=user(data_url(dicom.read_bytes(), "application/dicom")))
    assert reply.choices[0].message.content == pipe.report([dicom])[0].text


def test_chat_temperature_samples_with_the_seed(client, radiograph):
    png, _ = radiograph

    def text(**kwargs) -> str:
        reply = client.chat.completions.create(model="m", messages=user(data_url(png)), **kwargs)
        return reply.choices[0].message.content

    greedy = text(temperature=0)
    assert greedy == text()
    sampled = [text(temperature=2.0, seed=seed) for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != greedy and sampled[2] != sampled[0]


# ------------------------------------------------------------------------------------------------ images


def test_images_generate_marked_pngs_that_the_seed_repeats(client, pipe):
    reply = client.images.generate(prompt=REPORT, n=2, size="32x32", response_format="b64_json",
                                   extra_body={"seed": 7, "quality": "ignored"})
    assert reply.created > 0 and len(reply.data) == 2
    expected = pipe.generate([REPORT], n=2, seed=7)
    for item, image in zip(reply.data, expected, strict=True):
        png = base64.b64decode(item.b64_json)
        with PILImage.open(io.BytesIO(png)) as img:
            assert img.size == (32, 32) and np.array_equal(np.asarray(img.convert("RGB")), image.pixels)
        marking = read_marking(png)
        assert marking["unix-cxr:synthetic"] == "true" and marking["unix-cxr:seed"] == "7"
        assert marking["unix-cxr:model"] == pipe.name and marking["unix-cxr:prompt"] == image.prompt
        assert item.revised_prompt == image.prompt == "Moderate right pleural effusion."
    assert reply.data[0].b64_json != reply.data[1].b64_json  # two draws, two noises
    again = client.images.generate(prompt=REPORT, n=2, size="32x32", extra_body={"seed": 7})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in reply.data]
    other = client.images.generate(prompt=REPORT, extra_body={"seed": 8})  # default size: the pipeline's
    assert other.data[0].b64_json != reply.data[0].b64_json
    larger = client.images.generate(prompt=REPORT, size="48x48", extra_body={"seed": 7})
    with PILImage.open(io.BytesIO(base64.b64decode(larger.data[0].b64_json))) as img:
        assert img.size == (48, 48)


def test_models_health_and_openapi(client, base, pipe):
    assert [m.id for m in client.models.list()] == [pipe.name]
    health = httpx.get(f"{base}/health")  # no API key needed
    assert health.status_code == 200 and health.json()["status"] == "ok"
    schema = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/images/generations", "/v1/models", "/health"} <= set(schema["paths"])
    assert {"ChatCompletionRequest", "ImageGenerationRequest"} <= set(schema["components"]["schemas"])


# ------------------------------------------------------------------------------------------------ the queue


def test_a_full_queue_answers_503_and_the_server_stays_responsive(base, http, pipe, monkeypatch):
    gate = threading.Event()
    drawing = pipe.generate
    monkeypatch.setattr(pipe, "generate", lambda *a, **k: gate.wait(30) and drawing(*a, **k))
    answers: list[httpx.Response] = []

    def ask() -> None:
        answers.append(http.post("/v1/images/generations", json={"prompt": REPORT, "seed": 1}))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    try:
        for t in threads:
            t.start()
        admitted = MAX_QUEUE + 1  # one drawing, MAX_QUEUE waiting
        deadline = time.monotonic() + 30
        while len(answers) < 20 - admitted and time.monotonic() < deadline:
            time.sleep(0.02)
        refused = list(answers)
        assert len(refused) == 20 - admitted
        for r in refused:
            assert_error(r, 503, "busy")
            assert r.headers["Retry-After"].isdigit() and r.json()["error"]["code"] == "queue_full"
        assert http.get("/health", timeout=5).status_code == 200  # the event loop does not wait on the model
    finally:
        gate.set()
        for t in threads:
            t.join(60)
    served = [r for r in answers if r.status_code == 200]
    assert len(answers) == 20 and len(served) == admitted
    assert all(r.json()["data"][0]["b64_json"] == served[0].json()["data"][0]["b64_json"] for r in served)
    assert http.post("/v1/images/generations", json={"prompt": REPORT, "seed": 1}).status_code == 200


# ------------------------------------------------------------------------------------------------ bad requests


def chat_body(url: str, text: str | None = None) -> dict:
    return {"model": "m", "messages": user(url, text)}


BAD_CHATS = {
    "bad base64": (chat_body("data:image/png;base64,@@not base64@@"), 400, "not valid base64"),
    "not an image": (chat_body(data_url(b"FINDINGS: no image here, only text.")), 400, "not a PNG, JPEG or DICOM"),
    "not a data URL": (chat_body("https://example.com/cxr.png"), 400, "data: URL"),
    "empty image": (chat_body("data:image/png;base64,"), 400, "empty"),
    "huge image": (chat_body(data_url(huge_png_header())), 413, f"more than the limit of {MAX_IMAGE_PIXELS:,}"),
    "no image part": ({"model": "m", "messages": [{"role": "user", "content": "describe"}]}, 400, "image_url"),
    "two text parts": ({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, 400, "at most one text part"),
    "empty prompt": (chat_body("data:image/png;base64,AAAA", "   "), 400,
                     "messages.1.content.1.text: String should have at least 1 character"),
    "no messages": ({"model": "m", "messages": []}, 400, "messages"),
    "bad temperature": ({**chat_body("data:image/png;base64,AAAA"), "temperature": -1}, 400, "temperature"),
}
BAD_IMAGES = {
    "url response format": ({"prompt": REPORT, "response_format": "url"}, 400, "only 'b64_json'"),
    "n=0": ({"prompt": REPORT, "n": 0}, 400, "n: Input should be greater than or equal to 1"),
    "n too large": ({"prompt": REPORT, "n": 99}, 400, "n: Input should be less than or equal to"),
    "size not SxS": ({"prompt": REPORT, "size": "big"}, 400, "size must be 'SxS'"),
    "size not square": ({"prompt": REPORT, "size": "32x48"}, 400, "size must be 'SxS'"),
    "size not a multiple of 16": ({"prompt": REPORT, "size": "40x40"}, 400, "multiple of 16"),
    "size over the latent table": ({"prompt": REPORT, "size": "1024x1024"}, 400, "exceeds the latent table"),
    "empty prompt": ({"prompt": " \n "}, 400, "prompt: String should have at least 1 character"),
    "over-long prompt": ({"prompt": "w1 " * MAX_PROMPT_CHARS}, 400, f"at most {MAX_PROMPT_CHARS} characters"),
    "non-string prompt": ({"prompt": 5}, 400, "prompt: Input should be a valid string"),
    "no prompt": ({"n": 1}, 400, "prompt: Field required"),
}


@pytest.mark.parametrize("case", BAD_CHATS)
def test_bad_chat_requests_are_4xx(http, case):
    body, status, fragment = BAD_CHATS[case]
    assert_error(http.post("/v1/chat/completions", json=body), status, fragment)
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_requests_are_4xx(http, case):
    body, status, fragment = BAD_IMAGES[case]
    assert_error(http.post("/v1/images/generations", json=body), status, fragment)
    assert http.get("/health").status_code == 200


def test_truncated_png_is_400(http, radiograph):
    png, _ = radiograph
    error = assert_error(http.post("/v1/chat/completions", json=chat_body(data_url(png[: len(png) // 2]))), 400,
                         "truncated or corrupt")
    assert error["param"] == "image_url" and "/tmp" not in error["message"]  # no server paths in messages


def test_oversize_bodies_are_413(http, base):
    big = b"x" * int(MAX_UPLOAD_MB * 2**20 + 1000)
    assert_error(http.post("/v1/chat/completions", content=big), 413, "larger than the limit")  # Content-Length
    assert_error(http.post("/v1/chat/completions", content=iter([big[:100_000]] * 6)), 413, "larger than")  # chunked
    png_url = data_url(huge_png_header())
    assert len(png_url) < MAX_UPLOAD_MB * 2**20  # the body is small: the image is refused for its pixels
    error = assert_error(http.post("/v1/chat/completions", json=chat_body(png_url)), 413, "49,000,000 pixels")
    assert error["code"] == "image_too_large"
    assert httpx.get(f"{base}/health").status_code == 200


def test_api_key_is_required(base, client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        error = assert_error(httpx.get(f"{base}/v1/models", headers=headers), 401, "API key")
        assert error["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt=REPORT)
    with pytest.raises(openai.BadRequestError, match="b64_json"):
        client.images.generate(prompt=REPORT, response_format="url")
    assert httpx.get(f"{base}/health").status_code == 200


def test_bad_json_and_unknown_routes_answer_in_the_error_shape(http):
    assert_error(http.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}),
                 400, "JSON")
    assert_error(http.get("/v1/nothing"), 404, "Not Found")
    assert_error(http.get("/v1/chat/completions"), 405, "Method Not Allowed")


def test_a_model_failure_is_500_and_the_server_stays_up(client, http, pipe, radiograph, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(pipe, "report", broken)
    messages = user(data_url(radiograph[0]))
    with pytest.raises(openai.InternalServerError, match="RuntimeError"):
        client.chat.completions.create(model="m", messages=messages)
    with pytest.raises(openai.APIError, match="RuntimeError"):  # the stream has begun: its last event is the error
        list(client.chat.completions.create(model="m", messages=messages, stream=True))
    monkeypatch.undo()
    assert http.get("/health").status_code == 200
    assert client.chat.completions.create(model="m", messages=messages).choices[0].message.content


def test_build_api_checks_its_limits(pipe):
    with pytest.raises(ValueError, match="max_queue"):
        build_api(pipe, max_queue=0)
    with pytest.raises(ValueError, match="max_upload_mb"):
        build_api(pipe, max_upload_mb=0)

"""Bad-input battery of the data commands (issue 12, part A): `label`, `data clean`, `data build`,
`data cache-latents` (its input listing) and `data preview`.

Every input is generated here (no network, nothing from outside). Each case asserts the README's promise:

* bad arguments or a bad single input: exit status 2, one stderr line naming the file or flag, no traceback, an
  existing output left as it was (`bad_inputs.assert_usage_error`, `bad_inputs.assert_untouched`);
* one bad item of a batch: the documented status 1, the failure recorded per item (``FILE:LINE: reason`` or
  per file), the good items written, no traceback.

Each case runs under a time limit (`bad_inputs.run`), so a hang (a FIFO, /dev/zero) fails instead of blocking.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bad_inputs import assert_untouched, assert_usage_error, run
from PIL import Image

from unix_cxr.data.adapters import MAX_XML_BYTES

OLD = b"an existing output that a failed run must leave alone\n"
DEEP = "[" * 100_000  # json raises RecursionError on this
HUGE_ID = "7" * 5_000  # int() refuses more than 4,300 digits
NOT_UTF8 = os.fsdecode(b"s\xff2")  # a file name with a byte that is not UTF-8


@dataclass
class Case:
    """argv to run; `status` 2 (usage: one error line naming each of `needles`; `untouched` files kept byte for
    byte) or 1 (batch: each of `needles` in the log, `good` checks what was written)."""

    argv: list
    status: int
    needles: tuple = ()
    untouched: list = field(default_factory=list)
    good: Callable[[], None] | None = None


def _old(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(OLD)
    return path


def _ids(path: Path) -> list:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- label -------------------------------------------------------------------------------------------------------
GOOD_REPORT = json.dumps({"id": "good", "report": "Small left pleural effusion."})


def _label_batch(tmp: Path, bad: str | bytes, reason: str) -> Case:
    src = tmp / "in.jsonl"
    bad = bad.encode() if isinstance(bad, str) else bad
    src.write_bytes(GOOD_REPORT.encode() + b"\n" + bad + b"\n")
    out = _old(tmp / "labels.jsonl")

    def good() -> None:
        assert _ids(out) == ["good"]

    return Case(["label", src, "-o", out, "--no-progress"], 1, (f"{src}:2: {reason}",), good=good)


def _label_usage(tmp: Path, make_input: Callable[[Path], Path], *needles: str) -> Case:
    src = make_input(tmp)
    out = _old(tmp / "labels.jsonl")
    return Case(["label", src, "-o", out], 2, needles or (str(src),), untouched=[out])


def _label_all_fail(tmp: Path) -> Case:
    src = tmp / "in.jsonl"
    src.write_text(DEEP + "\n" + '{"id": "\\udfff", "report": "x"}\n')
    out = _old(tmp / "labels.jsonl")

    def good() -> None:
        assert_untouched(out, OLD)
        assert not (tmp / "labels.jsonl.partial").exists()

    return Case(["label", src, "-o", out], 1, (f"{src}:1: not valid JSON (nested too deeply)",
                                               f"{src}:2: not valid Unicode", "every line failed"), good=good)


def _label_output_under_file(tmp: Path) -> Case:
    src = tmp / "in.jsonl"
    src.write_text(GOOD_REPORT + "\n")
    (tmp / "afile").write_text("x")
    return Case(["label", src, "-o", tmp / "afile" / "labels.jsonl"], 2, ("afile",))


def _label_output_dir(tmp: Path) -> Case:
    src = tmp / "in.jsonl"
    src.write_text(GOOD_REPORT + "\n")
    (tmp / "outdir").mkdir()
    return Case(["label", src, "-o", tmp / "outdir"], 2, ("outdir", "folder"))


# ---- data clean --------------------------------------------------------------------------------------------------
GOOD_TEXT = json.dumps({"id": "good", "text": "FINDINGS: Lungs are clear."})


def _clean_batch(tmp: Path, bad: str, reason: str) -> Case:
    src = tmp / "reports.jsonl"
    src.write_text(GOOD_TEXT + "\n" + bad + "\n")
    out = _old(tmp / "clean.jsonl")

    def good() -> None:
        assert _ids(out) == ["good"]

    return Case(["data", "clean", src, "-o", out, "--no-progress"], 1, (f"{src}:2: {reason}",), good=good)


def _clean_folder(tmp: Path, name: str, content: bytes | None, reason: str) -> Case:
    root = tmp / "files" / "p10"
    root.mkdir(parents=True)
    (root / "s1.txt").write_text("FINDINGS: Lungs are clear.\n")
    bad = root / f"{name}.txt"
    if content is None:
        bad.symlink_to(tmp / "gone.txt")
    else:
        bad.write_bytes(content)
    out = _old(tmp / "clean.jsonl")

    def good() -> None:
        assert _ids(out) == ["s1"]

    shown = os.fsencode(bad).decode("utf-8", "backslashreplace")
    return Case(["data", "clean", tmp / "files", "-o", out, "--no-progress"], 1, (f"{shown}: {reason}",), good=good)


def _clean_usage(tmp: Path, make_input: Callable[[Path], Path], *needles: str, extra: tuple = ()) -> Case:
    src = make_input(tmp)
    out = _old(tmp / "clean.jsonl")
    return Case(["data", "clean", src, "-o", out, *extra], 2, needles or (str(src),), untouched=[out])


def _jsonl_with_good_text(tmp: Path) -> Path:
    src = tmp / "reports.jsonl"
    src.write_text(GOOD_TEXT + "\n")
    return src


def _clean_all_fail(tmp: Path) -> Case:
    src = tmp / "reports.jsonl"
    src.write_text('{"id": ' + HUGE_ID + ', "text": "FINDINGS: Clear."}\n{"id": "a"}\n')
    out = _old(tmp / "clean.jsonl")
    return Case(["data", "clean", src, "-o", out], 1, (f"{src}:1: not valid JSON (an integer of more than 4300",
                                                       "every item failed"), good=lambda: assert_untouched(out, OLD))


def _clean_output_dir(tmp: Path) -> Case:
    (tmp / "outdir").mkdir()
    return Case(["data", "clean", _jsonl_with_good_text(tmp), "-o", tmp / "outdir"], 2, ("outdir", "folder"))


# ---- data build --------------------------------------------------------------------------------------------------
GOOD_RECORD = json.dumps({"patient_id": "p1", "study_id": "s1", "image_paths": ["a.png"], "view_position": "PA",
                          "findings": "Lungs are clear.", "impression": ""})
GOOD_CHAT = json.dumps({"messages": [{"role": "user", "content": "<image>Describe."},
                                     {"role": "assistant", "content": "FINDINGS: Lungs are clear."}],
                        "images": ["files/p10/p10000001/s50000001/a.jpg"]})


def _records_written(out: Path, n: int = 1) -> Callable[[], None]:
    def good() -> None:
        assert len((out / "records.jsonl").read_text().splitlines()) == n
        summary = json.loads((out / "summary.json").read_text())
        assert summary["records"] == n and summary["failures"]

    return good


def _build_lines(tmp: Path, source: str, good_line: str, bad: str, reason: str) -> Case:
    src = tmp / f"{source}.jsonl"
    src.write_text(good_line + "\n" + bad + "\n")
    out = tmp / "out"
    return Case(["data", "build", "--source", source, src, "--out", out, "--skip-image-check", "--no-progress"], 1,
                (f"{src}:2: {reason}",), good=_records_written(out))


def _build_csv_bad_byte(tmp: Path) -> Case:
    src = tmp / "data.csv"
    src.write_bytes(b"patient_id,image_paths,findings\np1,a.png,Lungs are clear.\np2,b.png,Heart \xe9 enlarged.\n")
    out = tmp / "out"
    return Case(["data", "build", "--source", "csv", src, "--out", out, "--skip-image-check"], 1,
                (f"{src}:3: not valid UTF-8 (byte 0xe9)",), good=_records_written(out))


def _build_usage(tmp: Path, source: str, make_root: Callable[[Path], Path], *needles: str) -> Case:
    root = make_root(tmp)
    records = _old(tmp / "out" / "records.jsonl")
    return Case(["data", "build", "--source", source, root, "--out", tmp / "out", "--skip-image-check"], 2,
                needles or (str(root),), untouched=[records])


def _csv_header_not_utf8(tmp: Path) -> Path:
    src = tmp / "data.csv"
    src.write_bytes(b"patient_\xffid,image_paths\np1,a.png\n")
    return src


def _chat_list_deep(tmp: Path) -> Path:
    src = tmp / "chat.json"
    src.write_text(DEEP)
    return src


def _not_a_tar(tmp: Path) -> Path:
    src = tmp / "reports.tgz"
    src.write_bytes(b"\x1f\x8b" + b"\0" * 64)
    return src


IU_XML = ('<eCitation><uId id="CXR{n}"/><Abstract><AbstractText Label="FINDINGS">The lungs are clear.'
          '</AbstractText></Abstract><parentImage id="CXR{n}_IM-0001-1001"/></eCitation>')


def _build_iu_bomb(tmp: Path) -> Case:
    archive = tmp / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("ecgen/1.xml", IU_XML.format(n=1).encode()),
                           ("ecgen/2.xml", b"<eCitation>" + b" " * (MAX_XML_BYTES + 1) + b"</eCitation>")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp / "out"
    return Case(["data", "build", "--source", "iu", archive, "--out", out, "--all-views"], 1,
                (f"{archive}:ecgen/2.xml: cannot read XML report: archive member", "limit of"),
                good=_records_written(out))


# ---- data cache-latents ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from unix_cxr.checkpoint.vae import save_vae
    from unix_cxr.config import load_config
    from unix_cxr.model.vae import LatentVAE

    torch.manual_seed(0)
    return save_vae(LatentVAE(load_config("tiny").vae).eval(), tmp_path_factory.mktemp("vae") / "vae.safetensors")


def _png(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 100).save(path)
    return path


def _cache_argv(src: Path, tmp: Path, vae: Path) -> list:
    return ["data", "cache-latents", src, "--vae", vae, "--out", tmp / "cache", "--size", "256", "--no-progress",
            "--device", "cpu"]


def _cache_index(tmp: Path) -> dict:
    return json.loads((tmp / "cache" / "index.json").read_text(encoding="utf-8"))


def _cache_non_utf8_name(tmp: Path, vae: Path) -> Case:
    _png(tmp / "img" / "a.png")
    _png(tmp / "img" / f"{NOT_UTF8}.png")

    def good() -> None:
        index = _cache_index(tmp)
        assert list(index["ids"]) == ["a"]
        (failed,) = index["failed"]
        assert failed["id"] == "s\\xff2" and "file name is not valid UTF-8" in failed["error"]

    return Case(_cache_argv(tmp / "img", tmp, vae), 1, ("s\\xff2", "file name is not valid UTF-8"), good=good)


def _cache_text_as_image(tmp: Path, vae: Path) -> Case:
    _png(tmp / "img" / "a.png")
    (tmp / "img" / "notes.png").write_text("FINDINGS: confidential report text.\n")
    src = tmp / "captions.jsonl"
    src.write_text(json.dumps({"image": "img/a.png", "caption": "x"}) + "\n"
                   + json.dumps({"image": "img/notes.png", "caption": "y"}) + "\n" + DEEP + "\n")

    def good() -> None:
        index = _cache_index(tmp)
        assert list(index["ids"]) == ["img/a"]
        errors = {f["id"]: f["error"] for f in index["failed"]}
        assert "confidential" not in json.dumps(index) and "not a PNG, JPEG or DICOM" in errors["img/notes"]
        assert errors[f"{src}:3"] == "not valid JSON (nested too deeply)"

    return Case(_cache_argv(src, tmp, vae), 1, ("notes.png", "the content looks like text"), good=good)


def _cache_jsonl_bad_ids(tmp: Path, vae: Path) -> Case:
    _png(tmp / "img" / "a.png")
    src = tmp / "captions.jsonl"
    src.write_text(json.dumps({"image": "img/a.png", "caption": "x"}) + "\n"
                   + '{"id": "\\ud800", "image": "img/a.png", "caption": "y"}\n'
                   + '{"id": ' + HUGE_ID + ', "image": "img/a.png"}\n')

    def good() -> None:
        index = _cache_index(tmp)
        assert list(index["ids"]) == ["img/a"]
        assert {f["id"] for f in index["failed"]} == {f"{src}:2", f"{src}:3"}

    return Case(_cache_argv(src, tmp, vae), 1, ("not valid Unicode (a lone surrogate \\ud800",
                                                "an integer of more than 4300 digits"), good=good)


def _cache_usage(tmp: Path, vae: Path, make_input: Callable[[Path], Path], *needles: str) -> Case:
    src = make_input(tmp)
    return Case(_cache_argv(src, tmp, vae), 2, needles or (str(src),))


# ---- data preview ------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _preview_input(tmp: Path, kind: str) -> Path:
    path = tmp / "x.png"
    if kind == "truncated":
        _png(tmp / "good.png", (64, 64))
        path.write_bytes((tmp / "good.png").read_bytes()[:45])
    elif kind == "huge-header":
        header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                         + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    elif kind == "fifo":
        _fifo(path)
    elif kind == "dev-zero":
        return Path("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("FINDINGS: confidential report text.\n")
    elif kind == "missing":
        pass
    return path


def _preview(tmp: Path, kind: str, needle: str) -> Case:
    src = _preview_input(tmp, kind)
    out = _old(tmp / "preview.png")
    return Case(["data", "preview", src, "-o", out], 2, (str(src), needle), untouched=[out])


# ---- the cases ---------------------------------------------------------------------------------------------------
CASES: dict[str, Callable[..., Case]] = {
    # label: one bad line among good ones
    "label-nested-100000-deep": lambda t: _label_batch(t, DEEP, "not valid JSON (nested too deeply)"),
    "label-5000-digit-id": lambda t: _label_batch(t, '{"id": ' + HUGE_ID + ', "report": "x"}',
                                                  "not valid JSON (an integer of more than 4300 digits)"),
    "label-lone-surrogate-id": lambda t: _label_batch(t, '{"id": "\\ud800", "report": "x"}',
                                                      "not valid Unicode (a lone surrogate \\ud800"),
    "label-lone-surrogate-key": lambda t: _label_batch(t, '{"id": "b", "report": "x", "\\udc00": 1}',
                                                       "not valid Unicode (a lone surrogate \\udc00"),
    "label-not-utf8-byte": lambda t: _label_batch(t, b'{"id": "b", "report": "caf\xe9"}',
                                                  "not valid UTF-8 (byte 0xe9 at offset 26)"),
    "label-not-json": lambda t: _label_batch(t, '{"id": "b", "report": ', "not valid JSON"),
    "label-id-is-a-list": lambda t: _label_batch(t, '{"id": [1], "report": "x"}', "'id' must be a string or"),
    "label-duplicate-id": lambda t: _label_batch(t, '{"id": "good", "report": "x"}', "duplicate id 'good'"),
    "label-every-line-fails": _label_all_fail,
    # label: bad arguments
    "label-missing-input": lambda t: _label_usage(t, lambda t: t / "missing.jsonl"),
    "label-input-is-a-folder": lambda t: _label_usage(t, lambda t: (t / "in").mkdir() or t / "in"),
    "label-input-is-a-fifo": lambda t: _label_usage(t, lambda t: _fifo(t / "in.jsonl")),
    "label-input-is-dev-zero": lambda t: _label_usage(t, lambda t: Path("/dev/zero")),
    "label-output-is-a-folder": _label_output_dir,
    "label-output-under-a-file": _label_output_under_file,
    # data clean: one bad item among good ones
    "clean-nested-100000-deep": lambda t: _clean_batch(t, DEEP, "not valid JSON (nested too deeply)"),
    "clean-5000-digit-id": lambda t: _clean_batch(t, '{"id": ' + HUGE_ID + ', "text": "x"}',
                                                  "not valid JSON (an integer of more than 4300 digits)"),
    "clean-lone-surrogate-id": lambda t: _clean_batch(t, '{"id": "\\ud800", "text": "FINDINGS: Clear."}',
                                                      "not valid Unicode (a lone surrogate \\ud800"),
    "clean-lone-surrogate-text": lambda t: _clean_batch(t, '{"id": "b", "text": "FINDINGS: Clear \\udfff."}',
                                                        "not valid Unicode (a lone surrogate \\udfff"),
    "clean-folder-non-utf8-name": lambda t: _clean_folder(t, NOT_UTF8, b"FINDINGS: Clear.\n",
                                                          "file name is not valid UTF-8"),
    "clean-folder-non-utf8-content": lambda t: _clean_folder(t, "s2", b"FINDINGS: Clear \xff.\n",
                                                             "not valid UTF-8 (byte 0xff at offset 16)"),
    "clean-folder-broken-link": lambda t: _clean_folder(t, "s2", None, "cannot read"),
    "clean-every-item-fails": _clean_all_fail,
    # data clean: bad arguments
    "clean-missing-input": lambda t: _clean_usage(t, lambda t: t / "missing.jsonl"),
    "clean-input-is-a-fifo": lambda t: _clean_usage(t, lambda t: _fifo(t / "in.jsonl")),
    "clean-single-txt-file": lambda t: _clean_usage(t, lambda t: (t / "s1.txt").write_text("x") and t / "s1.txt",
                                                    "s1.txt", "single .txt file"),
    "clean-output-is-a-folder": _clean_output_dir,
    "clean-llm-plain-http-remote": lambda t: _clean_usage(
        t, _jsonl_with_good_text, "--llm-allow-http",
        extra=("--llm-endpoint", "http://llm.example.org/v1", "--llm-model", "m")),
    "clean-llm-endpoint-unreachable": lambda t: _clean_usage(
        t, _jsonl_with_good_text, "cannot reach the LLM endpoint", "--llm-fallback",
        extra=("--llm-endpoint", f"http://127.0.0.1:{_closed_port()}/v1", "--llm-model", "m", "--llm-timeout", "5")),
    "clean-llm-fallback-without-endpoint": lambda t: _clean_usage(t, _jsonl_with_good_text, "--llm-fallback",
                                                                  extra=("--llm-fallback",)),
    # data build: one bad item among good ones
    "build-jsonl-nested-100000-deep": lambda t: _build_lines(t, "jsonl", GOOD_RECORD, DEEP,
                                                             "not valid JSON (nested too deeply)"),
    "build-jsonl-5000-digit-id": lambda t: _build_lines(
        t, "jsonl", GOOD_RECORD, '{"patient_id": ' + HUGE_ID + '}', "not valid JSON (an integer of more than 4300"),
    "build-jsonl-lone-surrogate-path": lambda t: _build_lines(
        t, "jsonl", GOOD_RECORD, GOOD_RECORD.replace("a.png", "\\ud800.png"), "not valid Unicode"),
    "build-chat-jsonl-nested-100000-deep": lambda t: _build_lines(t, "chat", GOOD_CHAT, DEEP,
                                                                  "not valid JSON (nested too deeply)"),
    "build-chat-jsonl-5000-digit": lambda t: _build_lines(t, "chat", GOOD_CHAT, '{"images": [' + HUGE_ID + "]}",
                                                          "not valid JSON (an integer of more than 4300"),
    "build-csv-not-utf8-byte": _build_csv_bad_byte,
    "build-iu-archive-member-bomb": _build_iu_bomb,
    # data build: bad arguments or a bad single input
    "build-missing-root": lambda t: _build_usage(t, "jsonl", lambda t: t / "missing.jsonl"),
    "build-csv-header-not-utf8": lambda t: _build_usage(t, "csv", _csv_header_not_utf8, "data.csv:1",
                                                        "not valid UTF-8"),
    "build-chat-list-nested-too-deep": lambda t: _build_usage(t, "chat", _chat_list_deep, "chat.json",
                                                              "nested too deeply"),
    "build-iu-not-an-archive": lambda t: _build_usage(t, "iu", _not_a_tar, "reports.tgz"),
    "build-jsonl-root-is-a-fifo": lambda t: _build_usage(t, "jsonl", lambda t: _fifo(t / "in.jsonl"), "in.jsonl",
                                                         "not a regular file"),
    "build-csv-root-is-dev-zero": lambda t: _build_usage(t, "csv", lambda t: Path("/dev/zero"), "/dev/zero",
                                                         "not a regular file"),
    # data preview: one bad image
    "preview-truncated-png": lambda t: _preview(t, "truncated", "truncated"),
    "preview-png-header-100000x100000": lambda t: _preview(t, "huge-header", "decompression-bomb guard"),
    "preview-fifo": lambda t: _preview(t, "fifo", "not a regular file"),
    "preview-dev-zero": lambda t: _preview(t, "dev-zero", "not a regular file"),
    "preview-directory": lambda t: _preview(t, "directory", "is a directory"),
    "preview-empty-file": lambda t: _preview(t, "empty", "empty file"),
    "preview-text-file-not-echoed": lambda t: _preview(t, "text", "looks like text"),
    "preview-missing-file": lambda t: _preview(t, "missing", "no such file"),
}

CACHE_CASES: dict[str, Callable[[Path, Path], Case]] = {
    "cache-folder-non-utf8-name": _cache_non_utf8_name,
    "cache-text-file-as-image-not-echoed": _cache_text_as_image,
    "cache-jsonl-lone-surrogate-and-5000-digit-ids": _cache_jsonl_bad_ids,
    "cache-missing-input": lambda t, v: _cache_usage(t, v, lambda t: t / "missing.jsonl"),
    "cache-input-is-a-fifo": lambda t, v: _cache_usage(t, v, lambda t: _fifo(t / "in.jsonl"), "in.jsonl",
                                                       "not a regular file"),
}


def _check(case: Case, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    before = {Path(p): Path(p).read_bytes() for p in case.untouched}
    outcome = run(case.argv, capsys, timeout=20)
    assert "Traceback" not in outcome.err, outcome.err
    if case.status == 2:
        line = assert_usage_error(outcome, *case.needles)
        assert not line.rstrip().endswith(":"), line
    else:
        assert outcome.rc == case.status, (outcome.rc, outcome.err)
        text = outcome.err + caplog.text
        for needle in case.needles:
            assert needle in text, (needle, text[-3000:])
    for path, content in before.items():
        assert_untouched(path, content)
    if case.good is not None:
        case.good()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   caplog: pytest.LogCaptureFixture) -> None:
    _check(CASES[name](tmp_path), capsys, caplog)


@pytest.mark.parametrize("name", list(CACHE_CASES))
def test_bad_cache_input(name: str, tmp_path: Path, vae_file: Path, capsys: pytest.CaptureFixture[str],
                         caplog: pytest.LogCaptureFixture) -> None:
    _check(CACHE_CASES[name](tmp_path, vae_file), capsys, caplog)


def test_battery_size() -> None:
    assert len(CASES) + len(CACHE_CASES) >= 35

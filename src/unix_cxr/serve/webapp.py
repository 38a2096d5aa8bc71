"""`unix-cxr serve`: a gradio web app around one `UniXPipeline`, shared by every visitor.

Two tabs:

* **Read an X-ray**: upload a PNG, JPEG or DICOM file (read by :func:`unix_cxr.data.imageio.read_image`, so a DICOM
  is windowed as the command line reads it); the app shows the image as the model sees it (squared and resized for
  the vision encoder), then *Write report* streams the report token by token. When it is complete, every finding
  the labeler finds is highlighted ("Pleural Effusion (positive)") and the 14 CheXpert labels are listed.
* **Draw an X-ray**: a report text, the sampling steps, the CFG scale and a seed; *Draw* shows the radiograph with
  "SYNTHETIC" burned into the displayed copy, and offers the model's PNG with the synthetic marking of
  :mod:`unix_cxr.infer.marking` in its metadata.

Both model calls share one queue slot (``concurrency_id``) and a single worker thread, so requests run one at a
time (a report whose visitor leaves is still finished, in the background); at most ``max_queue`` wait, more are
refused. Bad input (not an image, truncated, too large, an empty or over-long prompt) is answered with a message in
the app, which stays usable. A research-use notice heads the page.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import shutil
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..chexpert import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from ..data.imageio import read_image
from ..data.transforms import as_uint8_grey, siglip_image
from ..eval.labeler import Labeler, Mention
from ..infer.marking import save_synthetic_png
from ..infer.pipeline import UniXPipeline

log = logging.getLogger(__name__)

__all__ = ["MAX_PROMPT_CHARS", "build_webapp", "check_prompt", "finding_spans", "label_rows", "load_upload",
           "mark_synthetic", "mention_label", "notice", "run_webapp"]

MAX_PROMPT_CHARS = 2000
"""Longest report text the draw tab accepts (a long radiology report is ~1,000 characters)."""

STATUS_NAMES = {POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain"}
_COLOURS = {POSITIVE: "#ef4444", NEGATIVE: "#22c55e", UNCERTAIN: "#f59e0b"}
_MODEL_QUEUE = "model"  # the concurrency id of every event that runs the model
_MARK_MIN_SIDE = 256  # smaller drawings are enlarged for display, so that the mark stays legible
_PROGRESS = gr.Progress()  # the draw handler's progress bar (gradio finds it by its default value)


def notice(pipe: UniXPipeline) -> str:
    """The research-use notice at the top of the page (Markdown), with a word on the demo model when it is one."""
    text = f"**Research use only; not for diagnosis.** Model: {pipe.name}."
    if "demo" in pipe.name.lower():
        text += (" The demo model was trained on synthetic phantoms, not on patients: its reports and drawings show "
                 "what the pipeline does, nothing clinical.")
    return text


# ---- pure helpers (tested without a browser) ------------------------------------------------------------------
def mention_label(mention: Mention) -> str:
    """The highlight label of a mention: ``"Pleural Effusion (positive)"``."""
    return f"{mention.observation} ({STATUS_NAMES[mention.status]})"


def _loose(phrase: str) -> re.Pattern[str]:
    """`phrase` as a whole-word, case-insensitive pattern that takes any white space between its words."""
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, phrase.split())) + r"(?!\w)", re.IGNORECASE)


def finding_spans(text: str, mentions: Iterable[Mention]) -> list[tuple[str, str | None]]:
    """``text`` cut into ``(segment, label)`` pairs for ``gr.HighlightedText``: each labeler mention's phrase with
    its :func:`mention_label`, the text between with None. The segments join back to ``text``.

    The labeler reports lower-cased, space-collapsed sentences in reading order and no offsets, so each mention is
    placed by finding its sentence after the previous one, then the n-th occurrence of its phrase in it. Labels of
    mentions on the same phrase are joined with ``"; "``; a mention overlapping an earlier one, or whose sentence is
    not found, is not highlighted.
    """
    labels: dict[tuple[int, int], list[str]] = {}
    sentence, region, seen = "", (0, 0), Counter[tuple[str, str]]()
    for mention in mentions:
        key, phrase = (mention.observation, mention.text), _loose(mention.text)
        found = _nth(phrase, text, region, seen[key]) if mention.sentence == sentence else None
        if found is None:  # a new sentence (or the same words again, later in the text)
            match = _loose(mention.sentence).search(text, region[1])
            if match is None:
                continue
            sentence, region, seen = mention.sentence, match.span(), Counter()
            found = _nth(phrase, text, region, 0)
            if found is None:
                continue
        seen[key] += 1
        labels.setdefault(found, []).append(mention_label(mention))
    out: list[tuple[str, str | None]] = []
    end = 0
    for (start, stop), names in sorted(labels.items()):
        if start < end:
            continue
        if start > end:
            out.append((text[end:start], None))
        out.append((text[start:stop], "; ".join(dict.fromkeys(names))))
        end = stop
    if end < len(text):
        out.append((text[end:], None))
    return out


def _nth(pattern: re.Pattern[str], text: str, region: tuple[int, int], n: int) -> tuple[int, int] | None:
    """The span of the ``n``-th match of ``pattern`` inside ``region`` of ``text``, or None."""
    matches = [m.span() for m in pattern.finditer(text, *region)]
    return matches[n] if n < len(matches) else None


def label_rows(labels: dict[str, int | None]) -> list[list[str]]:
    """The 14 CheXpert labels as ``[observation, "positive" | "negative" | "uncertain" | "not mentioned"]`` rows."""
    return [[name, STATUS_NAMES.get(labels.get(name), "not mentioned")] for name in CHEXPERT_LABELS]


def check_prompt(text: str | None) -> str:
    """The report text to draw from, stripped; ValueError when it is empty or longer than MAX_PROMPT_CHARS."""
    prompt = (text or "").strip()
    if not prompt:
        raise ValueError("Write a report to draw from: the text is empty.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The report is {len(prompt):,} characters long; at most {MAX_PROMPT_CHARS:,} are accepted.")
    return prompt


def mark_synthetic(pixels: np.ndarray, min_side: int = _MARK_MIN_SIDE) -> Image.Image:
    """A display copy of (H, W[, 3]) uint8 ``pixels`` with "SYNTHETIC" burned into its top-left corner (white on
    black); images smaller than ``min_side`` are first enlarged by a whole factor (nearest neighbour)."""
    img = Image.fromarray(np.asarray(pixels)).convert("RGB")
    factor = math.ceil(min_side / min(img.size))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(12, img.width // 16))
    pad = max(2, img.width // 100)
    right, bottom = draw.textbbox((pad, pad), "SYNTHETIC", font=font)[2:]
    draw.rectangle((0, 0, right + pad, bottom + pad), fill="black")
    draw.text((pad, pad), "SYNTHETIC", fill="white", font=font)
    return img


# ---- the app ----------------------------------------------------------------------------------------------------
def _user_error(err: Exception, path: str | None = None) -> gr.Error:
    """A gr.Error with the message of ``err``; the server's upload path is shortened to the file's name."""
    message = str(err)
    if path:
        message = message.replace(str(Path(path)), Path(path).name)
    return gr.Error(message, print_exception=False)


def load_upload(path: str | None, max_mb: float) -> np.ndarray:
    """An uploaded file as (H, W) uint8 grey; gr.Error (naming the file, not the server's path) for no file, a file
    of more than ``max_mb`` MB (2**20 bytes) or one that is not a readable PNG, JPEG or DICOM image."""
    if not path:
        raise gr.Error("Upload a radiograph first (PNG, JPEG or DICOM).", print_exception=False)
    size = Path(path).stat().st_size
    if size > max_mb * 2**20:
        raise gr.Error(f"{Path(path).name} is {size / 2**20:.1f} MB; at most {max_mb:g} MB are accepted.",
                       print_exception=False)
    try:
        return as_uint8_grey(read_image(path))
    except ValueError as err:
        raise _user_error(err, path) from None


class _App:
    """The event handlers of one web app: one pipeline, one worker thread, one folder for the PNG downloads."""

    def __init__(self, pipe: UniXPipeline, max_upload_mb: float) -> None:
        self.pipe = pipe
        self.max_mb = max_upload_mb
        self.labeler = pipe.labeler if callable(getattr(pipe.labeler, "mentions", None)) else Labeler()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unix-cxr-model")
        self.downloads = Path(tempfile.mkdtemp(prefix="unix-cxr-webapp-"))
        self.sampling = replace(pipe.drawer.sampling, **pipe.sampling)

    def model_view(self, grey: np.ndarray) -> Image.Image:
        """The image as the vision encoder sees it (squared, resized)."""
        return siglip_image(grey, self.pipe.model.cfg.vision, pad=self.pipe.pad)

    def preview(self, path: str | None) -> tuple[Any, Image.Image | None]:
        """On upload: the model's view of the file; a bad file is removed with a warning that says why."""
        if not path:
            return gr.skip(), None
        try:
            return gr.skip(), self.model_view(load_upload(path, self.max_mb))
        except gr.Error as err:
            gr.Warning(err.message)
            return None, None

    def read(self, path: str | None) -> Iterator[tuple[Any, ...]]:
        """Write the report of the uploaded file: yields (model view, text, findings, labels, status) as it goes."""
        grey = load_upload(path, self.max_mb)
        yield self.model_view(grey), "", None, None, "Writing the report..."
        tokens: SimpleQueue[int | None] = SimpleQueue()
        job = self.worker.submit(self.pipe.report, [grey], on_token=lambda new: tokens.put(new[0]))
        job.add_done_callback(lambda _job: tokens.put(None))
        ids: list[int] = []
        while (token := tokens.get()) is not None:
            ids.append(token)
            yield gr.skip(), self.pipe.tokenizer.decode(ids, skip_special_tokens=True).strip(), gr.skip(), \
                gr.skip(), gr.skip()
        try:
            [report] = job.result()
        except ValueError as err:
            raise _user_error(err, path) from None
        log.info("report written: %d tokens in %.1f s", len(report.token_ids), report.seconds)
        status = f"{len(report.token_ids)} tokens in {report.seconds:.1f} s"
        if not report.finished:
            status += "; stopped at the length limit before the end of the report"
        yield (gr.skip(), report.text, finding_spans(report.text, self.labeler.mentions(report.text)),
               label_rows(self.labeler.label(report.text)), status)

    def draw(self, text: str | None, steps: float, cfg: float, seed: float | None,
             progress: gr.Progress = _PROGRESS) -> tuple[Image.Image, str, str]:
        """Draw a radiograph of the report: (marked display copy, marked PNG path, status)."""
        try:
            prompt = check_prompt(text)
            job = self.worker.submit(  # in this event's context, where gradio finds its progress bar
                contextvars.copy_context().run, self.pipe.generate, [prompt], seed=None if seed is None else int(seed),
                steps=int(steps), cfg=float(cfg), on_step=lambda done, total: progress((done, total), desc="drawing"))
            [image] = job.result()
        except ValueError as err:
            raise _user_error(err) from None
        log.info("radiograph drawn: seed %d in %.1f s", image.seed, image.seconds)
        path = Path(tempfile.mkdtemp(dir=self.downloads)) / f"synthetic-seed{image.seed}.png"
        save_synthetic_png(path, image.pixels, model=self.pipe.name, prompt=image.prompt, seed=image.seed)
        return mark_synthetic(image.pixels), str(path), f"Seed {image.seed}, drawn in {image.seconds:.1f} s."


def build_webapp(pipe: UniXPipeline, *, max_queue: int = 16, max_upload_mb: float = 20.0) -> gr.Blocks:
    """The web app of ``pipe`` (module doc), queued: one model call at a time, at most ``max_queue`` waiting.

    ``max_upload_mb`` is checked by the handlers; :func:`run_webapp` also gives it to gradio, which then refuses
    larger uploads before they are stored.
    """
    app = _App(pipe, max_upload_mb)
    colours = {f"{obs} ({name})": _COLOURS[status] for obs in CHEXPERT_LABELS for status, name in STATUS_NAMES.items()}
    with gr.Blocks(title="UniX chest X-ray", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(f"# UniX: read and draw chest X-rays\n{notice(pipe)}", elem_id="notice")
        with gr.Tab("Read an X-ray", id="read"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Radiograph: PNG, JPEG or DICOM", elem_id="read-file")
                    view = gr.Image(label="As the model sees it", format="png", interactive=False,
                                    buttons=["fullscreen"], height=300, elem_id="read-view")
                    write = gr.Button("Write report", variant="primary", elem_id="read-button")
                with gr.Column():
                    report = gr.Textbox(label="Report", lines=5, interactive=False, elem_id="read-report")
                    status = gr.Markdown(elem_id="read-status")
                    findings = gr.HighlightedText(label="Findings (rule-based CheXpert labeler)", color_map=colours,
                                                  elem_id="read-findings")
                    labels = gr.Dataframe(headers=["Observation", "Label"], label="CheXpert labels",
                                          interactive=False, elem_id="read-labels")
            upload.change(app.preview, upload, [upload, view], show_progress="hidden")
            write.click(app.read, upload, [view, report, findings, labels, status], concurrency_id=_MODEL_QUEUE)
        with gr.Tab("Draw an X-ray", id="draw"):
            gr.Markdown("Every drawing is **synthetic**: marked on screen and in the PNG's metadata.")
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Report to draw from", lines=5, max_length=MAX_PROMPT_CHARS,
                                        placeholder="FINDINGS: Small right pleural effusion. No pneumothorax.",
                                        elem_id="draw-prompt")
                    steps = gr.Slider(2, max(100, app.sampling.num_timesteps), value=app.sampling.num_timesteps,
                                      step=1, label="Steps", elem_id="draw-steps")
                    cfg = gr.Slider(1.0, 10.0, value=app.sampling.cfg_text_scale, step=0.5, label="CFG scale",
                                    elem_id="draw-cfg")
                    seed = gr.Number(value=0, precision=0, label="Seed (empty: random)", elem_id="draw-seed")
                    draw = gr.Button("Draw", variant="primary", elem_id="draw-button")
                with gr.Column():
                    drawn = gr.Image(label="Synthetic radiograph", format="png", interactive=False,
                                     buttons=["fullscreen"], elem_id="draw-image")
                    download = gr.File(label="PNG (marked synthetic in its metadata)", interactive=False,
                                       elem_id="draw-file")
                    drawn_status = gr.Markdown(elem_id="draw-status")
            draw.click(app.draw, [prompt, steps, cfg, seed], [drawn, download, drawn_status],
                       concurrency_id=_MODEL_QUEUE)
    weakref.finalize(blocks, shutil.rmtree, app.downloads, ignore_errors=True)
    weakref.finalize(blocks, app.worker.shutdown, wait=False)
    return blocks.queue(max_size=max_queue, default_concurrency_limit=1)


def run_webapp(pipe: UniXPipeline, host: str = "127.0.0.1", port: int = 7860, max_queue: int = 16,
               max_upload_mb: float = 20.0, *, block: bool = True) -> gr.Blocks:
    """Serve :func:`build_webapp` on ``host``:``port`` until interrupted (``block=False``: return at once, the
    server running in a thread; the caller closes it with ``.close()``)."""
    blocks = build_webapp(pipe, max_queue=max_queue, max_upload_mb=max_upload_mb)
    log.info("web app of %s on http://%s:%d (research use only; not for diagnosis)", pipe.name, host, port)
    blocks.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 2**20),
                  prevent_thread_lock=not block, quiet=True, ssr_mode=False)
    return blocks

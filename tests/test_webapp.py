"""The web app's helpers (unix_cxr.serve.webapp) without a browser: highlight spans from labeler mentions, the label
table, prompt checks, the SYNTHETIC mark, upload checks, and the streaming report handler on the tiny random UniX.

Run: pytest tests/test_webapp.py   (the browser tests: tests/test_webapp_browser.py)
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="the web app needs gradio (pip install -e '.[serve]')")

from PIL import Image as PILImage  # noqa: E402
from test_pipeline import word_tokenizer  # noqa: E402

from unix_cxr.chexpert import CHEXPERT_LABELS  # noqa: E402
from unix_cxr.config import load_config  # noqa: E402
from unix_cxr.data import phantom as ph  # noqa: E402
from unix_cxr.data.imageio import read_image  # noqa: E402
from unix_cxr.data.transforms import as_uint8_grey  # noqa: E402
from unix_cxr.eval.labeler import Labeler, Mention  # noqa: E402
from unix_cxr.infer.pipeline import UniXPipeline  # noqa: E402
from unix_cxr.serve.webapp import (  # noqa: E402
    MAX_PROMPT_CHARS,
    _App,
    check_prompt,
    finding_spans,
    label_rows,
    load_upload,
    mark_synthetic,
    mention_label,
    notice,
)

LABELER = Labeler()


def highlighted(text: str) -> list[tuple[str, str]]:
    spans = finding_spans(text, LABELER.mentions(text))
    assert "".join(segment for segment, _ in spans) == text  # the segments cover the text exactly
    return [(segment, label) for segment, label in spans if label]


def test_mention_label():
    assert mention_label(Mention("Pleural Effusion", "effusion", 1, "positive", "small effusion")) == \
        "Pleural Effusion (positive)"
    assert mention_label(Mention("Edema", "edema", -1, "uncertainty", "possible edema")) == "Edema (uncertain)"
    assert mention_label(Mention("Pneumothorax", "pneumothorax", 0, "negation", "no pneumothorax")) == \
        "Pneumothorax (negative)"


def test_finding_spans_places_each_mention_in_the_original_text():
    text = ("FINDINGS: Moderate right pleural   effusion. No Pneumothorax.\nHeart size is normal.  "
            "IMPRESSION: Effusion; possible pneumonia or edema.")
    assert highlighted(text) == [
        ("effusion", "Pleural Effusion (positive)"), ("Pneumothorax", "Pneumothorax (negative)"),
        ("Heart size", "Cardiomegaly (negative)"), ("Effusion", "Pleural Effusion (positive)"),
        ("pneumonia", "Pneumonia (uncertain)"), ("edema", "Edema (uncertain)")]
    spans = finding_spans(text, LABELER.mentions(text))
    first = next(i for i, (_, label) in enumerate(spans) if label)
    assert spans[first - 1] == ("FINDINGS: Moderate right pleural   ", None)  # the first "effusion", not a later one


def test_finding_spans_repeated_phrases_and_sentences():
    # the same phrase twice in a sentence, and the same sentence twice: each mention gets its own occurrence
    text = "Effusion-1 edema-2 effusion-3. No effusion. No effusion."
    got = highlighted(text)
    assert got == [("Effusion", "Pleural Effusion (positive)"), ("edema", "Edema (positive)"),
                   ("effusion", "Pleural Effusion (positive)"), ("effusion", "Pleural Effusion (negative)"),
                   ("effusion", "Pleural Effusion (negative)")]
    spans = finding_spans(text, LABELER.mentions(text))
    assert [s for s, label in spans if label is None] == ["-1 ", "-2 ", "-3. No ", ". No ", "."]


def test_finding_spans_edge_cases():
    assert finding_spans("", []) == []
    assert finding_spans("Lungs are clear.", []) == [("Lungs are clear.", None)]
    lost = Mention("Edema", "edema", 1, "positive", "a sentence that is not in the text")
    assert finding_spans("Mild edema.", [lost]) == [("Mild edema.", None)]
    same = [Mention("Edema", "heart failure", 1, "positive", "heart failure"),
            Mention("Cardiomegaly", "heart failure", -1, "chf", "heart failure")]
    assert finding_spans("Heart failure.", same) == [("Heart failure", "Edema (positive); Cardiomegaly (uncertain)"),
                                                     (".", None)]


def test_label_rows():
    rows = label_rows({"Edema": 1, "Pneumothorax": 0, "Cardiomegaly": -1, "No Finding": None})
    assert [r[0] for r in rows] == list(CHEXPERT_LABELS)
    values = dict(rows)
    assert (values["Edema"], values["Pneumothorax"], values["Cardiomegaly"]) == ("positive", "negative", "uncertain")
    assert values["No Finding"] == values["Fracture"] == "not mentioned"


def test_check_prompt():
    assert check_prompt("  Small effusion.\n") == "Small effusion."
    for empty in (None, "", "  \n\t"):
        with pytest.raises(ValueError, match="empty"):
            check_prompt(empty)
    assert check_prompt("x" * MAX_PROMPT_CHARS) == "x" * MAX_PROMPT_CHARS
    with pytest.raises(ValueError, match=f"2,001 characters long; at most {MAX_PROMPT_CHARS:,}"):
        check_prompt("x" * (MAX_PROMPT_CHARS + 1))


def test_mark_synthetic_burns_a_label_into_a_display_copy():
    pixels = np.full((32, 32, 3), 128, np.uint8)
    marked = mark_synthetic(pixels)
    arr = np.asarray(marked.convert("L"))
    assert marked.size == (256, 256) and marked.mode == "RGB"  # enlarged 8x for a legible mark
    corner = arr[:20, :130]
    assert corner.min() == 0 and corner.max() == 255 and (corner == 255).mean() > 0.02  # white text on black
    assert (arr[128:, :] == 128).all()  # the rest is the image, untouched
    assert (pixels == 128).all()  # the model's pixels are not drawn on
    big = mark_synthetic(np.zeros((512, 512), np.uint8))
    assert big.size == (512, 512) and np.asarray(big.convert("L"))[:10, :10].max() == 0


def test_notice():
    assert notice(SimpleNamespace(name="UniX")).startswith("**Research use only; not for diagnosis.**")
    assert "synthetic phantoms" not in notice(SimpleNamespace(name="UniX"))
    demo = SimpleNamespace(name="UniX phantom demo (synthetic training data)")
    assert "trained on synthetic phantoms" in notice(demo)


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory):
    path = tmp_path_factory.mktemp("webapp") / "cxr.png"
    ph.save_png(ph.render(ph.PhantomSpec(size=64, seed=1)), path)
    return path


def test_load_upload(radiograph, tmp_path):
    assert np.array_equal(load_upload(str(radiograph), 1), as_uint8_grey(read_image(radiograph)))
    with pytest.raises(gr.Error, match="Upload a radiograph first"):
        load_upload(None, 1)
    with pytest.raises(gr.Error, match=r"cxr\.png is 0\.0 MB; at most 0\.0001 MB"):
        load_upload(str(radiograph), 0.0001)
    bad = tmp_path / "upload" / "notes.png"
    bad.parent.mkdir()
    bad.write_text("not an image")
    with pytest.raises(gr.Error) as err:
        load_upload(str(bad), 1)
    assert err.value.message.startswith("notes.png: not a PNG, JPEG or DICOM") and str(tmp_path) not in \
        err.value.message
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(radiograph.read_bytes()[:200])
    with pytest.raises(gr.Error, match=r"cut\.png: .*truncated or corrupt"):
        load_upload(str(truncated), 1)


@pytest.fixture(scope="module")
def app():
    tokenizer = word_tokenizer(load_config("tiny").decoder.vocab_size)
    pipe = UniXPipeline.from_pretrained("tiny", tokenizer=tokenizer, labeler=Labeler(), batch_size=1,
                                        decoding={"max_new_tokens": 6}, sampling={"num_timesteps": 3}, image_size=32)
    return _App(pipe, max_upload_mb=1)


def test_read_streams_the_report_token_by_token(app, radiograph):
    outputs = list(app.read(str(radiograph)))
    [report] = app.pipe.report([radiograph])
    view, first_text, *_ = outputs[0]
    assert isinstance(view, PILImage.Image) and first_text == ""
    streamed = [out[1] for out in outputs[1:-1]]
    assert len(streamed) == len(report.token_ids)  # one update per token
    assert streamed == [app.pipe.tokenizer.decode(report.token_ids[:k + 1], skip_special_tokens=True).strip()
                        for k in range(len(report.token_ids))]
    _, text, spans, rows, status = outputs[-1]
    assert text == report.text and "".join(s for s, _ in spans) == text
    assert rows == label_rows(Labeler().label(text)) and f"{len(report.token_ids)} tokens" in status


def test_draw_errors_are_shown_to_the_visitor(app):
    with pytest.raises(gr.Error, match="empty"):
        app.draw("   ", 3, 2.0, 0)
    with pytest.raises(gr.Error, match="num_timesteps must be >= 2"):
        app.draw("Small effusion.", 1, 2.0, 0)
    shown, path, status = app.draw("Small effusion.", 3, 2.0, None)  # no seed: a random one, reported
    assert shown.size == (256, 256) and path.endswith(".png") and status.startswith("Seed ")

"""The web app of `unix-cxr serve` (unix_cxr.serve.webapp), end to end in a headless Chromium (Playwright).

The app runs in-process on a free localhost port with a tiny random release folder; its tokenizer spells every
token as a finding ("effusion-7", "edema-12", ...), so the random reports have findings to highlight. The read-tab
test takes a screenshot; with UNIX_CXR_WRITE_SCREENSHOT=1 it replaces the user guide's docs/img/webapp.png.

Run: pytest tests/test_webapp_browser.py   (needs /usr/bin/chromium; CI installs it)
"""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium): the browser tests need it",
                allow_module_level=True)
pytest.importorskip("gradio", reason="the web app needs gradio (pip install -e '.[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (pip install "
                               "playwright)")

from conftest import write_release  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from unix_cxr.config import load_config  # noqa: E402
from unix_cxr.data import phantom as ph  # noqa: E402
from unix_cxr.eval.labeler import Labeler  # noqa: E402
from unix_cxr.infer.marking import read_marking, save_synthetic_dicom  # noqa: E402
from unix_cxr.infer.pipeline import UniXPipeline  # noqa: E402
from unix_cxr.serve.webapp import finding_spans, run_webapp  # noqa: E402

# gradio's queue statistics use pandas options that pandas 3 deprecates: not this project's warnings
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")

SETTINGS = {"decoding": {"max_new_tokens": 6}, "sampling": {"num_timesteps": 3}, "image_size": 32, "batch_size": 1}
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "webapp.png"
MAX_UPLOAD_MB = 0.5
TIMEOUT_MS = 30_000
WORDS = ("effusion", "pneumothorax", "cardiomegaly", "edema")


def finding_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Id i > 0 decodes to "<finding>-<i>"; every prompt word is unknown (id 0), whatever the vocabulary."""
    vocab = {"w0": 0} | {f"{WORDS[i % len(WORDS)]}-{i}": i for i in range(1, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> UniXPipeline:
    cfg = load_config("tiny")
    folder = write_release(tmp_path_factory.mktemp("webapp") / "release", cfg, finding_tokenizer(
        cfg.decoder.vocab_size))
    t = cfg.tokens
    return UniXPipeline.from_pretrained(folder, special_tokens=(t.bos, t.eos, t.start_of_image, t.end_of_image),
                                        labeler=Labeler(), **SETTINGS)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A phantom radiograph as PNG and as DICOM, random bytes named .png, and a PNG above the upload limit."""
    folder = tmp_path_factory.mktemp("uploads")
    pixels = ph.render(ph.PhantomSpec(findings=(ph.Finding("pleural_effusion", side="right"),), size=64, seed=0))
    ph.save_png(pixels, folder / "cxr.png")
    save_synthetic_dicom(folder / "cxr.dcm", np.fliplr(pixels).copy(), model="test", prompt="", seed=None)
    rng = np.random.default_rng(0)
    (folder / "bad.png").write_bytes(rng.bytes(2000))
    (folder / "big.png").write_bytes(rng.bytes(int(MAX_UPLOAD_MB * 2**20) + 1000))
    return {p.stem if p.suffix == ".png" else "dicom": p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def url(pipe):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = run_webapp(pipe, host="127.0.0.1", port=port, max_queue=4, max_upload_mb=MAX_UPLOAD_MB, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.get_by_text("Research use only; not for diagnosis.").wait_for()
    yield page
    page.close()


def upload(page, path: Path) -> None:
    page.locator("#read-file input[type=file]").set_input_files(path)


def write_report(page, path: Path) -> str:
    """Upload `path`, press Write report, wait for the finished report; its text."""
    upload(page, path)
    page.locator("#read-view img").wait_for()  # the image as the model sees it
    page.locator("#read-button").click()
    sync_api.expect(page.locator("#read-status")).to_contain_text("tokens in", timeout=TIMEOUT_MS)
    return page.locator("#read-report textarea").input_value()


def expect_toast(page, text: str) -> None:
    sync_api.expect(page.get_by_text(text).first).to_be_visible(timeout=TIMEOUT_MS)


def test_read_tab_streams_the_pipeline_report_with_highlighted_findings(page, pipe, files, tmp_path):
    text = write_report(page, files["cxr"])
    expected = pipe.report([files["cxr"]])[0].text
    assert text == expected and text
    spans = [label for _, label in finding_spans(text, pipe.labeler.mentions(text)) if label]
    assert spans  # every token of this tokenizer is a finding
    findings = page.locator("#read-findings")
    for label in set(spans):
        sync_api.expect(findings).to_contain_text(label)
    labels = page.locator("#read-labels")
    for name, value in pipe.labeler.label(text).items():
        if value == 1:
            sync_api.expect(labels.get_by_role("row").filter(has_text=name)).to_contain_text("positive")
    shot = DOCS_SCREENSHOT if os.environ.get("UNIX_CXR_WRITE_SCREENSHOT") == "1" else tmp_path / "webapp.png"
    page.screenshot(path=shot)
    assert PILImage.open(shot).size == (1100, 800)


def test_read_tab_dicom(page, pipe, files):
    assert write_report(page, files["dicom"]) == pipe.report([files["dicom"]])[0].text


def test_read_tab_bad_files_leave_the_app_usable(page, pipe, files):
    upload(page, files["bad"])
    expect_toast(page, "bad.png: not a PNG, JPEG or DICOM file")
    page.locator("#read-button").click()  # the bad file was removed: nothing to read
    expect_toast(page, "Upload a radiograph first")
    upload(page, files["big"])
    expect_toast(page, "exceed the maximum allowed size")  # refused by gradio itself
    assert write_report(page, files["cxr"]) == pipe.report([files["cxr"]])[0].text


def test_draw_tab_shows_a_marked_image_and_offers_the_marked_png(page, pipe):
    page.get_by_role("tab", name="Draw an X-ray").click()
    page.locator("#draw-button").click()
    expect_toast(page, "the text is empty")
    prompt = "FINDINGS: Small right pleural effusion. No pneumothorax."
    page.locator("#draw-prompt textarea").fill(prompt)
    page.locator("#draw-button").click()
    sync_api.expect(page.locator("#draw-status")).to_contain_text("Seed 0", timeout=TIMEOUT_MS)
    shown = PILImage.open(io.BytesIO(page.request.get(page.locator("#draw-image img").get_attribute("src")).body()))
    assert shown.size == (256, 256)  # 32 px, enlarged so that the mark can be read
    corner = np.asarray(shown.convert("L"))[:24, :120]
    assert corner.min() == 0 and corner.max() == 255  # white letters on black
    link = page.locator("#draw-file a").first
    png = page.request.get(link.get_attribute("href")).body()
    marking = read_marking(png)
    assert marking["unix-cxr:synthetic"] == "true" and marking["unix-cxr:seed"] == "0"
    assert marking["unix-cxr:prompt"] == "Small right pleural effusion. No pneumothorax."
    [drawn] = pipe.generate([prompt], seed=0)
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(png))), drawn.pixels)

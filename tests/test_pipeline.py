"""UniXPipeline (unix_cxr.infer.pipeline): from_pretrained, report() and generate() on the tiny random UniX.

Random weights: the texts and images mean nothing; these tests pin the API (inputs, streaming, seeds, errors).

Run: pytest tests/test_pipeline.py
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import write_release
from PIL import Image as PILImage
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.config import load_config
from unix_cxr.data import phantom as ph
from unix_cxr.infer.image import SamplingTrace
from unix_cxr.infer.pipeline import Image, Report, UniXPipeline, _TokenStream, resolve_dtype

REPORTS = ["FINDINGS: Moderate right pleural effusion. IMPRESSION: Effusion.", "The heart is enlarged."]
SETTINGS = {"decoding": {"max_new_tokens": 6}, "sampling": {"num_timesteps": 3}, "image_size": 32, "batch_size": 2}


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of tests/test_cycle.py: "w<i>" is id i, anything else w0."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer(load_config("tiny").decoder.vocab_size)


@pytest.fixture(scope="module")
def pipe(tokenizer) -> UniXPipeline:
    return UniXPipeline.from_pretrained("tiny", tokenizer=tokenizer, **SETTINGS)


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory):
    """A phantom radiograph as an 8-bit grey PNG, with its pixels."""
    image = ph.render(ph.PhantomSpec(findings=(ph.Finding("pleural_effusion", side="right"),), size=64, seed=0))
    path = tmp_path_factory.mktemp("pipeline") / "cxr.png"
    ph.save_png(image, path)
    return path, np.asarray(PILImage.open(path))


# ------------------------------------------------------------------------------------------------ construction


def test_from_pretrained_tiny_is_random_deterministic_and_logged(tokenizer, caplog):
    state = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="unix_cxr.infer.pipeline"):
        a = UniXPipeline.from_pretrained("tiny", tokenizer=tokenizer, **SETTINGS)
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    b = UniXPipeline.from_pretrained("tiny", tokenizer=tokenizer, **SETTINGS)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert "random weights" in a.name and a.image_size == 32 and a.batch_size == 2
    assert a.model.lm_head.weight.dtype == torch.float32  # "auto" on the CPU
    assert a.model.lm_head.weight.std() > 0 and a.model.llm2vae.weight.abs().sum() > 0  # not left at zero init
    c = UniXPipeline.from_pretrained("tiny", dtype="bfloat16", tokenizer=tokenizer, init_seed=1, **SETTINGS)
    assert c.model.lm_head.weight.dtype == torch.bfloat16 and c.vae.dtype == torch.bfloat16
    assert not torch.equal(c.model.lm_head.weight.float(), a.model.lm_head.weight)


def test_resolve_dtype():
    """The pipeline's names for the one policy (tests/test_dtype_policy.py covers "auto" per device)."""
    assert resolve_dtype("auto", "cpu") == torch.float32  # storage unknown
    assert resolve_dtype("auto", "cpu", torch.float32) == torch.float32
    assert resolve_dtype("float32") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError, match="floating-point"):
        resolve_dtype(torch.int64)
    with pytest.raises(ValueError, match="dtype must be 'auto'"):
        resolve_dtype("fp8")


def test_from_pretrained_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="no tokenizer"):
        UniXPipeline.from_pretrained("tiny")
    with pytest.raises(ValueError, match="not a folder"):
        UniXPipeline.from_pretrained(tmp_path / "missing", tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        UniXPipeline.from_pretrained(tmp_path, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="dtype"):
        UniXPipeline.from_pretrained("tiny", dtype="int8", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="decoding settings"):
        UniXPipeline.from_pretrained("tiny", tokenizer=tokenizer, decoding={"max_tokens": 3})


def test_from_pretrained_release_folder_matches_load_release(tmp_path, tokenizer, radiograph):
    """from_pretrained = load_release, then (on CPU) the linear layers packed for oneDNN as load_for_inference
    does (`infer.packed`; float32 packed products round differently from MKL's, so the comparison packs too)."""
    from unix_cxr.checkpoint.release import load_release
    from unix_cxr.infer.packed import pack_weights

    cfg = load_config("tiny")
    folder = write_release(tmp_path / "release", cfg, tokenizer)
    t = cfg.tokens
    tokens = (t.bos, t.eos, t.start_of_image, t.end_of_image)

    pipe = UniXPipeline.from_pretrained(folder, special_tokens=tokens, **SETTINGS)
    release = load_release(folder, dtype=torch.float32, tokens=cfg.tokens)
    direct = UniXPipeline(pack_weights(release.model), release.vae, release.tokenizer, **SETTINGS)
    path, _ = radiograph
    assert pipe.name == "UniX" and pipe.report([path])[0].token_ids == direct.report([path])[0].token_ids
    assert np.array_equal(pipe.draw(REPORTS[:1], seed=2)[0], direct.draw(REPORTS[:1], seed=2)[0])


# ------------------------------------------------------------------------------------------------ report()


def test_report_from_path_pil_and_array_is_the_same(pipe, radiograph):
    path, pixels = radiograph
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    inputs = [path, str(path), PILImage.open(path), pixels, pixels.astype(np.float32) / 255,
              np.repeat(pixels[..., None], 3, axis=2)]
    reports = pipe.report(inputs)
    assert len(reports) == len(inputs) and all(isinstance(r, Report) for r in reports)
    first = reports[0]
    assert first.text and first.token_ids and first.labels is None and first.seconds > 0
    assert first.text == pipe.tokenizer.decode(first.token_ids, skip_special_tokens=True).strip()
    for r in reports[1:]:
        assert (r.text, r.token_ids, r.finished) == (first.text, first.token_ids, first.finished)
    # one image on its own (not in a list) gives a list of one; read() is the texts of report()
    assert pipe.report(path)[0].token_ids == first.token_ids
    assert pipe.read([pixels, pixels]) == [first.text, first.text]


def test_compiled_decoding_reads_the_same_reports(pipe, tokenizer, radiograph):
    """`compile_decoding=True` (the CLI's --compile) reaches the report engine and changes no report."""
    compiled = UniXPipeline.from_pretrained("tiny", tokenizer=tokenizer, compile_decoding=True, **SETTINGS)
    assert compiled.reporter.compile and not pipe.reporter.compile
    _, pixels = radiograph
    assert compiled.read([pixels, pixels[::-1]]) == pipe.read([pixels, pixels[::-1]])


def test_report_token_stream_gets_every_token(pipe, radiograph):
    path, _ = radiograph
    images = [path, np.full((40, 48), 128, np.uint8), np.zeros((32, 32, 3), np.uint8)]  # two batches of <= 2
    steps: list[dict[int, int]] = []
    reports = pipe.report(images, on_token=steps.append)
    plain = pipe.report(images)  # streaming changes nothing
    assert [(r.text, r.token_ids, r.finished) for r in reports] == [(r.text, r.token_ids, r.finished) for r in plain]
    assert steps and all(isinstance(s, dict) and s for s in steps)
    streamed: dict[int, list[int]] = {i: [] for i in range(len(images))}
    for step in steps:
        for index, token in step.items():
            streamed[index].append(token)
    assert [streamed[i] for i in range(len(images))] == [r.token_ids for r in reports]
    assert sum(len(s) for s in steps) == sum(len(r.token_ids) for r in reports)


def test_token_stream_stops_at_eos_and_numbers_images_across_batches():
    got: list[dict[int, int]] = []
    stream = _TokenStream(got.append, first=4, rows=3, eos=9)
    for ids in ([5, 9, 6], [7, 1, 9], [9, 2, 3], [9, 9, 9]):
        stream(torch.tensor(ids))
    assert got == [{4: 5, 6: 6}, {4: 7}]  # EOS is not sent; rows that finished send nothing more


def test_report_labels_and_prompt(tokenizer, radiograph):
    from unix_cxr.eval.labeler import Labeler

    path, _ = radiograph
    pipe = UniXPipeline.from_pretrained("tiny", tokenizer=tokenizer, labeler=Labeler(), **SETTINGS)
    [rep] = pipe.report([path], labels=True)
    assert list(rep.labels) == list(CHEXPERT_LABELS) and rep.labels == Labeler().label(rep.text)
    assert pipe.report([path])[0].labels is None

    class OneAtATime:
        def label(self, text):
            return dict.fromkeys(CHEXPERT_LABELS)

    pipe.labeler = OneAtATime()
    assert pipe.report([path], labels=True)[0].labels == dict.fromkeys(CHEXPERT_LABELS)
    other = pipe.report([path], prompt="<image>w5 w6 w7")[0]
    assert pipe.report([path], prompt="w5 w6 w7")[0].token_ids == other.token_ids  # <image> is dropped


def test_report_bad_inputs(pipe, radiograph, tmp_path):
    path, pixels = radiograph
    with pytest.raises(ValueError, match="labels=True needs a labeler"):
        pipe.report([path], labels=True)
    with pytest.raises(ValueError, match=r"image 1: expected a file path, a PIL image or a numpy array, got int"):
        pipe.report([path, 42])
    with pytest.raises(ValueError, match=r"image 0: expected a grey \(H, W\) or RGB \(H, W, 3\) image"):
        pipe.report([np.zeros((2, 16, 16, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"image 0: .*\[0, 1\]"):
        pipe.report([pixels.astype(np.float32)])  # float pixels must lie in [0, 1]
    with pytest.raises(ValueError, match="image 0: RGB images must be uint8"):
        pipe.report([np.zeros((16, 16, 3), np.float32)])
    with pytest.raises(FileNotFoundError, match="no such file"):
        pipe.report([tmp_path / "missing.png"])
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a PNG, JPEG or DICOM"):
        pipe.report([tmp_path / "notes.png"])
    with pytest.raises(ValueError, match="expected one item or a list"):
        pipe.report(3.5)
    with pytest.raises(ValueError, match="prompt must be a string"):
        pipe.report([path], prompt=5)
    assert pipe.report([]) == []


# ------------------------------------------------------------------------------------------------ generate()


def test_generate_is_deterministic_given_a_seed(pipe):
    images = pipe.generate(REPORTS, n=2, seed=3)
    assert len(images) == 4 and all(isinstance(i, Image) for i in images)
    for img in images:
        assert img.pixels.dtype == np.uint8 and img.pixels.shape == (32, 32, 3) and img.seed == 3
        assert img.seconds > 0
    assert [i.prompt for i in images] == ["Moderate right pleural effusion."] * 2 + ["The heart is enlarged."] * 2
    again = pipe.generate(REPORTS, n=2, seed=3)
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(images, again, strict=True))
    assert not np.array_equal(images[0].pixels, images[1].pixels)  # n images of one report: different noise
    other = pipe.generate(REPORTS, n=2, seed=4)
    assert not any(np.array_equal(a.pixels, b.pixels) for a, b in zip(images, other, strict=True))
    # draw() is generate() with n=1: the UnifiedPipeline protocol of eval.cycle
    drawn = pipe.draw(REPORTS, seed=3)
    assert all(np.array_equal(a, b.pixels) for a, b in zip(drawn, pipe.generate(REPORTS, seed=3), strict=True))
    unseeded = pipe.generate(REPORTS[0])
    assert len(unseeded) == 1 and isinstance(unseeded[0].seed, int)
    assert np.array_equal(pipe.generate(REPORTS[0], seed=unseeded[0].seed)[0].pixels, unseeded[0].pixels)
    # steps, cfg and size reach the sampler
    assert pipe.generate(REPORTS[0], seed=3, size=48)[0].pixels.shape == (48, 48, 3)
    assert not np.array_equal(pipe.generate(REPORTS[0], seed=3, steps=4)[0].pixels, images[0].pixels)
    assert not np.array_equal(pipe.generate(REPORTS[0], seed=3, cfg=1.0)[0].pixels, images[0].pixels)


def test_generate_on_step_counts_the_euler_updates(pipe):
    trace = SamplingTrace()  # the engine's own record of its updates, for the expected count
    pipe.drawer.sample([[5]], 32, 32, generator=torch.Generator().manual_seed(0), trace=trace, num_timesteps=4)
    assert len(trace.timesteps) == 3  # 4 time-grid points: 3 Euler updates

    calls: list[tuple[int, int]] = []
    pipe.generate(REPORTS[:1], seed=0, steps=4, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    pipe.generate(REPORTS, n=2, seed=0, steps=4, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(i, 12) for i in range(1, 13)]  # 4 images, each sampled alone (batch-invariant): 4 x 3
    calls.clear()
    pipe.batch_invariant = False
    try:
        pipe.generate(REPORTS, n=2, seed=0, steps=4, on_step=lambda step, total: calls.append((step, total)))
    finally:
        pipe.batch_invariant = True
    assert calls == [(i, 6) for i in range(1, 7)]  # batch_size 2, rows together: two batches of 3 updates
    calls.clear()
    pipe.generate(REPORTS[:1], seed=0, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 2), (2, 2)]  # the pipeline's sampling setting: num_timesteps 3


def test_generate_bad_inputs(pipe, tokenizer):
    with pytest.raises(ValueError, match="report 1: expected a string, got int"):
        pipe.generate(["FINDINGS: clear.", 3])
    with pytest.raises(ValueError, match="expected one item or a list"):
        pipe.generate(7)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        pipe.generate(REPORTS, n=0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        pipe.generate(REPORTS, seed="one")
    with pytest.raises(ValueError, match="num_timesteps must be >= 2"):
        pipe.generate(REPORTS, steps=1)
    with pytest.raises(ValueError, match="steps must be an integer"):
        pipe.generate(REPORTS, steps=2.5)
    with pytest.raises(ValueError, match="multiple of 16"):
        pipe.generate(REPORTS, size=40)
    with pytest.raises(ValueError, match="exceeds the latent table"):
        pipe.generate(REPORTS, size=256)
    with pytest.raises(ValueError, match="VAE"):
        UniXPipeline(pipe.model, None, tokenizer).generate(REPORTS)
    assert pipe.generate([]) == []

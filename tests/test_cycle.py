"""Cycle consistency (unix_cxr.eval.cycle): the tiny random UniX end to end, and the metric logic on a
deterministic phantom pipeline whose perfect and broken cycles have known answers.

Run: pytest tests/test_cycle.py
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import needs_inception, randomize, write_release
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.config import load_config
from unix_cxr.data import phantom as ph
from unix_cxr.eval import cycle
from unix_cxr.eval.image_metrics import TorchModuleEncoder
from unix_cxr.eval.runner import RULE_F1_NAME
from unix_cxr.infer.pipeline import UniXPipeline
from unix_cxr.model.unix import UniX
from unix_cxr.model.vae import LatentVAE

REPORTS = [
    "FINDINGS: Moderate right pleural effusion. No pneumothorax. IMPRESSION: Right pleural effusion.",
    "FINDINGS: The heart is enlarged. Mild pulmonary edema.",
    "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. IMPRESSION: No acute process.",
]


# ------------------------------------------------------------------------------------------------ helpers


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of tests/test_release.py: "w<i>" is id i, anything else w0."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


def small_encoder(name: str = "tiny conv") -> TorchModuleEncoder:
    """A fixed random conv net: 4-d features (channel means), 64 x 64 input."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.Tanh())
    return TorchModuleEncoder(net, name, input_size=(64, 64))


@pytest.fixture(scope="module")
def unix_pipeline() -> UniXPipeline:
    cfg = load_config("tiny")
    model = randomize(UniX(cfg)).eval()
    vae = randomize(LatentVAE(cfg.vae), seed=1).eval()
    return UniXPipeline(model, vae, word_tokenizer(cfg.decoder.vocab_size), decoding={"max_new_tokens": 6},
                              sampling={"num_timesteps": 3}, image_size=32, batch_size=2)


def _specs() -> list[ph.PhantomSpec]:
    F = ph.Finding
    return [ph.PhantomSpec(findings=f, size=64, seed=i) for i, f in enumerate((
        (F("pleural_effusion", side="right"),),
        (F("cardiomegaly"), F("edema")),
        (F("pneumothorax", side="left"),),
        (),
        (F("consolidation", side="left"), F("endotracheal_tube")),
        (F("atelectasis", side="right", uncertain=True),),
    ))]


class PhantomPipeline:
    """A deterministic UnifiedPipeline: draws the phantom a report came from and reads back the report an image was
    drawn from (a perfect cycle). ``broken_read`` reads one normal report from every image; ``broken_draw`` draws
    one normal phantom for every report."""

    name = "phantom lookup"

    def __init__(self, specs: list[ph.PhantomSpec], *, broken_read: bool = False, broken_draw: bool = False):
        self.broken_read, self.broken_draw = broken_read, broken_draw
        self.normal = ph.PhantomSpec(size=64, seed=99)
        self.normal_report = ph.report(self.normal, np.random.default_rng(99))
        self.spec_of: dict[str, ph.PhantomSpec] = {}
        self.report_of = {ph.render(self.normal).tobytes(): self.normal_report}
        self.reports, self.images = [], []
        for i, spec in enumerate(specs):
            text, image = ph.report(spec, np.random.default_rng(i)), ph.render(spec)
            self.spec_of[text] = spec
            self.report_of[image.tobytes()] = text
            self.reports.append(text)
            self.images.append(image)
        self.draw_seeds: list[int] = []

    def read(self, images):
        return [self.normal_report if self.broken_read else self.report_of[np.asarray(a).tobytes()] for a in images]

    def draw(self, reports, seed=0):
        self.draw_seeds.append(seed)
        return [ph.render(self.normal if self.broken_draw else self.spec_of[r]) for r in reports]


def _well_formed(labels: dict) -> bool:
    return list(labels) == list(CHEXPERT_LABELS) and all(v in (1, 0, -1, None) for v in labels.values())


# ------------------------------------------------------------------------------------------------ UniX end to end


def test_unix_pipeline_implements_the_protocol(unix_pipeline):
    assert isinstance(unix_pipeline, cycle.UnifiedPipeline)
    assert isinstance(PhantomPipeline(_specs()[:1]), cycle.UnifiedPipeline)
    assert unix_pipeline.report_prompt == "Examine this X-ray image and describe the FINDINGS and IMPRESSION."
    # the word-level vocabulary knows none of the prompt's words: all the unknown id 0, no special tokens added
    assert len(unix_pipeline.prompt_ids) >= 11 and set(unix_pipeline.prompt_ids) == {0}
    texts = unix_pipeline.read([np.full((40, 48), 128, np.uint8), np.zeros((32, 32, 3), np.uint8)])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_report_cycle_end_to_end_with_tiny_unix(unix_pipeline):
    result = cycle.report_image_report(unix_pipeline, REPORTS, seed=0)
    assert len(result.items) == len(result.images) == 3
    for image in result.images:
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    for item in result.items:
        assert _well_formed(item.labels) and _well_formed(item.reread_labels)
        assert isinstance(item.reread_report, str)
    assert result.items[0].labels["Pleural Effusion"] == 1
    card = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert card["labeler"]["metric_name"] == RULE_F1_NAME and card["pipeline"] == "UniX"
    agreement = card["label_agreement"]
    assert set(agreement["per_class"]) == set(CHEXPERT_LABELS)
    assert set(agreement["f1"]) == {"uncertain_as_negative", "uncertain_as_positive"}
    assert 0.0 <= agreement["mean_agreement"] <= 1.0

    again = cycle.report_image_report(unix_pipeline, REPORTS, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(result.images, again.images, strict=True))
    assert [i.reread_report for i in again.items] == [i.reread_report for i in result.items]
    other = cycle.report_image_report(unix_pipeline, REPORTS, seed=1)
    assert not any(np.array_equal(a, b) for a, b in zip(result.images, other.images, strict=True))


def test_image_cycle_end_to_end_with_tiny_unix(unix_pipeline):
    images = {"grey": ph.render(_specs()[0]), "rgb": np.repeat(ph.render(_specs()[1])[..., None], 3, axis=2),
              "small": np.full((50, 40), 200, np.uint8)}
    encoder = small_encoder()
    result = cycle.image_report_image(unix_pipeline, images, encoder=encoder, seed=3)
    assert [i.id for i in result.items] == ["grey", "rgb", "small"]
    assert all(a.shape == (32, 32, 3) and a.dtype == np.uint8 for a in result.images)
    assert all(_well_formed(i.labels) and _well_formed(i.reread_labels) for i in result.items)
    d = result.distance
    assert d.encoder == "tiny conv" and d.feature_dim == 4 and len(d.l2) == 3
    assert all(v >= 0 for v in d.l2) and all(c is None or -1 - 1e-9 <= c <= 1 + 1e-9 for c in d.cosine)
    assert not d.fd.computed and "at least 5" in d.fd.reason  # 3 pairs, 4-d features: no full-rank covariance
    card = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert card["encoder"] == "tiny conv" and card["labeler"]["name"] == "unix-cxr rule labeler"
    assert card["feature_distance"]["fd"]["reason"].startswith("not computed")

    again = cycle.image_report_image(unix_pipeline, images, encoder=encoder, seed=3, fd_min_images=2)
    assert all(np.array_equal(a, b) for a, b in zip(result.images, again.images, strict=True))
    assert again.distance.l2 == d.l2
    assert again.distance.fd.computed and again.distance.fd.details["biased_n_le_dim"]
    other = cycle.image_report_image(unix_pipeline, images, encoder=encoder, seed=4)
    assert not any(np.array_equal(a, b) for a, b in zip(result.images, other.images, strict=True))


def test_unix_pipeline_settings_are_checked(unix_pipeline):
    model, vae, tok = unix_pipeline.model, unix_pipeline.vae, unix_pipeline.tokenizer
    with pytest.raises(ValueError, match="decoding settings"):
        UniXPipeline(model, vae, tok, decoding={"max_tokens": 3})
    with pytest.raises(ValueError, match="multiple of 16"):
        UniXPipeline(model, vae, tok, image_size=40)
    with pytest.raises(ValueError, match="tokenizer"):
        UniXPipeline(model, vae, None)
    assert UniXPipeline(model, vae, tok, sampling={"image_size": 48}).image_size == 48
    assert UniXPipeline(model, vae, tok, report_prompt="<image>Describe.").report_prompt == "Describe."
    with pytest.raises(ValueError, match="VAE"):
        UniXPipeline(model, None, tok).draw(["FINDINGS: clear."])


# ------------------------------------------------------------------------------------------------ metric logic


def test_perfect_report_cycle_agrees_fully():
    pipe = PhantomPipeline(_specs())
    result = cycle.report_image_report(pipe, pipe.reports, seed=5)
    a = result.agreement
    assert a.per_class == dict.fromkeys(CHEXPERT_LABELS, 1.0)
    assert a.mean_agreement == 1.0 and a.exact_match == 1.0
    assert a.chance_mean_agreement < 1.0  # different phantoms have different labels
    uan, uap = a.f1["uncertain_as_negative"], a.f1["uncertain_as_positive"]
    assert uan.micro_14 == pytest.approx(1.0) and uap.micro_14 == pytest.approx(1.0)
    assert all(c.f1 == pytest.approx(1.0) for c in uan.per_class if c.support)
    assert uap.per_class_dict()["Atelectasis"].support == 1 and uan.per_class_dict()["Atelectasis"].support == 0
    assert pipe.draw_seeds == [5] and result.pipeline == "phantom lookup"
    assert [i.reread_report for i in result.items] == pipe.reports


def test_broken_read_lowers_the_report_cycle_agreement():
    pipe = PhantomPipeline(_specs(), broken_read=True)
    a = cycle.report_image_report(pipe, pipe.reports).agreement
    assert a.mean_agreement < 1.0 and a.exact_match < 1.0
    assert a.f1["uncertain_as_negative"].micro_14 < 0.5
    assert a.per_class["Pleural Effusion"] < 1.0
    # the same labels for every item: agreement with the own input is no better than with other inputs
    assert a.mean_agreement == pytest.approx(a.chance_mean_agreement, abs=0.05)


def test_perfect_image_cycle_has_zero_distance_and_full_agreement():
    pipe = PhantomPipeline(_specs())
    result = cycle.image_report_image(pipe, pipe.images, encoder=small_encoder(), seed=2)
    assert result.agreement.mean_agreement == 1.0 and result.agreement.exact_match == 1.0
    d = result.distance
    assert d.cosine == pytest.approx([1.0] * 6) and d.l2 == pytest.approx([0.0] * 6, abs=1e-12)
    assert d.cosine_mismatched_mean < 1.0 and d.l2_mismatched_mean > 0
    assert d.fd.computed and d.fd.value == pytest.approx(0.0, abs=1e-9)  # 6 pairs > 4 dims + 1: computed by default
    assert not d.fd.details["biased_n_le_dim"]
    assert [i.id for i in result.items] == [str(i) for i in range(6)]


def test_broken_draw_shows_in_labels_and_features():
    pipe = PhantomPipeline(_specs(), broken_draw=True)
    result = cycle.image_report_image(pipe, pipe.images, encoder=small_encoder(), seed=2)
    assert result.agreement.mean_agreement < 1.0
    assert all(item.reread_report == pipe.normal_report for item in result.items)
    d = result.distance
    assert d.l2_mean > 0 and d.fd.value > 0
    perfect = cycle.image_report_image(PhantomPipeline(_specs()), pipe.images, encoder=small_encoder()).distance
    assert d.l2_mean > perfect.l2_mean


def test_compare_labels_chance_agreement_equals_brute_force():
    rng = np.random.default_rng(0)
    values = (1, 0, -1, None)
    ref = [{n: values[rng.integers(4)] for n in CHEXPERT_LABELS} for _ in range(5)]
    got = [{n: values[rng.integers(4)] for n in CHEXPERT_LABELS} for _ in range(5)]
    a = cycle.compare_labels(ref, got, labeler="test", metric_name="test F1")
    for name in CHEXPERT_LABELS:
        pairs = [ref[i][name] == got[j][name] for i, j in itertools.permutations(range(5), 2)]
        assert a.chance_per_class[name] == pytest.approx(np.mean(pairs))
        assert a.per_class[name] == pytest.approx(np.mean([ref[i][name] == got[i][name] for i in range(5)]))
    assert a.f1["uncertain_as_negative"].labeler == "test F1"
    single = cycle.compare_labels(ref[:1], ref[:1], labeler="test", metric_name="test F1")
    assert single.chance_per_class is None and json.dumps(single.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="same, non-zero"):
        cycle.compare_labels(ref, got[:2], labeler="test", metric_name="test F1")


def test_bad_pipelines_and_inputs_raise():
    class Short(PhantomPipeline):
        def read(self, images):
            return super().read(images)[:-1]

    pipe = Short(_specs()[:2])
    with pytest.raises(ValueError, match="returned 1 items for 2"):
        cycle.report_image_report(pipe, pipe.reports)
    with pytest.raises(ValueError, match="no reports"):
        cycle.report_image_report(pipe, [])
    with pytest.raises(TypeError, match="label_many"):
        cycle.report_image_report(PhantomPipeline(_specs()[:1]), PhantomPipeline(_specs()[:1]).reports,
                                  labeler=object())


def test_t2i_prompt_is_the_findings_text():
    assert cycle.t2i_prompt("FINDINGS: Small  left effusion.\nIMPRESSION: Effusion.") == "Small left effusion."
    assert cycle.t2i_prompt("IMPRESSION: No acute process.") == "No acute process."
    assert cycle.t2i_prompt("Free text report.") == "Free text report."
    assert cycle.t2i_prompt("") == ""


# ------------------------------------------------------------------------------------------------ command


def _release(folder, cfg) -> None:
    """A tiny random release folder in the authors' layout (as tests/test_release.py writes one)."""
    write_release(folder, cfg, word_tokenizer(cfg.decoder.vocab_size))


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cycle") / "release"
    _release(folder, load_config("tiny"))
    return folder


def _run(release_dir, *argv: str) -> int:
    from unix_cxr.cli import main

    cfg = load_config("tiny")
    tokens = [str(t) for t in (cfg.tokens.bos, cfg.tokens.eos, cfg.tokens.start_of_image, cfg.tokens.end_of_image)]
    return main(["eval", "cycle", "--release", str(release_dir), "--special-tokens", *tokens, "--image-size", "32",
                 "--num-timesteps", "3", "--max-new-tokens", "6", "--no-progress", *argv])


def test_cycle_command_reports(release_dir, tmp_path):
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"id": f"r/{i}", "report": r}) + "\n" for i, r in enumerate(REPORTS)))
    assert _run(release_dir, "--reports", str(reports), "-o", str(tmp_path / "out")) == 0
    card = json.loads((tmp_path / "out" / "results.json").read_text())
    assert card["kind"] == "cycle" and card["cycle"] == "report -> image -> report" and card["n_items"] == 3
    assert card["labeler"]["metric_name"] == RULE_F1_NAME and card["encoder"] is None
    assert card["inputs"]["reports"]["n_reports"] == 3 and len(card["release"]["model_sha256"]) == 64
    assert card["pipeline_settings"]["image_size"] == 32 and "items.jsonl" in card["outputs"]["files"]
    items = [json.loads(line) for line in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    assert [i["id"] for i in items] == ["r/0", "r/1", "r/2"] and items[2]["image"] == "images/00002.png"
    assert (tmp_path / "out" / "images" / "00002.png").is_file()
    assert "Mean per-class label agreement" in (tmp_path / "out" / "results.md").read_text()


def test_cycle_command_errors(release_dir, tmp_path, capsys):
    assert _run(release_dir, "--images", str(tmp_path / "missing"), "-o", str(tmp_path / "out")) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --reports and --images are exclusive
        _run(release_dir, "--reports", "a", "--images", "b", "-o", str(tmp_path / "out"))


@needs_inception
def test_cycle_command_images(release_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, spec in enumerate(_specs()[:2]):
        ph.save_png(ph.render(spec), folder / f"case{i}.png")
    assert _run(release_dir, "--images", str(folder), "-o", str(tmp_path / "out")) == 0
    card = json.loads((tmp_path / "out" / "results.json").read_text())
    assert card["cycle"] == "image -> report -> image" and card["encoder"]["kind"] == "inception"
    assert card["feature_distance"]["feature_dim"] == 2048 and not card["feature_distance"]["fd"]["computed"]
    assert card["inputs"]["images"]["n_images"] == 2
    assert "Original vs regenerated images" in (tmp_path / "out" / "results.md").read_text()

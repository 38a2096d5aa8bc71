"""CheXbert backend: architecture, weights-only loading of the public checkpoint layout, label mapping, batching."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.eval import chexbert as cb
from unix_cxr.eval.report_metrics import truncate_for_chexbert

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "heart", "size", "is", "normal",
         "small", "left", "right", "pneumothorax", "there", "mild", "edema", "findings", "impression", ":", ".", ",",
         "cardiomegaly", "tube", "line", "possible", "opacity"]


def _config() -> BertConfig:
    return BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=64, type_vocab_size=2,
                      initializer_range=0.5)  # large random weights: the [CLS] state differs between reports


def _model(seed: int = 0) -> cb.CheXbert:
    torch.manual_seed(seed)
    model = cb.CheXbert(_config()).eval()
    with torch.no_grad():  # larger head weights so that the argmax differs between reports
        for head in model.linear_heads:
            head.weight.normal_(0, 2.0)
            head.bias.zero_()
    return model


def _save_public_layout(model: cb.CheXbert, path: Path, *, position_ids: bool = True) -> Path:
    """The public chexbert.pth layout: {'epoch', 'model_state_dict': {'module.bert.*', 'module.linear_heads.*'},
    'optimizer_state_dict'} saved with torch.save."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    if position_ids:  # old transformers saved this buffer; it must be tolerated
        state["module.bert.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save({"epoch": 7, "model_state_dict": state,
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999)}]}}, path)
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[cb.CheXbert, Path, Path]:
    tok = tmp_path / "bert-base-uncased"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (tok / "config.json").write_text(json.dumps(_config().to_dict()), encoding="utf-8")
    model = _model()
    ckpt = _save_public_layout(model, tmp_path / "chexbert.pth")
    return model, ckpt, tok


REPORTS = ["No pleural effusion.", "There is a small left pleural effusion. Mild edema.", "",
           "FINDINGS:\nHeart size is normal.\nIMPRESSION: No pneumothorax.", "Possible right opacity, tube, line."]


def test_conditions_are_spec_order_and_map_to_chexpert():
    assert cb.CHEXBERT_CONDITIONS[0] == "enlarged_cardiomediastinum" and cb.CHEXBERT_CONDITIONS[-1] == "no_finding"
    assert list(cb.CONDITION_TO_CHEXPERT.values()) == list(CHEXPERT_LABELS)
    assert cb.CONDITION_TO_CHEXPERT["pleural_effusion"] == "Pleural Effusion"
    assert cb.CLASS_TO_LABEL == {0: None, 1: 1, 2: 0, 3: -1}
    assert cb.NO_FINDING_CLASS_TO_LABEL == {0: None, 1: 1}


def test_architecture_shapes():
    model = _model()
    assert len(model.linear_heads) == 14
    assert all(h.out_features == 4 for h in model.linear_heads[:13]) and model.linear_heads[13].out_features == 2
    out = model(torch.tensor([[2, 5, 6, 7, 3]]), torch.ones(1, 5, dtype=torch.long))
    assert [tuple(t.shape) for t in out] == [(1, 4)] * 13 + [(1, 2)]


def test_load_public_layout_weights_only(files):
    model, ckpt, tok = files
    loaded = cb.load_chexbert(ckpt, config_dirs=[tok])
    ref = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert loaded.bert.config.num_attention_heads == 4  # from config.json, not guessed
    assert not loaded.training


def test_load_uses_weights_only(files, monkeypatch):
    _, ckpt, _ = files
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    cb.load_chexbert_state_dict(ckpt)
    assert seen.get("weights_only") is True


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_refuses_checkpoint_that_needs_full_unpickling(tmp_path):
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"model_state_dict": {"module.x": _Evil()}}, handle, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True"):
        cb.load_chexbert_state_dict(path)


def test_refuses_wrong_checkpoints(tmp_path, files):
    model, _, tok = files
    with pytest.raises(FileNotFoundError):
        cb.load_chexbert_state_dict(tmp_path / "missing.pth")
    torch.save({"model_state_dict": {"module.foo.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a CheXbert checkpoint"):
        cb.load_chexbert_state_dict(tmp_path / "other.pth")
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("linear_heads.13")}
    torch.save({"model_state_dict": state}, tmp_path / "no_nf_head.pth")
    with pytest.raises(ValueError, match=r"missing key\(s\): linear_heads\.13"):
        cb.load_chexbert(tmp_path / "no_nf_head.pth", config_dirs=[tok])


def test_bare_state_dict_and_safetensors_are_accepted(tmp_path, files):
    from safetensors.torch import save_file

    model, _, tok = files
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    for path in (tmp_path / "bare.pt", tmp_path / "m.safetensors"):
        loaded = cb.load_chexbert(path, config_dirs=[tok])
        assert torch.equal(loaded.linear_heads[5].weight, model.linear_heads[5].weight)


def test_config_from_shapes_without_config_json(files):
    model, ckpt, _ = files
    state = cb.load_chexbert_state_dict(ckpt)
    cfg = cb.config_from_state_dict(state, num_attention_heads=4)
    ref = _config()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
                "type_vocab_size", "num_attention_heads"):
        assert getattr(cfg, key) == getattr(ref, key), key
    assert cb.config_from_state_dict(state).num_attention_heads == 1  # hidden 32 // 64 -> at least 1
    # without a config.json anywhere, the shapes' config loads the same tensors
    loaded = cb.load_chexbert(ckpt, config=cfg)
    assert torch.equal(loaded.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


def test_labels_match_the_in_memory_model(files):
    model, ckpt, tok = files
    labeler = cb.CheXbertLabeler(ckpt, tok)
    expected = []
    tokenizer = cb.load_tokenizer(tok)
    with torch.no_grad():
        for text in REPORTS:  # one report at a time, no padding: CheXbert's own per-report path
            enc = tokenizer(truncate_for_chexbert(text), return_tensors="pt")
            expected += cb.heads_to_labels(model(enc["input_ids"], enc["attention_mask"]))
    got = labeler.label_many(REPORTS)
    assert got == expected
    assert all(list(labels) == list(CHEXPERT_LABELS) for labels in got)
    assert all(v in (1, 0, -1, None) for labels in got for v in labels.values())
    assert labeler.label(REPORTS[1]) == got[1]
    assert len({json.dumps(x) for x in got}) > 1  # the random heads do tell reports apart


def test_batch_size_does_not_change_labels(files):
    model, _, tok = files
    tokenizer = cb.load_tokenizer(tok)
    texts = REPORTS * 7  # 35 reports: batches of 16, 16, 3 with padding
    a = cb.CheXbertLabeler.from_model(model, tokenizer, batch_size=16).label_many(texts)
    b = cb.CheXbertLabeler.from_model(model, tokenizer, batch_size=1).label_many(texts)
    assert a == b


def test_forced_heads_map_to_our_values(files):
    model, _, tok = files
    forced = {0: 0, 1: 1, 2: 2, 3: 3, 9: 3}  # head -> class it must always predict
    with torch.no_grad():
        for head, cls in forced.items():
            model.linear_heads[head].weight.zero_()
            model.linear_heads[head].bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), 4) * 100.0)
        model.linear_heads[13].weight.zero_()
        model.linear_heads[13].bias.copy_(torch.tensor([0.0, 100.0]))
    labeler = cb.CheXbertLabeler.from_model(model, cb.load_tokenizer(tok))
    for labels in labeler.label_many(REPORTS):
        assert labels["Enlarged Cardiomediastinum"] is None  # class 0 blank
        assert labels["Cardiomegaly"] == 1  # class 1 positive
        assert labels["Lung Opacity"] == 0  # class 2 negative
        assert labels["Lung Lesion"] == -1  # class 3 uncertain
        assert labels["Pleural Effusion"] == -1
        assert labels["No Finding"] == 1  # two-way head, class 1
    with torch.no_grad():
        model.linear_heads[13].bias.copy_(torch.tensor([100.0, 0.0]))
    assert labeler.label("No pleural effusion.")["No Finding"] is None


def test_input_is_truncated_to_512_characters_with_newlines_as_spaces(files):
    model, _, tok = files
    labeler = cb.CheXbertLabeler.from_model(model, cb.load_tokenizer(tok))
    head = "no pleural effusion . " * 30  # 660 characters
    assert len(head) > 512
    a, b = labeler.encode([head + "mild edema"]), labeler.encode([head + "cardiomegaly tube"])
    assert torch.equal(a["input_ids"], b["input_ids"])  # only the first 512 characters are read
    assert labeler.label(head + "mild edema") == labeler.label(head + "cardiomegaly tube")
    c, d = labeler.encode(["heart size\nis normal"]), labeler.encode(["heart size is normal"])
    assert torch.equal(c["input_ids"], d["input_ids"])
    empty = labeler.encode([""])["input_ids"][0].tolist()
    assert empty == [VOCAB.index("[CLS]"), VOCAB.index("[SEP]")]


def test_token_limit_keeps_sep(files):
    model, _, tok = files
    labeler = cb.CheXbertLabeler.from_model(model, cb.load_tokenizer(tok))
    ids = labeler.encode(["no " * 200])["input_ids"][0].tolist()  # 200 tokens > 64 positions of the tiny model
    assert len(ids) == 64 and ids[0] == VOCAB.index("[CLS]") and ids[-1] == VOCAB.index("[SEP]")


def test_missing_vocab_is_a_clear_error(tmp_path, files):
    _, ckpt, _ = files
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
        cb.CheXbertLabeler(ckpt, tmp_path)


def test_describe_names_the_metric(files):
    _, ckpt, tok = files
    desc = cb.CheXbertLabeler(ckpt, tok).describe()
    assert desc["metric_name"] == "CheXbert F1" and desc["batch_size"] == 16

"""Release folders (authors' layout) load from local files: config, weights, VAE, tokenizer.

Run: pytest tests/test_release.py
"""

import json

import pytest
import torch
import yaml
from conftest import randomize
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unix_cxr.checkpoint.io import save_authors_weights
from unix_cxr.checkpoint.release import load_release
from unix_cxr.checkpoint.vae import save_vae
from unix_cxr.config import UniXConfig, from_authors_config, ldm_vae_yaml, load_config, to_authors_config
from unix_cxr.infer.report import ReportGenerator
from unix_cxr.model.unix import UniX
from unix_cxr.model.vae import LatentVAE


def write_release(folder, model: UniX, vae: LatentVAE):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(to_authors_config(model.cfg)))
    save_authors_weights(model, folder / "model.safetensors")
    (folder / "vae").mkdir()
    save_vae(vae, folder / "vae" / "kl-f16d16.safetensors")
    (folder / "vae" / "config.yaml").write_text(yaml.safe_dump(ldm_vae_yaml(model.cfg.vae)))
    vocab = {f"w{i}": i for i in range(model.cfg.decoder.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(folder)


def test_authors_config_round_trip():
    cfg = load_config("tiny")
    back = from_authors_config(to_authors_config(cfg), tokens=cfg.tokens)
    back.vae = cfg.vae  # the VAE comes from vae/config.yaml, not config.json
    back.decoding = cfg.decoding  # decoding settings and the output size are inferencer arguments, not config
    back.sampling.image_size = cfg.sampling.image_size
    assert back == cfg


def test_release_folder_loads_and_reproduces_the_model(tmp_path):
    cfg = load_config("tiny")
    model = randomize(UniX(cfg)).eval()
    vae = randomize(LatentVAE(cfg.vae), seed=1).eval()
    write_release(tmp_path / "rel", model, vae)
    # the authors' files carry no special-token ids; the tiny vocabulary needs its own
    rel = load_release(tmp_path / "rel", dtype=torch.float32, tokens=cfg.tokens)
    for key, value in model.state_dict().items():
        assert torch.equal(rel.model.state_dict()[key], value), key
    assert torch.equal(rel.model.vision.tower.embeddings.position_ids, model.vision.tower.embeddings.position_ids)
    px = torch.randn(1, 3, 32, 32)
    ids = rel.tokenizer("w5 w6 w7", add_special_tokens=False)["input_ids"]
    assert ids == [5, 6, 7]
    assert (ReportGenerator(rel.model).generate(px, [ids], max_new_tokens=4).token_ids
            == ReportGenerator(model).generate(px, [ids], max_new_tokens=4).token_ids)
    z = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(rel.vae.decode(z), vae.decode(z))
    report_only = load_release(tmp_path / "rel", dtype=torch.float32, with_generation=False, tokens=cfg.tokens)
    assert report_only.vae is None and not report_only.model.with_generation


def test_release_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_release(tmp_path / "missing")
    (tmp_path / "rel").mkdir()
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        load_release(tmp_path / "rel")


@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(llm_config=3), "a section or value has the wrong type"),
    (lambda c: c["llm_config"].pop("hidden_size"), "missing key 'hidden_size'"),
    (lambda c: c["llm_config"].update(hidden_size="64"), "decoder.hidden_size must be int, got '64'"),
    (lambda c: c["llm_config"].update(num_attention_heads=7), "not divisible by num_heads 7"),
    (lambda c: c.update(vit_config=[]), "a section or value has the wrong type"),
], ids=["llm_config_int", "missing_key", "string_number", "invalid_value", "section_a_list"])
def test_release_config_errors_name_the_file(tmp_path, change, words):
    cfg = load_config("tiny")
    data = to_authors_config(cfg)
    change(data)
    folder = tmp_path / "rel"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(data))
    save_authors_weights(randomize(UniX(cfg)).eval(), folder / "model.safetensors")
    with pytest.raises(ValueError, match=rf"^{folder / 'config.json'}: .*{words}"):
        load_release(folder)
    (folder / "config.json").write_text('{"llm_config": ')
    with pytest.raises(ValueError, match=rf"^{folder / 'config.json'}: not valid JSON"):
        load_release(folder)


def test_release_weights_non_finite_or_garbage(tmp_path):
    cfg = load_config("tiny")
    model = randomize(UniX(cfg)).eval()
    write_release(tmp_path / "rel", model, randomize(LatentVAE(cfg.vae), seed=1).eval())
    vae_file = tmp_path / "rel" / "vae" / "kl-f16d16.safetensors"
    vae_file.write_bytes(vae_file.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"^{vae_file}: not a readable \.safetensors file"):
        load_release(tmp_path / "rel", dtype=torch.float32, tokens=cfg.tokens)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("inf")
    save_authors_weights(model, tmp_path / "rel" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor \S+ has 1 non-finite values"):
        load_release(tmp_path / "rel", dtype=torch.float32, with_generation=False, tokens=cfg.tokens)
    rel = load_release(tmp_path / "rel", dtype=torch.float32, with_generation=False, tokens=cfg.tokens,
                       allow_non_finite=True)
    assert not torch.isfinite(rel.model.lm_head.weight).all()


def test_own_config_format_is_strict(tmp_path):
    cfg = load_config("tiny")
    path = tmp_path / "c.yaml"
    cfg.save(path)
    assert UniXConfig.from_file(path) == cfg
    data = cfg.to_dict()
    data["decoder"]["hiden_size"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"config.decoder: unknown config keys \['hiden_size'\]"):
        UniXConfig.from_file(path)

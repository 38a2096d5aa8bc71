"""load_config: the one loader (preset, recipe file, the authors' config.json, a release folder) + dotted overrides."""

import json

import pytest
import yaml
from conftest import PARITY, needs_parity

from unix_cxr.config import (
    PRESETS,
    DecoderConfig,
    PackingConfig,
    SpecialTokens,
    UniXConfig,
    load_config,
    to_authors_config,
)


def test_presets_are_the_shipped_recipes():
    assert set(PRESETS) == {"tiny", "unix-full", "phantom"}
    full = load_config("unix-full")
    assert full == UniXConfig()  # the released UniX is every default (spec section 1)
    assert load_config() == full
    tiny = load_config("tiny")
    assert (tiny.decoder.hidden_size, tiny.decoder.num_heads, tiny.decoder.num_kv_heads) == (64, 4, 2)  # GQA
    assert tiny.tokens == SpecialTokens(bos=300, eos=301, start_of_image=302, end_of_image=303)


def test_each_call_returns_an_independent_config():
    a = load_config("tiny")
    a.decoder.num_layers = 7
    assert load_config("tiny").decoder.num_layers == 2


def test_dotted_overrides_from_strings_and_mappings():
    cfg = load_config("tiny", ["decoder.num_layers=3", "sampling.cfg_interval=[0.2, 0.9]",
                               "decoding.do_sample=true", "packing.micro_batch_size=8",
                               "decoder.attention_backend=flex"])
    assert cfg.decoder.num_layers == 3
    assert cfg.sampling.cfg_interval == (0.2, 0.9)
    assert cfg.decoding.do_sample is True
    assert cfg.packing == PackingConfig(micro_batch_size=8)
    assert cfg.decoder.attention_backend == "flex"
    assert load_config("tiny", {"vae.scale_factor": 0.5}).vae.scale_factor == 0.5


@pytest.mark.parametrize(("override", "message"), [
    ("decoder.hiden_size=3", r"unknown config key 'decoder.hiden_size' \(decoder has \[.*'hidden_size'"),
    ("nope=1", r"unknown config key 'nope' \(config has"),
    ("decoder.num_layers.x=1", r"unknown config key 'decoder.num_layers.x'"),
    ("decoder.num_layers", r"not of the form key=value"),
    ("decoder.attention_backend=cuda", r"unknown attention backend 'cuda'"),
    ("decoder.num_heads=5", r"not divisible by num_heads 5"),
])
def test_bad_overrides_name_themselves(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", [override])


def test_recipe_file_yaml_and_json(tmp_path):
    data = load_config("tiny", ["decoder.num_layers=5"]).to_dict()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert load_config(tmp_path / "r.yaml").decoder.num_layers == 5
    assert load_config(str(tmp_path / "r.json"), ["decoder.num_layers=4"]).decoder.num_layers == 4
    data["decoder"]["hiden_size"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"bad.yaml: config.decoder: unknown config keys \['hiden_size'\]"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("decoder: [1, 2\n")
    with pytest.raises(ValueError, match=r"broken.yaml: not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list.json: a config must be a mapping, got list"):
        load_config(tmp_path / "list.json")


def test_missing_source_names_it():
    presets = r"\(presets: tiny, unix-full, phantom\)"
    with pytest.raises(ValueError, match=r"unix-fll: no such preset, file or folder " + presets):
        load_config("unix-fll")


def test_authors_config_json_and_release_folder(tmp_path):
    cfg = load_config("tiny", ["decoder.num_layers=3"])
    authors = to_authors_config(cfg)
    (tmp_path / "config.json").write_text(json.dumps(authors))
    tokens = [f"tokens.{k}={v}" for k, v in cfg.to_dict()["tokens"].items()]
    from_file = load_config(tmp_path / "config.json", tokens)
    from_folder = load_config(tmp_path, tokens)
    assert from_file == from_folder
    assert from_folder.decoder == cfg.decoder
    assert from_folder.vision == cfg.vision
    # the authors' files carry no token ids: with the released ids a 324-token vocabulary is refused, by name
    with pytest.raises(ValueError, match=r"special token ids .* must be distinct and inside the vocabulary"):
        load_config(tmp_path)


def test_release_folder_without_config_json_is_the_released_model(tmp_path):
    assert load_config(tmp_path).decoder == DecoderConfig()


@needs_parity
def test_golden_folder_config_goes_through_load_config():
    from unix_cxr.eval.parity import GoldenDir

    golden = GoldenDir.open(PARITY)
    harness = json.loads((PARITY / "harness.json").read_text())
    assert golden.cfg.tokens.bos == harness["special_token_ids"]["bos_token_id"]
    assert golden.cfg.sampling.num_timesteps == harness["settings"]["num_timesteps"]
    assert golden.cfg.decoding.double_bos is False
    assert golden.cfg.decoder == load_config(PARITY, GoldenDir.token_overrides(harness)).decoder

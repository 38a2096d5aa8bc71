"""Stage 1 starts from a local Janus-Pro folder (issue 7 item 2; spec 1.2-1.4, 5.2, 9): `checkpoint/janus.py`.

A fake Janus-Pro folder is built here at the tiny config, its keys written out by hand in Janus's naming (not
through our key map), so that every check below compares against the layout of the real files.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_inputs import assert_untouched, assert_usage_error, run
from safetensors.torch import load_file, save_file

from unix_cxr.checkpoint.io import save_authors_weights
from unix_cxr.checkpoint.janus import (
    _check_language_config,
    convert_pickled_janus,
    copy_und_to_gen,
    is_janus_folder,
    janus_expected_shapes,
    load_janus_init,
)
from unix_cxr.config import load_config
from unix_cxr.model.unix import UniX

TINY = load_config("tiny")
D, V = TINY.decoder, TINY.vision
HEAD = D.hidden_size // D.num_heads
TOWER, LLM = "vision_model.vision_tower.", "language_model.model."
GEN_KEYS = ("gen_vision_model.encoder.conv_in.weight", "gen_vision_model.quantize.codebook_used",
            "gen_aligner.layers.0.weight", "gen_head.output_mlp_projector.weight", "gen_embed.weight")


def janus_tensors(dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Janus-Pro's state dict at the tiny config, by hand (spec 9.2, Janus's prefixes; no q/k/v bias, no q/k-norm)."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {
        f"{LLM}embed_tokens.weight": (D.vocab_size, D.hidden_size),
        f"{LLM}norm.weight": (D.hidden_size,),
        "language_model.lm_head.weight": (D.vocab_size, D.hidden_size),
    }
    kv = D.num_kv_heads * HEAD
    for i in range(D.num_layers):
        p = f"{LLM}layers.{i}."
        shapes |= {f"{p}self_attn.q_proj.weight": (D.hidden_size, D.hidden_size),
                   f"{p}self_attn.k_proj.weight": (kv, D.hidden_size),
                   f"{p}self_attn.v_proj.weight": (kv, D.hidden_size),
                   f"{p}self_attn.o_proj.weight": (D.hidden_size, D.hidden_size),
                   f"{p}mlp.gate_proj.weight": (D.intermediate_size, D.hidden_size),
                   f"{p}mlp.up_proj.weight": (D.intermediate_size, D.hidden_size),
                   f"{p}mlp.down_proj.weight": (D.hidden_size, D.intermediate_size),
                   f"{p}input_layernorm.weight": (D.hidden_size,),
                   f"{p}post_attention_layernorm.weight": (D.hidden_size,)}
    w, m = V.hidden_size, V.intermediate_size
    patches = (V.image_size // V.patch_size) ** 2
    shapes |= {f"{TOWER}patch_embed.proj.weight": (w, 3, V.patch_size, V.patch_size),
               f"{TOWER}patch_embed.proj.bias": (w,), f"{TOWER}pos_embed": (1, patches, w),
               f"{TOWER}norm.weight": (w,), f"{TOWER}norm.bias": (w,)}
    for i in range(V.num_layers):
        p = f"{TOWER}blocks.{i}."
        for name, shape in (("norm1", (w,)), ("norm2", (w,)), ("attn.qkv", (3 * w, w)), ("attn.proj", (w, w)),
                            ("mlp.fc1", (m, w)), ("mlp.fc2", (w, m))):
            shapes |= {f"{p}{name}.weight": shape, f"{p}{name}.bias": (shape[0],)}
    p = f"{TOWER}attn_pool."
    shapes[f"{p}latent"] = (1, 1, w)
    for name, shape in (("q", (w, w)), ("kv", (2 * w, w)), ("proj", (w, w)), ("norm", (w,)), ("mlp.fc1", (m, w)),
                        ("mlp.fc2", (w, m))):
        shapes |= {f"{p}{name}.weight": shape, f"{p}{name}.bias": (shape[0],)}
    shapes |= {"aligner.layers.0.weight": (D.hidden_size, w), "aligner.layers.0.bias": (D.hidden_size,),
               "aligner.layers.2.weight": (D.hidden_size, D.hidden_size), "aligner.layers.2.bias": (D.hidden_size,)}
    shapes |= dict(zip(GEN_KEYS, [(8, 3, 3, 3), (20,), (D.hidden_size, 8), (20, D.hidden_size), (20, 8)],
                       strict=True))
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


def janus_config() -> dict:
    return {
        "model_type": "multi_modality", "architectures": ["MultiModalityCausalLM"],
        "language_config": {"model_type": "llama", "hidden_size": D.hidden_size,
                            "intermediate_size": D.intermediate_size, "num_hidden_layers": D.num_layers,
                            "num_attention_heads": D.num_heads, "num_key_value_heads": D.num_kv_heads,
                            "vocab_size": D.vocab_size, "max_position_embeddings": 16384, "torch_dtype": "bfloat16"},
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"image_size": V.image_size, "model_name": "siglip_large_patch16_384",
                                     "select_feature": "same", "select_layer": -1}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": 2, "input_dim": V.hidden_size, "n_embed": D.hidden_size,
                                      "projector_type": "mlp_gelu"}},
        "gen_aligner_config": {"cls": "MlpProjector",
                               "params": {"depth": 2, "input_dim": 8, "n_embed": D.hidden_size}},
        "gen_head_config": {"cls": "vision_head", "params": {"image_token_embed": D.hidden_size, "n_embed": 20}},
        "gen_vision_config": {"cls": "VQ-16", "params": {"image_token_size": 20, "n_embed": 8}},
    }


def make_folder(path: Path, tensors: dict[str, torch.Tensor] | None = None, pickled: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(janus_config()))
    tensors = janus_tensors() if tensors is None else tensors
    if pickled:
        torch.save({**tensors, "not_a_tensor": 3}, path / "pytorch_model.bin")
    else:
        save_file(tensors, str(path / "model.safetensors"))
    return path


def fresh_model(**kwargs) -> UniX:
    """A tiny UniX whose biases and q/k-norm weights are far from 0 and 1, so the init must set them."""
    torch.manual_seed(1)
    model = UniX(TINY, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("_proj.bias", "_norm.weight")) and ".layers." in name and name.startswith("decoder"):
                p.fill_(5.0)
    return model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "Janus-Pro-1B")


def _state(model: UniX) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- where every tensor lands ------------------------------------------------------------------------------------
def test_every_tensor_lands_where_it_should(folder: Path, caplog) -> None:
    janus = janus_tensors()
    model = fresh_model()
    before = _state(model)
    with caplog.at_level(logging.INFO, logger="unix_cxr"):
        report = load_janus_init(model, folder)
    sd = model.state_dict()
    eq = lambda ours, theirs: torch.equal(sd[ours], janus[theirs])
    assert eq("decoder.embed_tokens.weight", f"{LLM}embed_tokens.weight")
    assert eq("decoder.norm.weight", f"{LLM}norm.weight")
    assert eq("lm_head.weight", "language_model.lm_head.weight")
    for i in range(D.num_layers):
        for ours, theirs in (("q_proj", "self_attn.q_proj"), ("k_proj", "self_attn.k_proj"),
                             ("v_proj", "self_attn.v_proj"), ("o_proj", "self_attn.o_proj"),
                             ("mlp.gate_proj", "mlp.gate_proj"), ("mlp.up_proj", "mlp.up_proj"),
                             ("mlp.down_proj", "mlp.down_proj"), ("input_layernorm", "input_layernorm"),
                             ("post_attention_layernorm", "post_attention_layernorm")):
            assert eq(f"decoder.layers.{i}.und.{ours}.weight", f"{LLM}layers.{i}.{theirs}.weight"), (i, ours)
        # what Janus's LLaMA lacks: set explicitly (they were 5.0 before)
        for name in ("q_proj.bias", "k_proj.bias", "v_proj.bias"):
            assert not sd[f"decoder.layers.{i}.und.{name}"].any()
        for name in ("q_norm.weight", "k_norm.weight"):
            assert torch.equal(sd[f"decoder.layers.{i}.und.{name}"], torch.ones(HEAD))
    w = V.hidden_size
    t = "vision.tower."
    assert eq(f"{t}embeddings.patch_embedding.weight", f"{TOWER}patch_embed.proj.weight")
    assert torch.equal(sd[f"{t}embeddings.position_embedding.weight"], janus[f"{TOWER}pos_embed"][0])
    assert eq(f"{t}post_layernorm.weight", f"{TOWER}norm.weight")
    for i in range(V.num_layers):
        qkv_w, qkv_b = janus[f"{TOWER}blocks.{i}.attn.qkv.weight"], janus[f"{TOWER}blocks.{i}.attn.qkv.bias"]
        for j, n in enumerate("qkv"):
            assert torch.equal(sd[f"{t}encoder.layers.{i}.self_attn.{n}_proj.weight"], qkv_w[j * w:(j + 1) * w])
            assert torch.equal(sd[f"{t}encoder.layers.{i}.self_attn.{n}_proj.bias"], qkv_b[j * w:(j + 1) * w])
        assert eq(f"{t}encoder.layers.{i}.self_attn.out_proj.bias", f"{TOWER}blocks.{i}.attn.proj.bias")
        assert eq(f"{t}encoder.layers.{i}.layer_norm2.weight", f"{TOWER}blocks.{i}.norm2.weight")
        assert eq(f"{t}encoder.layers.{i}.mlp.fc2.weight", f"{TOWER}blocks.{i}.mlp.fc2.weight")
    assert eq(f"{t}head.probe", f"{TOWER}attn_pool.latent")
    assert torch.equal(sd[f"{t}head.attention.in_proj_weight"],
                       torch.cat([janus[f"{TOWER}attn_pool.q.weight"], janus[f"{TOWER}attn_pool.kv.weight"]]))
    for ours, theirs in (("fc1", "layers.0"), ("fc2", "layers.2")):
        for part in ("weight", "bias"):
            assert eq(f"vision.connector.{ours}.{part}", f"aligner.{theirs}.{part}")

    # the generation expert is the understanding expert's copy, in its own storage
    for key, value in sd.items():
        if ".gen." in key:
            twin = key.replace(".gen.", ".und.")
            assert torch.equal(value, sd[twin]), key
            assert value.data_ptr() != sd[twin].data_ptr(), key
    assert torch.equal(sd["decoder.norm_gen.weight"], sd["decoder.norm.weight"])
    # what Janus has no counterpart for keeps the model's own values
    for prefix in ("time_embedder.", "vae2llm.", "llm2vae.", "latent_pos_embed.", "vit_pos_embed."):
        keys = [k for k in sd if k.startswith(prefix)]
        assert keys and all(torch.equal(sd[k], before[k]) for k in keys), prefix
        assert set(keys) <= set(report.kept)

    assert len(report.zeroed) == 3 * D.num_layers and len(report.unit) == 2 * D.num_layers
    assert sorted(report.skipped_generation) == sorted(GEN_KEYS) and report.unknown == []
    assert len(report.copied) == sum(1 for k in sd if ".gen." in k) + 1
    assert set(report.loaded) | set(report.initialised) | set(report.copied) | set(report.kept) == set(sd)
    assert "ignoring 5 tensors of Janus's own image generation" in caplog.text
    assert "generation expert initialised as a copy of the understanding expert" in caplog.text
    assert "set 6 biases to 0 and 4 q/k-norm weights to 1" in caplog.text


def test_the_copy_is_independent_and_can_be_switched_off(folder: Path) -> None:
    model = fresh_model()
    load_janus_init(model, folder)
    layer = model.decoder.layers[0]
    gen_before = layer.gen.q_proj.weight.detach().clone()
    with torch.no_grad():
        layer.und.q_proj.weight.add_(1.0)
        model.decoder.norm.weight.mul_(2.0)
    assert torch.equal(layer.gen.q_proj.weight, gen_before)
    assert not torch.equal(model.decoder.norm_gen.weight, model.decoder.norm.weight)

    model = fresh_model()
    gen_state = {k: v.clone() for k, v in model.state_dict().items() if ".gen." in k or "norm_gen" in k}
    report = load_janus_init(model, folder, copy_to_gen=False)
    assert report.copied == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in gen_state.items())
    assert set(gen_state) <= set(report.kept)


def test_copy_und_to_gen_alone_and_a_report_only_model(folder: Path) -> None:
    model = fresh_model()
    written = copy_und_to_gen(model)
    sd = model.state_dict()
    assert written and all(torch.equal(sd[k], sd[k.replace(".gen.", ".und.").replace("norm_gen", "norm")])
                           for k in written)
    report_only = fresh_model(with_generation=False)
    with pytest.raises(ValueError, match="report-only"):
        copy_und_to_gen(report_only)
    report = load_janus_init(report_only, folder)  # nothing to copy: loads the understanding side only
    assert report.copied == []
    assert torch.equal(report_only.lm_head.weight, janus_tensors()["language_model.lm_head.weight"])


def test_bf16_weights_load_into_a_float32_model(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "j", janus_tensors(torch.bfloat16))
    model = fresh_model()
    load_janus_init(model, folder)
    assert model.lm_head.weight.dtype == torch.float32
    assert torch.equal(model.lm_head.weight, janus_tensors(torch.bfloat16)["language_model.lm_head.weight"].float())


def test_a_sharded_folder_loads_the_same(tmp_path: Path, folder: Path) -> None:
    tensors = janus_tensors()
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(janus_config()))
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: tensors[k] for k in part}, str(sharded / name))
    weight_map = {k: name for name, part in halves.items() for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert is_janus_folder(sharded)
    a, b = fresh_model(), fresh_model()
    load_janus_init(a, folder)
    load_janus_init(b, sharded)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ---- what is refused, in one line --------------------------------------------------------------------------------
def test_unknown_keys_are_reported_not_loaded(tmp_path: Path, caplog) -> None:
    extra = {f"{LLM}layers.0.self_attn.rotary_emb.inv_freq": torch.ones(HEAD // 2), "value_head.weight": torch.ones(3)}
    folder = make_folder(tmp_path / "j", {**janus_tensors(), **extra})
    with caplog.at_level(logging.WARNING, logger="unix_cxr"):
        report = load_janus_init(fresh_model(), folder)
    assert sorted(report.unknown) == sorted(extra)
    assert "2 tensors" in caplog.text and "value_head.weight" in caplog.text and "rotary_emb.inv_freq" in caplog.text


@pytest.mark.parametrize(("key", "shape"), [("aligner.layers.2.weight", (D.hidden_size, D.hidden_size - 1)),
                                            (f"{LLM}layers.1.mlp.down_proj.weight", (D.hidden_size, 7)),
                                            (f"{TOWER}blocks.0.attn.qkv.weight", (2 * V.hidden_size, V.hidden_size))])
def test_a_wrong_shape_is_one_line_naming_the_tensor(tmp_path: Path, key: str, shape: tuple[int, ...]) -> None:
    folder = make_folder(tmp_path / "j", {**janus_tensors(), key: torch.zeros(shape)})
    with pytest.raises(ValueError) as err:
        load_janus_init(fresh_model(), folder)
    message = str(err.value)
    assert "\n" not in message and key in message and str(tuple(shape)) in message, message
    assert str(folder / "model.safetensors") in message


def test_a_missing_tensor_and_a_config_with_other_dims(tmp_path: Path) -> None:
    tensors = janus_tensors()
    del tensors[f"{LLM}layers.1.post_attention_layernorm.weight"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\): language_model\.model\.layers\.1\.post_attention"):
        load_janus_init(fresh_model(), make_folder(tmp_path / "a", tensors))
    folder = make_folder(tmp_path / "b")
    config = janus_config()
    config["language_config"]["hidden_size"] = 2048
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"language_config\.hidden_size is 2048 but this model has decoder"):
        load_janus_init(fresh_model(), folder)
    (folder / "config.json").write_text(json.dumps({"llm_config": {}}))
    with pytest.raises(ValueError, match="no language_config"):
        load_janus_init(fresh_model(), folder)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    key = f"{LLM}layers.0.self_attn.o_proj.weight"
    tensors = janus_tensors()
    tensors[key][0, 0] = float("nan")
    folder = make_folder(tmp_path / "j", tensors)
    with pytest.raises(ValueError, match=rf"tensor {key.replace('.', '[.]')} has 1 non-finite"):
        load_janus_init(fresh_model(), folder)
    load_janus_init(fresh_model(), folder, allow_non_finite=True)


def test_a_pickle_only_folder_is_refused_without_unpickling(tmp_path: Path, monkeypatch) -> None:
    folder = make_folder(tmp_path / "j", pickled=True)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    assert is_janus_folder(folder)  # so the trainer takes the Janus path, which says how to convert it
    with pytest.raises(ValueError) as err:
        load_janus_init(fresh_model(), folder)
    message = str(err.value)
    assert "\n" not in message and str(folder / "pytorch_model.bin") in message
    assert f"unix-cxr convert-janus {folder} --trust-pickle" in message


def test_is_janus_folder(tmp_path: Path, folder: Path) -> None:
    assert is_janus_folder(folder)
    release = tmp_path / "release"  # a UniX release: Janus-style config.json, but connector.* keys
    release.mkdir()
    (release / "config.json").write_text(json.dumps(janus_config()))
    save_authors_weights(UniX(TINY), release / "model.safetensors")
    assert not is_janus_folder(release)
    broken = make_folder(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert not is_janus_folder(broken)
    assert not is_janus_folder(tmp_path / "missing") and not is_janus_folder(tmp_path)


# ---- the conversion ----------------------------------------------------------------------------------------------
def test_convert_janus_then_load(tmp_path: Path, capsys) -> None:
    tensors = janus_tensors(torch.bfloat16)
    folder = make_folder(tmp_path / "Janus-Pro-1B", tensors, pickled=True)
    outcome = run(["convert-janus", folder], capsys)
    assert_usage_error(outcome, str(folder / "pytorch_model.bin"), "refusing to unpickle", "--trust-pickle")
    assert not (folder / "model.safetensors").exists()

    assert run(["convert-janus", folder, "--trust-pickle"], capsys).rc == 0
    converted = load_file(str(folder / "model.safetensors"))
    assert converted.keys() == tensors.keys()  # every tensor kept (the gen_* ones too), the non-tensor dropped
    assert all(converted[k].dtype == torch.bfloat16 and torch.equal(converted[k], v) for k, v in tensors.items())
    assert is_janus_folder(folder)
    model = fresh_model()
    report = load_janus_init(model, folder)
    assert report.unknown == [] and torch.equal(model.decoder.embed_tokens.weight,
                                                tensors[f"{LLM}embed_tokens.weight"].float())


def test_convert_a_sharded_pickle(tmp_path: Path) -> None:
    tensors = janus_tensors()
    folder = tmp_path / "j"
    folder.mkdir()
    keys = sorted(tensors)
    parts = {"pytorch_model-00001-of-00002.bin": keys[:10], "pytorch_model-00002-of-00002.bin": keys[10:]}
    for name, part in parts.items():
        torch.save({k: tensors[k] for k in part}, folder / name)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, part in parts.items() for k in part}}))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        convert_pickled_janus(folder, trust_pickle=False)
    out = convert_pickled_janus(folder, trust_pickle=True)
    assert load_file(str(out)).keys() == tensors.keys()


def test_convert_janus_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    outcome = run(["convert-janus", tmp_path / "missing", "--trust-pickle"], capsys)
    assert_usage_error(outcome, str(tmp_path / "missing"), "not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(run(["convert-janus", empty, "--trust-pickle"], capsys), str(empty), "pytorch_model.bin")

    folder = make_folder(tmp_path / "j")  # a converted folder: its model.safetensors must survive a failed run
    kept = (folder / "model.safetensors").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02random bytes, not a checkpoint")
    outcome = run(["convert-janus", folder, "--trust-pickle"], capsys)
    assert_usage_error(outcome, str(folder / "pytorch_model.bin"), "not a readable PyTorch checkpoint")
    assert_untouched(folder / "model.safetensors", kept)
    torch.save({"vision_model.x": torch.ones(2)}, folder / "pytorch_model.bin")
    assert_usage_error(run(["convert-janus", folder, "--trust-pickle"], capsys), "not Janus-Pro weights")
    assert_untouched(folder / "model.safetensors", kept)
    torch.save({f"{LLM}norm.weight": torch.full((3,), float("inf"))}, folder / "pytorch_model.bin")
    assert_usage_error(run(["convert-janus", folder, "--trust-pickle"], capsys), f"{LLM}norm.weight", "non-finite")
    assert_untouched(folder / "model.safetensors", kept)


def test_convert_janus_help_does_not_import_torch() -> None:
    script = ("import sys\nfrom unix_cxr.cli import build_parser\ntry:\n"
              "    build_parser().parse_args(['convert-janus', '--help'])\n"
              "except SystemExit as stop:\n    assert stop.code == 0\nprint('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--trust-pickle" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "False"


# ---- the full-size preset has Janus-Pro-1B's dims ----------------------------------------------------------------
def test_unix_full_matches_janus_pro_1b(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = UniX(load_config("unix-full"))
    shapes = janus_expected_shapes(model)
    assert shapes[f"{LLM}embed_tokens.weight"] == (102400, 2048) == shapes["language_model.lm_head.weight"]
    assert shapes[f"{LLM}layers.23.self_attn.k_proj.weight"] == (2048, 2048)
    assert shapes[f"{LLM}layers.23.mlp.gate_proj.weight"] == (5632, 2048)
    assert shapes[f"{TOWER}blocks.23.attn.qkv.weight"] == (3072, 1024)
    assert shapes[f"{TOWER}pos_embed"] == (1, 576, 1024)
    assert shapes["aligner.layers.0.weight"] == (2048, 1024) and shapes["aligner.layers.2.weight"] == (2048, 2048)
    new = (".self_attn.q_proj.bias", ".self_attn.k_proj.bias", ".self_attn.v_proj.bias", ".q_norm.", ".k_norm.")
    llm = [s for k, s in shapes.items() if k.startswith("language_model.") and not any(n in k for n in new)]
    assert sum(torch.Size(s).numel() for s in llm) == 1_652_656_128  # spec 1.7: the original Janus-Pro-1B LLM
    (tmp_path / "config.json").write_text(json.dumps({"language_config": {
        "hidden_size": 2048, "intermediate_size": 5632, "max_position_embeddings": 16384, "model_type": "llama",
        "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16, "torch_dtype": "bfloat16",
        "vocab_size": 102400}}))
    _check_language_config(tmp_path, model.cfg.decoder)  # Janus-Pro-1B's language_config: no difference


# ---- the trainer ---------------------------------------------------------------------------------------------------
def test_a_stage_1_run_starts_from_a_janus_folder(folder: Path, tmp_path: Path, caplog) -> None:
    """`init=<Janus folder>`: the trainer's first weights are Janus's, with the generation expert a copy (logged);
    stage 1 trains the understanding side only, so the exported generation expert still equals Janus's LLM."""
    from train_data import make_training_set, write_recipe

    from unix_cxr.checkpoint.release import load_release
    from unix_cxr.train.recipe import load_recipe
    from unix_cxr.train.trainer import train

    files = make_training_set(tmp_path / "set")
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", files, steps=2, stages=("und_sft",)),
                         [f"init={folder}", "tensorboard=false"])
    with caplog.at_level(logging.INFO, logger="unix_cxr"):
        train(recipe, tmp_path / "run", progress=False)
    assert "generation expert initialised as a copy of the understanding expert" in caplog.text
    model = load_release(tmp_path / "run" / "und_sft" / "final", dtype=torch.float32).model
    janus = janus_tensors()
    q = f"{LLM}layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.decoder.layers[0].gen.q_proj.weight, janus[q])  # frozen in stage 1
    assert not torch.equal(model.decoder.layers[0].und.q_proj.weight, janus[q])  # trained

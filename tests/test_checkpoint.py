"""UniX checkpoints: the authors' key map (spec 9.2), safetensors save/load, strict errors, report-only loading,
pickle refusal, the golden model file and the full-size parameter budget (spec 1.7, built on the meta device).

Run: pytest tests/test_checkpoint.py
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import PARITY, needs_parity, randomize

from unix_cxr.checkpoint import safetensors_io
from unix_cxr.checkpoint.io import load_authors_weights, load_groups, save_authors_weights
from unix_cxr.checkpoint.keymap import from_authors, is_generation_key, to_authors
from unix_cxr.checkpoint.safetensors_io import read_safetensors, state_dict_mismatch, write_safetensors_atomic
from unix_cxr.config import load_config
from unix_cxr.model.masks import PackedLayout, split_position_ids
from unix_cxr.model.unix import UniX

# one decoder layer in the authors' naming: 14 tensors per expert, 28 per layer
_EXPERT_TENSORS = (
    "self_attn.q_proj{g}.weight", "self_attn.q_proj{g}.bias",
    "self_attn.k_proj{g}.weight", "self_attn.k_proj{g}.bias",
    "self_attn.v_proj{g}.weight", "self_attn.v_proj{g}.bias",
    "self_attn.o_proj{g}.weight",
    "self_attn.q_norm{g}.weight", "self_attn.k_norm{g}.weight",
    "input_layernorm{g}.weight", "post_attention_layernorm{g}.weight",
    "mlp{g}.gate_proj.weight", "mlp{g}.up_proj.weight", "mlp{g}.down_proj.weight",
)
_TOWER_BLOCK = tuple(f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                     for p in ("weight", "bias"))
_ATTN_POOL = ("latent", *(f"{m}.{p}" for m in ("q", "kv", "proj", "norm", "mlp.fc1", "mlp.fc2")
                          for p in ("weight", "bias")))


def spec_authors_keys(num_layers: int, vision_layers: int, with_generation: bool = True) -> set[str]:
    """The authors' key set of a UniX with these layer counts, written out from the spec 9.2 pattern."""
    experts = ("", "_moe_gen") if with_generation else ("",)
    keys = {f"language_model.model.layers.{i}.{t.format(g=g)}"
            for i in range(num_layers) for g in experts for t in _EXPERT_TENSORS}
    keys |= {"language_model.model.embed_tokens.weight", "language_model.model.norm.weight",
             "language_model.lm_head.weight", "vit_pos_embed.pos_embed"}
    keys |= {f"connector.layers.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    tower = "vit_model.vision_tower."
    keys |= {f"{tower}{k}" for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed",
                                     "norm.weight", "norm.bias")}
    keys |= {f"{tower}blocks.{j}.{t}" for j in range(vision_layers) for t in _TOWER_BLOCK}
    keys |= {f"{tower}attn_pool.{t}" for t in _ATTN_POOL}
    if with_generation:
        keys |= {"language_model.model.norm_moe_gen.weight", "latent_pos_embed.pos_embed"}
        keys |= {f"time_embedder.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
        keys |= {f"{m}.{p}" for m in ("vae2llm", "llm2vae") for p in ("weight", "bias")}
    return keys


def run_model(model: UniX, with_latents: bool = True, seed: int = 1) -> list[torch.Tensor]:
    """Every output of one packed pass: vision tokens, logits of the text rows, velocity of the latent rows."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    with torch.no_grad():
        vit = model.embed_images(torch.randn(1, 3, size, size, generator=g))
        text = model.embed_text(torch.randint(0, cfg.decoder.vocab_size, (1, 5), generator=g))
        parts, lens, modes = [vit, text], [vit.shape[1], 5], ["full", "causal"]
        n_lat = 4
        if with_latents:
            x_t = torch.randn(n_lat, cfg.vae.z_channels, generator=g)
            t = torch.rand(n_lat, generator=g)
            parts.append(model.embed_latents(x_t, t, torch.arange(n_lat))[None])
            lens.append(n_lat)
            modes.append("noise")
        x = torch.cat(parts, dim=1)
        gen_mask = torch.zeros(1, x.shape[1], dtype=torch.bool)
        if with_latents:
            gen_mask[0, -n_lat:] = True
        layout = PackedLayout.from_splits([(lens, modes)])
        pos = torch.tensor(split_position_ids(lens, modes))[None]
        hidden = model.decoder(x, pos, gen_mask if with_latents else None, layout)
        outs = [vit, model.logits(hidden[:, vit.shape[1]:vit.shape[1] + 5])]
        if with_latents:
            outs.append(model.velocity(hidden[0, -n_lat:]))
    return outs


@pytest.fixture(scope="module")
def model() -> UniX:
    return randomize(UniX(load_config("tiny")).eval(), seed=0)


# ---- 1. key map -----------------------------------------------------------------------------------------------
def test_key_round_trip_is_exact(model: UniX) -> None:
    ours = model.state_dict()
    back = from_authors(to_authors(ours))
    assert set(back) == set(ours)
    for key, value in ours.items():
        assert back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key


def test_authors_key_set_matches_spec_pattern(model: UniX) -> None:
    cfg = model.cfg
    authors = to_authors(model.state_dict())
    assert set(authors) == spec_authors_keys(cfg.decoder.num_layers, cfg.vision.num_layers)
    layer_keys = [k for k in authors if k.startswith("language_model.model.layers.0.")]
    assert len(layer_keys) == 28
    d, v = cfg.decoder.hidden_size, cfg.vision.hidden_size
    kv = cfg.decoder.num_kv_heads * cfg.decoder.head_dim
    shapes = {
        "language_model.model.layers.1.self_attn.q_proj_moe_gen.weight": (d, d),
        "language_model.model.layers.1.self_attn.k_proj.weight": (kv, d),
        "language_model.model.layers.0.mlp_moe_gen.gate_proj.weight": (cfg.decoder.intermediate_size, d),
        "language_model.model.layers.0.self_attn.q_norm_moe_gen.weight": (cfg.decoder.head_dim,),
        "vit_model.vision_tower.blocks.0.attn.qkv.weight": (3 * v, v),
        "vit_model.vision_tower.pos_embed": (1, cfg.vision.num_patches, v),
        "connector.layers.0.weight": (d, v),
        "connector.layers.2.weight": (d, d),
        "time_embedder.mlp.0.weight": (d, 256),
        "vae2llm.weight": (d, cfg.vae.z_channels),
        "llm2vae.weight": (cfg.vae.z_channels, d),
        "latent_pos_embed.pos_embed": (cfg.max_latent_size ** 2, d),
        "vit_pos_embed.pos_embed": (cfg.vit_max_num_patch_per_side ** 2, d),
    }
    for key, shape in shapes.items():
        assert tuple(authors[key].shape) == shape, key
    # exactly the tensors a report-only model does not hold are the generation keys
    report_only = spec_authors_keys(cfg.decoder.num_layers, cfg.vision.num_layers, with_generation=False)
    assert {k for k in authors if is_generation_key(k)} == set(authors) - report_only


# ---- 2. save / load ---------------------------------------------------------------------------------------------
def test_save_load_round_trip(model: UniX, tmp_path: Path) -> None:
    path = save_authors_weights(model, tmp_path / "model.safetensors")
    assert path == tmp_path / "model.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # the temporary file is gone

    # a plain safetensors file: 8-byte little-endian header length, then a JSON header (no pickle, no zip)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert raw[8:9] == b"{" and not raw.startswith((b"PK", b"\x80"))
    assert set(header) - {"__metadata__"} == set(to_authors(model.state_dict()))

    fresh = randomize(UniX(load_config("tiny")).eval(), seed=123)
    assert not torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    load_authors_weights(fresh, path)
    want, got = model.state_dict(), fresh.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    for a, b in zip(run_model(model), run_model(fresh), strict=False):
        assert torch.equal(a, b)


def test_loading_streams_one_group_per_open_file(model: UniX, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is opened afresh for every group (a decoder layer, a vision block, one other tensor), so the pages
    of one map never add up to the whole file; every tensor arrives, bit for bit."""
    import unix_cxr.checkpoint.io as io_mod

    path = save_authors_weights(model, tmp_path / "w.safetensors")
    reads: list[list[str]] = []
    real_open = io_mod.open_safetensors

    class Recording:
        def __init__(self, f):
            self.f, self.read = f, []

        def __getattr__(self, name):
            return getattr(self.f, name)

        def get_tensor(self, key):
            self.read.append(key)
            return self.f.get_tensor(key)

    @contextlib.contextmanager
    def recording_open(p):
        with real_open(p) as f:
            rec = Recording(f)
            yield rec
        reads.append(rec.read)

    monkeypatch.setattr(io_mod, "open_safetensors", recording_open)
    fresh = UniX(load_config("tiny"))
    load_authors_weights(fresh, path)
    read = [k for keys in reads for k in keys]
    assert sorted(read) == sorted(read_safetensors(path)) and len(read) == len(set(read))
    layer0 = [k for k in read if k.startswith("language_model.model.layers.0.")]
    assert max(len(keys) for keys in reads) == len(layer0)  # a decoder layer is the largest group
    assert all(len({k.split(".layers.")[-1].split(".")[0] for k in keys if ".layers." in k}) <= 1 for keys in reads)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_load_groups_keep_what_one_rule_combines_together() -> None:
    keys = ["language_model.model.layers.1.self_attn.q_proj.weight", "vit_model.vision_tower.attn_pool.q.weight",
            "language_model.model.layers.1.mlp.up_proj.weight", "vit_model.vision_tower.blocks.0.attn.qkv.weight",
            "vit_model.vision_tower.attn_pool.kv.weight", "lm_head.weight", "connector.layers.0.weight",
            "connector.layers.2.bias", "vit_model.vision_tower.blocks.10.norm1.weight"]
    assert load_groups(keys) == [keys[0:1] + keys[2:3], [keys[1], keys[4]], [keys[3]], [keys[5]], [keys[6]],
                                 [keys[7]], [keys[8]]]


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    write_safetensors_atomic({"a": torch.ones(3)}, path)

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_io, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_safetensors_atomic({"a": torch.zeros(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert torch.equal(read_safetensors(path)["a"], torch.ones(3))


def test_non_finite_tensors_are_refused_by_name(tmp_path: Path, tiny_model: UniX) -> None:
    path = tmp_path / "w.safetensors"
    write_safetensors_atomic({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan"), float("inf")]),
                              "ids": torch.arange(3)}, path)
    with pytest.raises(ValueError, match=rf"^{path}: tensor b has 2 non-finite values .*--allow-non-finite"):
        read_safetensors(path)
    assert read_safetensors(path, skip=lambda k: k == "b").keys() == {"a", "ids"}  # a skipped tensor is not read
    assert read_safetensors(path, allow_non_finite=True)["b"].isnan().sum() == 1
    authors = to_authors(tiny_model.state_dict())
    key = next(iter(authors))
    authors[key] = torch.full_like(authors[key], float("nan"))
    with pytest.raises(ValueError, match=rf"state dict: tensor {key} has"):
        load_authors_weights(UniX(load_config("tiny")), authors)
    file = tmp_path / "nan_model.safetensors"
    write_safetensors_atomic(authors, file)
    with pytest.raises(ValueError, match=rf"{file}: tensor {key} has {authors[key].numel()} non-finite"):
        load_authors_weights(UniX(load_config("tiny")), file)
    load_authors_weights(UniX(load_config("tiny")), file, allow_non_finite=True)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage that is not safetensors" * 10,
                                     struct.pack("<Q", 2 ** 40) + b"{}",
                                     struct.pack("<Q", 60) + b'{"a": {"dtype": "F32", "shape": [1000], '
                                                            b'"data_offsets": [0, 4000]}}'],
                         ids=["empty", "short", "text", "huge_header_length", "header_claims_more_data"])
def test_unreadable_safetensors_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{path}: not a readable \.safetensors file"):
        read_safetensors(path)


# ---- 3. the golden model file -----------------------------------------------------------------------------------
@needs_parity
def test_golden_model_file_loads_and_saves_back_bitwise(tmp_path: Path) -> None:
    from unix_cxr.eval.parity import GoldenDir

    cfg = GoldenDir.open(PARITY).cfg
    file = PARITY / "model.safetensors"
    authors = read_safetensors(file)
    model = UniX(cfg).eval()
    assert state_dict_mismatch(model.state_dict(), from_authors(authors)) is None  # no missing / unexpected keys
    assert set(authors) == spec_authors_keys(cfg.decoder.num_layers, cfg.vision.num_layers)
    load_authors_weights(model, file)
    out = save_authors_weights(model, tmp_path / "again.safetensors")
    again = read_safetensors(out)
    assert set(again) == set(authors)
    for key, value in authors.items():
        assert again[key].shape == value.shape and again[key].dtype == value.dtype, key
        assert torch.equal(again[key].view(torch.uint8), value.view(torch.uint8)), key  # bitwise


# ---- 4. mismatch errors -----------------------------------------------------------------------------------------
def test_wrong_shape_names_the_key(model: UniX) -> None:
    authors = to_authors(model.state_dict())
    authors["language_model.model.layers.1.mlp_moe_gen.up_proj.weight"] = torch.zeros(7, 64)
    fresh = UniX(load_config("tiny"))
    # the message names the key in our naming, with both shapes
    with pytest.raises(ValueError, match=r"decoder\.layers\.1\.gen\.mlp\.up_proj\.weight: file \(7, 64\) vs "
                                         r"model \(128, 64\)"):
        load_authors_weights(fresh, authors)


def test_missing_and_unexpected_keys_are_named(model: UniX, tmp_path: Path) -> None:
    authors = to_authors(model.state_dict())
    del authors["language_model.model.norm.weight"]
    authors["language_model.model.layers.9.mlp.gate_proj.weight"] = torch.zeros(128, 64)  # no layer 9 in tiny
    path = write_safetensors_atomic(authors, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as err:
        load_authors_weights(UniX(load_config("tiny")), path)
    message = str(err.value)
    assert "1 missing key(s): decoder.norm.weight" in message
    assert "1 unexpected key(s): decoder.layers.9.und.mlp.gate_proj.weight" in message


def test_unknown_key_is_named(model: UniX) -> None:
    authors = {**to_authors(model.state_dict()), "foo.bar": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"foo\.bar"):
        load_authors_weights(UniX(load_config("tiny")), authors)


def test_mismatch_report_counts_and_truncates() -> None:
    expected = {f"k{i}": torch.zeros(2) for i in range(8)}
    given = {"k0": torch.zeros(3), "x": torch.zeros(1)}
    message = state_dict_mismatch(expected, given, limit=2)
    assert message == ("7 missing key(s): k1, k2, ... (5 more); 1 unexpected key(s): x; "
                       "1 shape mismatch(es): k0: file (3,) vs model (2,)")
    assert state_dict_mismatch(expected, dict(expected)) is None


# ---- 5. report-only model ---------------------------------------------------------------------------------------
def test_report_only_model_skips_generation_tensors(model: UniX, tmp_path: Path) -> None:
    cfg = load_config("tiny")
    path = save_authors_weights(model, tmp_path / "full.safetensors")
    assert any(is_generation_key(k) for k in read_safetensors(path))
    report = UniX(cfg, with_generation=False).eval()
    load_authors_weights(report, path)
    names = [n for n, _ in report.named_parameters()]
    assert not [n for n in names if ".gen." in n or "time_embedder" in n]
    full_sd = model.state_dict()
    for key, value in report.state_dict().items():
        assert torch.equal(value, full_sd[key]), key

    gen_prefixes = ("decoder.norm_gen.", "time_embedder.", "vae2llm.", "llm2vae.", "latent_pos_embed.")
    gen_count = sum(p.numel() for n, p in model.named_parameters()
                    if ".gen." in n or n.startswith(gen_prefixes))
    full_count = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in report.parameters()) == full_count - gen_count
    assert gen_count > 0

    # the understanding path computes the same thing with or without the generation half
    for a, b in zip(run_model(model, with_latents=False), run_model(report, with_latents=False), strict=False):
        assert torch.equal(a, b)


# ---- 6. pickle refusal ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".pkl"])
def test_pickled_file_is_refused(model: UniX, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    torch.save(to_authors(model.state_dict()), path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ValueError, match="pickle") as err:
        load_authors_weights(UniX(load_config("tiny")), path)
    assert "convert-vae" in str(err.value)


# ---- 7. the full-size model on the meta device (spec 1.7, 9.2) ---------------------------------------------------
SPEC_COUNTS = {  # spec 1.7
    "llm": 2_886_189_056,  # decoder (both experts) + lm_head
    "siglip": 303_688_704,  # the tower's used path
    "attn_pool": 12_595_200,  # saved, never called
    "connector": 6_295_552,
    "time_embedder": 4_722_688,
    "vae2llm": 34_816,
    "llm2vae": 32_784,
    "latent_pos_embed": 2_097_152,
    "vit_pos_embed": 1_179_648,
}
_GROUPS = (("decoder.", "llm"), ("lm_head.", "llm"), ("vision.tower.head.", "attn_pool"),
           ("vision.tower.", "siglip"), ("vision.connector.", "connector"), ("time_embedder.", "time_embedder"),
           ("vae2llm.", "vae2llm"), ("llm2vae.", "llm2vae"), ("latent_pos_embed.", "latent_pos_embed"),
           ("vit_pos_embed.", "vit_pos_embed"))


@pytest.fixture(scope="module")
def full_meta_state_dict() -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return UniX(load_config("unix-full")).state_dict()


def test_full_parameter_counts(full_meta_state_dict: dict[str, torch.Tensor]) -> None:
    counts = dict.fromkeys(SPEC_COUNTS, 0)
    for key, value in full_meta_state_dict.items():
        group = next((g for prefix, g in _GROUPS if key.startswith(prefix)), None)
        assert group is not None, f"{key} belongs to no spec 1.7 part"
        counts[group] += value.numel()
    assert counts == SPEC_COUNTS
    assert sum(v.numel() for v in full_meta_state_dict.values()) == sum(SPEC_COUNTS.values()) == 3_216_835_600


def test_full_authors_keys(full_meta_state_dict: dict[str, torch.Tensor]) -> None:
    authors = to_authors(full_meta_state_dict)
    assert set(authors) == spec_authors_keys(24, 24)
    assert len([k for k in authors if k.startswith("language_model.model.layers.")]) == 24 * 28
    shapes = {
        "language_model.model.layers.0.self_attn.q_proj.weight": (2048, 2048),
        "language_model.model.layers.23.self_attn.q_proj_moe_gen.weight": (2048, 2048),
        "language_model.model.layers.0.mlp.gate_proj.weight": (5632, 2048),
        "language_model.model.layers.5.mlp_moe_gen.gate_proj.weight": (5632, 2048),
        "language_model.model.embed_tokens.weight": (102400, 2048),
        "language_model.lm_head.weight": (102400, 2048),
        "connector.layers.0.weight": (2048, 1024),
        "vit_model.vision_tower.blocks.0.attn.qkv.weight": (3072, 1024),
        "latent_pos_embed.pos_embed": (1024, 2048),
        "vit_pos_embed.pos_embed": (576, 2048),
    }
    for key, shape in shapes.items():
        assert tuple(authors[key].shape) == shape, key

"""Per-expert LoRA with peft (unix_cxr.train.lora, `unix-cxr lora merge`): placement, training, files, merging.

Run: pytest tests/test_lora.py
"""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import randomize, write_release
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unix_cxr.checkpoint.release import load_release
from unix_cxr.cli import main
from unix_cxr.config import OWN_CONFIG, load_config
from unix_cxr.data.packing import Latent, Text, VitImage, pack
from unix_cxr.model.unix import UniX
from unix_cxr.train.lora import (
    TARGETS,
    LoraSettings,
    apply_lora,
    has_lora,
    load_adapter,
    load_release_with_adapter,
    lora_module_names,
    lora_parameters,
    merge_lora,
    save_adapter,
)
from unix_cxr.train.objectives import training_forward

CFG = load_config("tiny")


def tiny(seed: int = 0, with_generation: bool = True) -> UniX:
    """The tiny model, randomly initialised; report-only: the same weights less the generation side."""
    torch.manual_seed(seed)  # peft draws lora_A from the global generator
    model = randomize(UniX(CFG), seed=seed).eval()
    if with_generation:
        return model
    report_only = UniX(CFG, with_generation=False).eval()
    full = model.state_dict()
    report_only.load_state_dict({k: full[k] for k in report_only.state_dict()})
    return report_only


def batch_and_flow(seed: int = 0):
    """A mixed packed sequence (understanding sample, text-to-image sample, dropped caption) and its flow draws."""
    gen = torch.Generator().manual_seed(seed)
    s = CFG.vision.image_size
    und = [VitImage(torch.randn(3, s, s, generator=gen)), Text([5, 6, 7]), Text([8, 9, 10, 11], loss=True)]
    t2i = [Text([12, 13]), Latent(torch.randn(16, 4, 4, generator=gen))]
    dropped = [Latent(torch.randn(16, 2, 3, generator=gen))]
    batch = pack([und, t2i, dropped], CFG)
    return batch, torch.randn(22, 16, generator=gen), torch.tensor([0.3, 0.8])


BATCH = batch_and_flow()
UND_ONLY = pack([[VitImage(torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(5))), Text([5, 6]),
                  Text([7, 8], loss=True)]], CFG)


def outputs(model: UniX, batch=BATCH) -> torch.Tensor:
    """Per-token CE, per-element MSE and the final residual stream, concatenated."""
    with torch.no_grad():
        if isinstance(batch, tuple):
            out = training_forward(model, batch[0], noise=batch[1], timesteps=batch[2], keep_hidden_states=True)
        else:
            out = training_forward(model, batch, keep_hidden_states=True)
    return torch.cat([out.ce, out.mse.flatten(), out.hidden_states[-1].flatten()])


def train_steps(model: UniX, steps: int = 3) -> None:
    """A few AdamW steps on the adapter parameters (random data: the mixed batch above)."""
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    model.train()
    for _ in range(steps):
        out = training_forward(model, BATCH[0], noise=BATCH[1], timesteps=BATCH[2])
        (out.ce.mean() + out.mse.mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def base_key(name: str) -> str:
    return name.replace(".base_layer.", ".")


def trained_adapter(experts: str = "both", steps: int = 3, **kw) -> UniX:
    model = apply_lora(tiny(), LoraSettings(experts=experts, r=4, alpha=8, **kw))
    train_steps(model, steps)
    return model


@pytest.fixture(scope="module")
def adapted() -> UniX:
    return trained_adapter("both")


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(CFG.decoder.vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


def release(folder):
    """A tiny release folder (conftest's) with our full config beside the authors' (the tiny special tokens)."""
    write_release(folder, CFG, tokenizer())
    (folder / OWN_CONFIG).write_text(yaml.safe_dump(CFG.to_dict(), sort_keys=False))
    return folder


# ---- placement ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("experts", ["und", "gen", "both"])
def test_adapters_sit_on_exactly_the_chosen_experts(experts):
    model = apply_lora(tiny(), LoraSettings(experts=experts, r=4))
    chosen = ("und", "gen") if experts == "both" else (experts,)
    expected = [f"decoder.layers.{i}.{e}.{'mlp.' if t in ('gate_proj', 'up_proj', 'down_proj') else ''}{t}"
                for i in range(CFG.decoder.num_layers) for e in ("und", "gen") if e in chosen for t in TARGETS]
    assert sorted(lora_module_names(model)) == sorted(expected)
    assert not any(n.startswith("vision.") for n in lora_module_names(model))  # SigLIP's q/k/v are not touched
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert len(trained) == 2 * len(expected) and isinstance(model, UniX)


def test_targets_choose_the_linear_layers():
    model = apply_lora(tiny(), LoraSettings(experts="gen", r=2, targets=("q_proj", "down_proj")))
    assert lora_module_names(model) == [f"decoder.layers.{i}.gen.{t}" for i in range(CFG.decoder.num_layers)
                                        for t in ("q_proj", "mlp.down_proj")]


def test_settings_are_checked():
    for bad, match in [({"experts": "all"}, "lora.experts"), ({"r": 0}, "lora.r"), ({"alpha": -1}, "lora.alpha"),
                       ({"dropout": 1.0}, "lora.dropout"), ({"targets": ("qkv",)}, "lora.targets")]:
        with pytest.raises(ValueError, match=match):
            LoraSettings(**bad)
    with pytest.raises(ValueError, match=r"unknown lora key\(s\) \['rank'\]"):
        LoraSettings.from_mapping({"experts": "gen", "rank": 4})
    assert LoraSettings.from_mapping({"experts": "und", "r": 2}).r == 2
    with pytest.raises(ValueError, match="report-only"):
        apply_lora(tiny(with_generation=False), LoraSettings(experts="gen"))
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        apply_lora(apply_lora(tiny(), LoraSettings(experts="und")), LoraSettings(experts="gen"))


# ---- outputs and training ----------------------------------------------------------------------------------------
def test_a_fresh_adapter_leaves_the_outputs_unchanged():
    model = tiny()
    before = outputs(model)
    apply_lora(model, LoraSettings(experts="both", r=4))
    assert all(not p.detach().any() for n, p in model.named_parameters() if ".lora_B." in n)
    assert torch.equal(outputs(model), before)


def test_training_changes_the_output_and_never_the_base_weights():
    model = tiny()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    before, und_before = outputs(model), outputs(model, UND_ONLY)
    apply_lora(model, LoraSettings(experts="gen", r=4, alpha=8))
    train_steps(model)
    after = {base_key(k): v for k, v in model.state_dict().items() if ".lora_" not in k}
    assert after.keys() == base.keys()
    assert all(torch.equal(after[k], base[k]) for k in base)  # bit-identical
    assert (outputs(model) - before).abs().max() > 1e-4
    # a generation-expert adapter never changes an understanding-only sequence
    assert torch.equal(outputs(model, UND_ONLY), und_before)


# ---- files -------------------------------------------------------------------------------------------------------
def test_adapter_files_are_standard_peft(adapted, tmp_path):
    folder = save_adapter(adapted, tmp_path / "adapter", base="weights/UniX")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["inference_mode"] is True and config["base_model_name_or_path"] == "weights/UniX"
    assert "und|gen" in config["target_modules"]
    tensors = load_file(folder / "adapter_model.safetensors")
    n = 2 * CFG.decoder.num_layers * len(TARGETS)
    assert len(tensors) == 2 * n and all(k.startswith("base_model.model.decoder.layers.") for k in tensors)
    a = tensors["base_model.model.decoder.layers.1.gen.mlp.up_proj.lora_A.weight"]
    b = tensors["base_model.model.decoder.layers.1.gen.mlp.up_proj.lora_B.weight"]
    assert a.shape == (4, CFG.decoder.hidden_size) and b.shape == (CFG.decoder.intermediate_size, 4)
    assert not list(tmp_path.glob(".*"))  # no temporary folder left


def test_save_then_load_on_a_fresh_base_gives_identical_outputs(adapted, tmp_path):
    folder = save_adapter(adapted, tmp_path / "adapter")
    fresh = load_adapter(tiny(), folder)
    assert sorted(lora_module_names(fresh)) == sorted(lora_module_names(adapted))
    assert torch.equal(outputs(fresh), outputs(adapted))
    assert not any(p.requires_grad for p in fresh.parameters())  # for inference
    assert all(p.requires_grad for p in lora_parameters(load_adapter(tiny(), folder, trainable=True)))
    # peft's own reader places the same weights (PeftModel wraps the UniX as a custom model)
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(tiny(), str(folder))
    assert torch.equal(outputs(wrapped.base_model.model), outputs(adapted))
    # saving again over the folder replaces it
    assert save_adapter(fresh, folder) == folder and load_file(folder / "adapter_model.safetensors")


def test_a_failed_save_leaves_the_previous_adapter(adapted, tmp_path, monkeypatch):
    import safetensors.torch

    folder = save_adapter(adapted, tmp_path / "adapter")
    before = (folder / "adapter_model.safetensors").read_bytes()
    (tmp_path / ".adapter.0123abcd.unix-cxr-tmp").mkdir()  # left by a killed write: removed by the next one

    def disk_full(*_args, **_kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_adapter(trained_adapter("und", steps=1), folder)
    assert (folder / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_merge_gives_the_adapted_outputs_and_the_original_keys(adapted, tmp_path):
    folder = save_adapter(adapted, tmp_path / "adapter")
    model = load_adapter(tiny(), folder)
    expected = outputs(model)
    merged = merge_lora(model)
    assert isinstance(merged, UniX) and not has_lora(merged) and not hasattr(merged, "peft_config")
    assert set(merged.state_dict()) == set(tiny().state_dict())
    torch.testing.assert_close(outputs(merged), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no LoRA adapter to merge"):
        merge_lora(merged)


def test_report_only_models_take_the_understanding_part(adapted, tmp_path):
    folder = save_adapter(adapted, tmp_path / "both")
    model = load_adapter(tiny(with_generation=False), folder)
    assert lora_module_names(model) and all(".und." in n for n in lora_module_names(model))
    assert torch.equal(outputs(model, UND_ONLY), outputs(adapted, UND_ONLY))
    gen_only = save_adapter(trained_adapter("gen", steps=1), tmp_path / "gen")
    report_only = tiny(with_generation=False)
    assert not has_lora(load_adapter(report_only, gen_only))


# ---- releases and the command ------------------------------------------------------------------------------------
def test_cli_merge_writes_a_release_with_the_merged_outputs(tmp_path, capsys):
    base = release(tmp_path / "base")
    model = apply_lora(load_release(base, dtype=torch.float32).model, LoraSettings(experts="both", r=4, alpha=8))
    train_steps(model)
    adapter = save_adapter(model, tmp_path / "adapter", base=base)
    expected = outputs(model)
    out = tmp_path / "merged"
    assert main(["lora", "merge", str(base), str(adapter), "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", OWN_CONFIG, "vae", "model.safetensors", "tokenizer.json", "lora_merge.json"} <= names
    assert json.loads((out / "lora_merge.json").read_text())["adapter_config"]["r"] == 4
    rel = load_release(out, dtype=torch.float32)
    assert rel.vae is not None and rel.tokenizer is not None and not has_lora(rel.model)
    torch.testing.assert_close(outputs(rel.model), expected, atol=1e-5, rtol=0)
    # loading for inference on top of the base: merged, or with the adapter kept
    merged = load_release_with_adapter(base, adapter, dtype=torch.float32)
    assert torch.equal(outputs(merged.model), outputs(rel.model))
    kept = load_release_with_adapter(base, adapter, merge=False, dtype=torch.float32)
    assert has_lora(kept.model) and torch.equal(outputs(kept.model), expected)
    # a second merge replaces the release it wrote; it never replaces the base or an unrelated folder
    assert main(["lora", "merge", str(base), str(adapter), "-o", str(out)]) == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert main(["lora", "merge", str(base), str(adapter), "-o", str(tmp_path / "notes")]) == 2
    assert main(["lora", "merge", str(base), str(adapter), "-o", str(base)]) == 2
    assert (tmp_path / "notes" / "a.txt").is_file() and load_release(base, dtype=torch.float32)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "holds no model.safetensors" in err[0] and "would replace the base" in err[1]


def test_bad_adapters_are_one_line_errors(adapted, tmp_path, capsys):
    with pytest.raises(ValueError, match="not a folder") as info:
        load_adapter(tiny(), tmp_path / "missing")
    assert "\n" not in str(info.value)
    # an adapter made for another model shape leaves the model untouched
    wide = load_config("tiny", {"decoder.intermediate_size": 96})
    torch.manual_seed(0)
    other = save_adapter(apply_lora(randomize(UniX(wide)), LoraSettings(experts="both", r=4)), tmp_path / "wide")
    model = tiny()
    with pytest.raises(ValueError, match=r"does not fit this model: .*shape mismatch") as info:
        load_adapter(model, other)
    assert "\n" not in str(info.value) and not has_lora(model) and not hasattr(model, "peft_config")
    deep = load_config("tiny", {"decoder.num_layers": 3})
    torch.manual_seed(0)
    deeper = save_adapter(apply_lora(randomize(UniX(deep)), LoraSettings(experts="gen", r=4)), tmp_path / "deep")
    with pytest.raises(ValueError, match=r"model lacks .*decoder\.layers\.2\.gen") as info:
        load_adapter(model, deeper)
    assert "\n" not in str(info.value) and not has_lora(model)
    not_lora = tmp_path / "ia3"
    not_lora.mkdir()
    (not_lora / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        load_adapter(model, not_lora)
    with pytest.raises(ValueError, match="carries no LoRA adapter"):
        save_adapter(tiny(), tmp_path / "none")
    # through the command: exit 2, one line
    base = release(tmp_path / "base")
    assert main(["lora", "merge", str(base), str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert main(["lora", "merge", str(base), str(other), "-o", str(tmp_path / "out")]) == 2
    assert main(["lora", "merge", str(tmp_path / "nobase"), str(other), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("unix-cxr lora: error: ") for line in err)
    assert "not a folder" in err[0] and "does not fit this model" in err[1] and "not a release folder" in err[2]
    assert not (tmp_path / "out").exists()


def test_lora_help_imports_no_torch():
    code = ("import sys\nfrom unix_cxr.cli import build_parser\nbuild_parser()\n"
            "assert 'torch' not in sys.modules and 'peft' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)

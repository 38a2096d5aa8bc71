"""Our understanding path against transformers' Qwen3 (unix_cxr.checkpoint.hf_export.und_to_qwen3).

A text-only causal sequence through our MoT decoder (packed training path, and the KV-cached inference path)
must match `Qwen3ForCausalLM` built from the same understanding-expert weights: logits in float32 to
atol 1e-5 / rtol 1e-4, and greedy decoding token for token.
"""

from __future__ import annotations

import pytest
import torch

from unix_cxr.checkpoint.hf_export import qwen3_config, und_to_qwen3
from unix_cxr.config import load_config
from unix_cxr.model.decoder import CacheAttention, RMSNorm
from unix_cxr.model.masks import PackedLayout
from unix_cxr.model.unix import UniX

ATOL, RTOL = 1e-5, 1e-4
LENGTH, NEW_TOKENS = 12, 8


@pytest.fixture(scope="module")
def model() -> UniX:
    torch.manual_seed(0)
    m = UniX(load_config("tiny")).eval()
    with torch.no_grad():
        for module in m.decoder.modules():
            if isinstance(module, RMSNorm):  # non-trivial norm weights, so that a missing copy shows
                module.weight.copy_(1 + 0.1 * torch.randn_like(module.weight))
        for name, p in m.decoder.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def ids(model: UniX) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, model.cfg.decoder.vocab_size, (1, LENGTH), generator=g)


@pytest.fixture(scope="module")
def hf(model: UniX):
    return und_to_qwen3(model)


def test_config_matches(model: UniX, hf) -> None:
    dec = model.cfg.decoder
    c = hf.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (dec.hidden_size, dec.intermediate_size,
                                                                         dec.num_layers)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (dec.num_heads, dec.num_kv_heads,
                                                                          dec.head_dim)
    assert c.vocab_size == dec.vocab_size and c.rms_norm_eps == dec.rms_norm_eps
    assert c.rope_parameters["rope_theta"] == dec.rope_theta
    assert c.attention_bias and not c.tie_word_embeddings
    assert hf.lm_head.weight.dtype == model.lm_head.weight.dtype
    for layer in hf.model.layers:
        assert torch.count_nonzero(layer.self_attn.o_proj.bias) == 0


def test_export_copies_by_default(model: UniX, hf) -> None:
    assert hf.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()
    shared = und_to_qwen3(model, share_weights=True)
    assert shared.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert shared.model.layers[0].self_attn.q_norm.weight is model.decoder.layers[0].und.q_norm.weight


def test_rejects_decoder_without_qk_norm() -> None:
    cfg = load_config("tiny")
    cfg.decoder.qk_norm = False
    with pytest.raises(ValueError, match="qk_norm"):
        qwen3_config(UniX(cfg, with_generation=False))


@torch.no_grad()
def test_logits_match_packed_path(model: UniX, hf, ids: torch.Tensor) -> None:
    layout = PackedLayout.from_splits([([LENGTH], ["causal"])])
    positions = torch.arange(LENGTH)[None]
    ours = model.logits(model.decoder(model.embed_text(ids), positions, None, layout))
    theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_greedy_decoding_matches_generate(model: UniX, hf, ids: torch.Tensor) -> None:
    dec = model.decoder
    cache = dec.new_cache(1, LENGTH + NEW_TOKENS)
    hidden = dec(model.embed_text(ids), torch.arange(LENGTH)[None], None, CacheAttention(cache, True, True))
    prefill_logits = model.logits(hidden)
    torch.testing.assert_close(prefill_logits, hf(input_ids=ids).logits, atol=ATOL, rtol=RTOL)
    token = prefill_logits[:, -1].argmax(-1)
    ours = [int(token)]
    for step in range(NEW_TOKENS - 1):
        pos = torch.tensor([[LENGTH + step]])
        hidden = dec(model.embed_text(token[:, None]), pos, None, CacheAttention(cache, True, True))
        token = model.logits(hidden[:, -1]).argmax(-1)
        ours.append(int(token))
    assert int(cache.lens[0]) == LENGTH + NEW_TOKENS - 1
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                      eos_token_id=None)
    assert out[0, LENGTH:].tolist() == ours


def test_a_quantized_model_is_refused_by_name():
    from unix_cxr.infer.quantize import quantize_decoding

    quantized = quantize_decoding(UniX(load_config("tiny")).eval(), "int8")
    with pytest.raises(ValueError, match="quantized"):
        und_to_qwen3(quantized)

"""Export the understanding path of UniX as a plain transformers `Qwen3ForCausalLM`.

The UniX decoder's understanding expert is, layer for layer, a Qwen3 decoder layer with attention biases:
RMSNorm -> q/k/v projections (bias) -> per-head RMSNorm on q and k -> RoPE (rotate-half, default
scaling) -> attention -> o_proj (no bias) -> residual -> RMSNorm -> SwiGLU MLP -> residual. transformers'
`Qwen3Attention` does exactly this: `q_norm(q_proj(h).view(..., -1, head_dim))` (the RMSNorm over the head
dimension, per head) before `apply_rotary_pos_emb`, and its RMSNorm also normalises in float32, casts back
and then multiplies by the weight. The only structural difference is that `attention_bias=True` gives Qwen3
an o_proj bias as well; it is set to zero here.

The exported model is the understanding path as a plain HF causal LM: text only (no vision tokens, no
generation expert), consecutive RoPE positions, ordinary causal attention. It is useful as an independent
reference for our decoder (tests/test_reference_qwen3.py) and as a baseline for benchmarking our engines
against `transformers` `generate` (benchmarks/bench_core.py). It is not a conversion of a full UniX
checkpoint: images and the image-generation path have no place in it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from ..model.unix import UniX

__all__ = ["qwen3_config", "und_state_dict", "und_to_qwen3"]


def qwen3_config(model: UniX, dtype: torch.dtype | None = None) -> Qwen3Config:
    """The Qwen3 config of the understanding path at equal dimensions."""
    dec = model.cfg.decoder
    if not dec.qk_norm:
        raise ValueError("Qwen3 always applies q/k RMSNorm: a decoder built with qk_norm=False cannot be exported")
    config = Qwen3Config(
        vocab_size=dec.vocab_size,
        hidden_size=dec.hidden_size,
        intermediate_size=dec.intermediate_size,
        num_hidden_layers=dec.num_layers,
        num_attention_heads=dec.num_heads,
        num_key_value_heads=dec.num_kv_heads,
        head_dim=dec.head_dim,
        hidden_act="silu",
        max_position_embeddings=dec.max_position_embeddings,
        rms_norm_eps=dec.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": dec.rope_theta},
        attention_bias=dec.qkv_bias,
        attention_dropout=0.0,
        use_sliding_window=False,
        tie_word_embeddings=False,
        bos_token_id=model.cfg.tokens.bos,
        eos_token_id=model.cfg.tokens.eos,
        pad_token_id=model.cfg.tokens.eos,
    )
    config.dtype = dtype or model.lm_head.weight.dtype
    return config


def _require_float_weights(model: UniX) -> None:
    if not isinstance(model.lm_head, nn.Linear) or not isinstance(model.decoder.embed_tokens, nn.Embedding):
        raise ValueError("export needs the model's float weights: this one was quantized (--quantize); "
                         "load the release folder without quantization to export it")


def und_state_dict(model: UniX, attention_bias: bool) -> dict[str, torch.Tensor]:
    """Our understanding-path tensors under Qwen3ForCausalLM names (the tensors themselves, not copies)."""
    _require_float_weights(model)
    dec = model.decoder
    sd = {"model.embed_tokens.weight": dec.embed_tokens.weight, "model.norm.weight": dec.norm.weight,
          "lm_head.weight": model.lm_head.weight}
    for i, layer in enumerate(dec.layers):
        und, pre = layer.und, f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = und.input_layernorm.weight
        sd[pre + "post_attention_layernorm.weight"] = und.post_attention_layernorm.weight
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = getattr(und, name)
            sd[pre + f"self_attn.{name}.weight"] = lin.weight
            if lin.bias is not None:
                sd[pre + f"self_attn.{name}.bias"] = lin.bias
        if attention_bias and und.o_proj.bias is None:
            sd[pre + "self_attn.o_proj.bias"] = und.o_proj.weight.new_zeros(und.o_proj.weight.shape[0])
        sd[pre + "self_attn.q_norm.weight"] = und.q_norm.weight
        sd[pre + "self_attn.k_norm.weight"] = und.k_norm.weight
        for name in ("gate_proj", "up_proj", "down_proj"):
            sd[pre + f"mlp.{name}.weight"] = getattr(und.mlp, name).weight
    return sd


@torch.no_grad()
def und_to_qwen3(model: UniX, dtype: torch.dtype | None = None, share_weights: bool = False,
                 attn_implementation: str = "sdpa") -> Qwen3ForCausalLM:
    """The understanding path of `model` as a `transformers.Qwen3ForCausalLM` (eval mode).

    Copies the understanding expert of every layer, `embed_tokens`, the final `norm` and `lm_head`; the
    generation expert, vision tower and generation heads are left out. Qwen3's o_proj bias (present because
    `attention_bias=True`) is zero. dtype: that of `model` unless given. share_weights=True makes the HF
    parameters the very tensors of `model` (no extra memory; a change to one is a change to the other);
    it needs `dtype` equal to the model's. The model is built on the meta device, so no random init is paid.
    The generation config is greedy, with our BOS/EOS ids (EOS also serves as the pad id).
    """
    _require_float_weights(model)
    src_dtype = model.lm_head.weight.dtype
    dtype = dtype or src_dtype
    if share_weights and dtype != src_dtype:
        raise ValueError(f"share_weights needs the model's dtype {src_dtype}, got {dtype}")
    config = qwen3_config(model, dtype)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        hf = Qwen3ForCausalLM(config)
    sd = und_state_dict(model, config.attention_bias)
    sd = {k: (v if share_weights else v.detach().to(dtype=dtype, copy=True)) for k, v in sd.items()}
    hf.load_state_dict(sd, strict=True, assign=True)
    # non-persistent RoPE buffers were created on meta: rebuild them (float32, as transformers keeps them)
    device = model.lm_head.weight.device
    with torch.device(device):
        hf.model.rotary_emb = Qwen3RotaryEmbedding(config=config)
    left = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device after export: {left}")
    hf.generation_config = GenerationConfig(do_sample=False, bos_token_id=config.bos_token_id,
                                            eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    return hf.eval()

"""MoT decoder: routing, cached inference == one packed pass, backends agree, report-only mode.

Run: pytest tests/test_decoder.py
"""

import pytest
import torch
from conftest import randomize

from unix_cxr.config import load_config
from unix_cxr.model.decoder import CacheAttention
from unix_cxr.model.masks import PackedLayout, split_position_ids
from unix_cxr.model.unix import UniX

torch.manual_seed(0)


def packed(model, x, modes_lens, gen_rows=None, backend="sdpa"):
    lens, modes = zip(*modes_lens, strict=False)
    layout = PackedLayout.from_splits([(list(lens), list(modes))])
    pos = torch.tensor(split_position_ids(list(lens), list(modes)))[None]
    gen_mask = torch.zeros(1, x.shape[1], dtype=torch.bool)
    if gen_rows is not None:
        gen_mask[0, gen_rows] = True
    model.decoder.set_attention_backend(backend)
    return model.decoder(x, pos, gen_mask, layout)


def test_cached_understanding_equals_one_packed_pass(tiny_model):
    d = tiny_model.cfg.decoder.hidden_size
    image, prompt = torch.randn(1, 6, d), torch.randn(1, 5, d)
    decoded = [torch.randn(1, 1, d) for _ in range(3)]
    with torch.no_grad():
        full = packed(tiny_model, torch.cat([image, prompt, *decoded], 1), [(6, "full"), (8, "causal")])
        cache = tiny_model.decoder.new_cache(1, 20)
        zeros = torch.zeros(1, 6, dtype=torch.long)
        outs = [tiny_model.decoder(image, zeros, None, CacheAttention(cache, False, True))]
        outs.append(tiny_model.decoder(prompt, torch.arange(1, 6)[None], None, CacheAttention(cache, True, True)))
        for i, tok in enumerate(decoded):
            outs.append(tiny_model.decoder(tok, torch.tensor([[6 + i]]), None, CacheAttention(cache, True, True)))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
    assert int(cache.lens[0]) == 14


def test_cached_denoising_equals_one_packed_pass(tiny_model):
    """Text context cached once, then [BOI][latents][EOI] read-only: equals the training mask over both splits."""
    d = tiny_model.cfg.decoder.hidden_size
    text, block = torch.randn(1, 4, d), torch.randn(1, 6, d)
    gen = torch.zeros(1, 6, dtype=torch.bool)
    gen[0, 1:-1] = True
    with torch.no_grad():
        full = packed(tiny_model, torch.cat([text, block], 1), [(4, "causal"), (6, "noise")], gen_rows=range(5, 9))
        cache = tiny_model.decoder.new_cache(1, 4)
        tiny_model.decoder(text, torch.arange(4)[None], None, CacheAttention(cache, True, True))
        out = tiny_model.decoder(block, torch.full((1, 6), 4), gen, CacheAttention(cache, False, False))
    torch.testing.assert_close(out, full[:, 4:], atol=1e-5, rtol=1e-4)
    assert int(cache.lens[0]) == 4  # a read-only block does not grow the cache


def test_experts_are_routed_per_token(tiny_model):
    """Changing the gen expert changes only the outputs influenced through gen rows' own computation."""
    d = tiny_model.cfg.decoder.hidden_size
    x = torch.randn(1, 7, d)
    splits = [(3, "causal"), (4, "noise")]
    with torch.no_grad():
        before = packed(tiny_model, x, splits, gen_rows=[4, 5])
        for p in tiny_model.decoder.layers[-1].gen.mlp.parameters():
            p.add_(0.5)
        after = packed(tiny_model, x, splits, gen_rows=[4, 5])
    changed = (before - after).abs().amax(-1)[0] > 1e-6
    # the last layer's gen MLP only touches gen rows (4, 5); the text rows cannot see the noise split
    assert changed.tolist() == [False, False, False, False, True, True, False]


@pytest.mark.parametrize("backend", ["flex"])
def test_backends_agree_on_packed_training_masks(tiny_model, backend):
    d = tiny_model.cfg.decoder.hidden_size
    x = torch.randn(1, 14, d)
    splits = [(5, "full"), (3, "causal"), (6, "noise")]
    with torch.no_grad():
        ref = packed(tiny_model, x, splits, gen_rows=range(9, 13), backend="sdpa")
        out = packed(tiny_model, x, splits, gen_rows=range(9, 13), backend=backend)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["flex"])
def test_backends_agree_on_cached_ragged_batch(tiny_model, backend):
    d = tiny_model.cfg.decoder.hidden_size
    image, prompt = torch.randn(2, 3, d), torch.randn(2, 4, d)

    def run(name):
        tiny_model.decoder.set_attention_backend(name)
        cache = tiny_model.decoder.new_cache(2, 10)
        with torch.no_grad():
            tiny_model.decoder(image, torch.zeros(2, 3, dtype=torch.long), None, CacheAttention(cache, False, True))
            start = cache.lens.clone()
            a = tiny_model.decoder(prompt, torch.arange(1, 5).expand(2, -1), None, CacheAttention(cache, True, True))
            cache.lens = start + torch.tensor([4, 2])  # row 1 has a 2-token prompt (rest is padding)
            b = tiny_model.decoder(prompt[:, :1], torch.tensor([[5], [3]]), None, CacheAttention(cache, True, True))
        return a, b

    ref, out = run("sdpa"), run(backend)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn needs a CUDA device")
def test_flash_backend_agrees_with_sdpa_on_gpu():
    pytest.importorskip("flash_attn")
    model = randomize(UniX(load_config("tiny"))).cuda().to(torch.bfloat16).eval()
    d = model.cfg.decoder.hidden_size
    x = torch.randn(2, 5, d, device="cuda", dtype=torch.bfloat16)

    def run(name):
        model.decoder.set_attention_backend(name)
        cache = model.decoder.new_cache(2, 8)
        with torch.no_grad():
            pos = torch.arange(5, device="cuda").expand(2, -1)
            return model.decoder(x, pos, None, CacheAttention(cache, True, True))

    torch.testing.assert_close(run("flash"), run("sdpa"), atol=2e-2, rtol=2e-2)


def test_ragged_rows_match_single_rows(tiny_model):
    """A batch whose prompts have different lengths gives each row what it gets alone."""
    d = tiny_model.cfg.decoder.hidden_size
    prompts = [torch.randn(1, 5, d), torch.randn(1, 3, d)]
    padded = torch.cat([prompts[0], torch.cat([prompts[1], torch.zeros(1, 2, d)], 1)])
    with torch.no_grad():
        cache = tiny_model.decoder.new_cache(2, 8)
        tiny_model.decoder(padded, torch.arange(5).expand(2, -1), None, CacheAttention(cache, True, True))
        cache.lens = torch.tensor([5, 3])
        step = torch.randn(2, 1, d)
        batch_out = tiny_model.decoder(step, torch.tensor([[5], [3]]), None, CacheAttention(cache, True, True))
        for row, prompt in enumerate(prompts):
            single = tiny_model.decoder.new_cache(1, 8)
            n = prompt.shape[1]
            tiny_model.decoder(prompt, torch.arange(n)[None], None, CacheAttention(single, True, True))
            out = tiny_model.decoder(step[row:row + 1], torch.tensor([[n]]), None, CacheAttention(single, True, True))
            torch.testing.assert_close(batch_out[row], out[0], atol=1e-5, rtol=1e-4)


def test_report_only_model_has_no_generation_weights_and_refuses_gen_rows():
    model = UniX(load_config("tiny"), with_generation=False)
    names = [n for n, _ in model.named_parameters()]
    assert not any(".gen." in n or n.startswith(("time_embedder", "vae2llm", "llm2vae", "latent_pos")) for n in names)
    full = UniX(load_config("tiny"))
    layer = sum(p.numel() for p in full.decoder.layers[0].gen.parameters())
    extra = layer * load_config("tiny").decoder.num_layers + sum(
        sum(p.numel() for p in m.parameters())
        for m in (full.decoder.norm_gen, full.time_embedder, full.vae2llm, full.llm2vae, full.latent_pos_embed))
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in model.parameters()) == extra
    x = torch.randn(1, 3, load_config("tiny").decoder.hidden_size)
    layout = PackedLayout.from_splits([([3], ["noise"])])
    with pytest.raises(ValueError, match="report-only"):
        model.decoder(x, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), layout)


def test_unknown_backend_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'"):
        tiny_model.decoder.set_attention_backend("xformers")


@pytest.mark.parametrize("native", [False, True])
def test_cpu_cache_dtype_follows_native_bf16(tiny_model, monkeypatch, native):
    """bf16 weights: a float32 cache on CPUs without bf16 arithmetic (bf16 SDPA is slow there), a bf16 one where
    the CPU has it; fp32 weights always get a float32 cache."""
    monkeypatch.setattr("unix_cxr.model.decoder.native_bf16", lambda device: native)
    assert tiny_model.decoder.new_cache(1, 4).k.dtype == torch.float32
    model = tiny_model.to(torch.bfloat16)
    assert model.decoder.new_cache(1, 4).k.dtype == (torch.bfloat16 if native else torch.float32)
    assert model.decoder.new_cache(1, 4, dtype=torch.float32).k.dtype == torch.float32  # asked for wins


def test_cpu_float32_cache_for_bf16_weights_matches_a_bf16_cache(tiny_model):
    model = tiny_model.to(torch.bfloat16)
    d = model.cfg.decoder.hidden_size
    x = torch.randn(1, 5, d, dtype=torch.bfloat16)
    outs = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            cache = model.decoder.new_cache(1, 6, dtype=dtype)
            model.decoder(x[:, :4], torch.arange(4)[None], None, CacheAttention(cache, True, True))
            outs[dtype] = model.decoder(x[:, 4:], torch.tensor([[4]]), None, CacheAttention(cache, True, True))
    assert outs[torch.float32].dtype == torch.bfloat16
    torch.testing.assert_close(outs[torch.float32], outs[torch.bfloat16], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("autocast", [False, True])
def test_packed_attention_equals_each_sample_attended_alone(autocast):
    """PackedStep casts the whole sequence once to autocast's dtype and splits it by sample: outputs and gradients
    equal slicing each sample out and attending it alone (SDPA casting it under autocast), to the bit."""
    from unix_cxr.model.attention import PackedStep

    layout = PackedLayout.from_splits([([4, 3], ["full", "causal"]), ([2, 5], ["causal", "noise"]), ([6], ["causal"])])
    n = len(layout)
    q, k, v = (torch.randn(1, 4, n, 8, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, n, 32)

    def run(attend):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = attend(q, k, v)
        out.float().backward(grad)
        grads = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        return out, grads

    def alone(q, k, v):
        outs = []
        for s, e in layout.sample_bounds():
            idx = torch.arange(s, e)
            mask = layout.allowed(idx[:, None], idx[None, :])
            outs.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e],
                                                                         attn_mask=mask))
        return torch.cat(outs, dim=2).transpose(1, 2).reshape(1, n, -1)

    out, grads = run(lambda q, k, v: PackedStep.prepare(layout, "sdpa", q.device).attend(0, q, k, v))
    ref, ref_grads = run(alone)
    assert out.dtype == (torch.bfloat16 if autocast else torch.float32) == ref.dtype
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)


@pytest.mark.parametrize("kv_heads", [8, 2])
def test_one_bf16_query_attends_in_float32(kv_heads):
    """A decoding step on a bf16 cache (model/attention.py): float32 attention of each row's visible keys, grouped
    query heads reading their key head, rounded once to bf16; SDPA in float32 is the reference."""
    import torch.nn.functional as F

    from unix_cxr.model.attention import cached_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 8, 1, 16, generator=g).bfloat16()
    k, v = (torch.randn(3, kv_heads, 40, 16, generator=g).bfloat16() for _ in range(2))
    mask = torch.ones(3, 1, 1, 40, dtype=torch.bool)
    mask[1, ..., 25:] = False  # a shorter row of a ragged batch
    out = cached_attention(q, k, v, mask, True, "sdpa")
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                         enable_gqa=kv_heads != 8)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 1, 8 * 16)
    ref = ref.transpose(1, 2).reshape(3, 1, 128)
    torch.testing.assert_close(out.float(), ref, rtol=2 ** -8, atol=1e-6)  # one bf16 rounding of the fp32 result
    alone = cached_attention(q[1:2], k[1:2, :, :25], v[1:2, :, :25], mask[1:2, ..., :25], True, "sdpa")
    torch.testing.assert_close(alone.float(), ref[1:2], rtol=2 ** -8, atol=1e-6)  # the padded keys add nothing

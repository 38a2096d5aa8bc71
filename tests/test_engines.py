"""Engines: timestep schedule, CFG + renorm, report decoding, image sampling, training forward.

Run: pytest tests/test_engines.py
"""

import math
from dataclasses import replace

import pytest
import torch
from conftest import randomize

from unix_cxr.config import load_config
from unix_cxr.data.packing import Latent, Text, VitImage, pack
from unix_cxr.flow import sample_timesteps, shift_timesteps, time_grid
from unix_cxr.infer.image import ImageGenerator, SamplingTrace, cfg_combine, in_cfg_interval
from unix_cxr.infer.report import ReportGenerator, top_p_filter
from unix_cxr.model.unix import UniX
from unix_cxr.train.objectives import training_forward


def images(n: int, seed: int = 0) -> torch.Tensor:
    s = load_config("tiny").vision.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


# ---- schedule and guidance ------------------------------------------------------------------------------
def test_schedule_matches_the_released_grid():
    assert time_grid(5, 3.0).tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0])
    t = time_grid(50, 3.0)
    s = torch.linspace(1, 0, 50)
    torch.testing.assert_close(t, 3 * s / (1 + 2 * s))
    guided = [in_cfg_interval(float(x), (0.4, 1.0)) for x in t[:-1]]  # the 49 Euler updates
    assert guided == [True] * 41 + [False] * 8  # spec 4.2: CFG off for the last 8 updates
    assert time_grid(7, 1.0).tolist() == pytest.approx(torch.linspace(1, 0, 7).tolist())


def test_cfg_combination_and_global_renorm_by_hand():
    v_c = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])  # ||v_c|| = 5
    v_u = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    raw = v_u + 2.0 * (v_c - v_u)  # [[5, 0], [0, 8]], norm sqrt(89)
    torch.testing.assert_close(cfg_combine(v_c, v_u, 2.0, "none"), raw)
    torch.testing.assert_close(cfg_combine(v_c, v_u, 2.0, "global"), raw * 5 / (math.sqrt(89) + 1e-8))
    # per-token renorm: token 0 has ||v_c|| 3 vs 5, token 1 has 4 vs 8
    torch.testing.assert_close(cfg_combine(v_c, v_u, 2.0, "channel"), raw * torch.tensor([[[0.6], [0.5]]]),
                               atol=1e-6, rtol=1e-6)
    # the factor never exceeds 1 and never falls below renorm_min
    assert torch.equal(cfg_combine(v_c, v_c * 0, 0.5, "global"), v_c * 0.5)
    torch.testing.assert_close(cfg_combine(v_c, v_u, 2.0, "global", renorm_min=0.9), raw * 0.9)
    with pytest.raises(ValueError, match="unknown cfg_renorm_type"):
        cfg_combine(v_c, v_u, 2.0, "softmax")


def test_training_timesteps():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(shift_timesteps(t, 1.0), t)
    torch.testing.assert_close(shift_timesteps(t, 3.0), 3 * t / (1 + 2 * t))
    a = sample_timesteps(1000, 1.0, torch.Generator().manual_seed(1))
    assert bool(((a > 0) & (a < 1)).all()) and abs(float(a.mean()) - 0.5) < 0.03
    assert torch.equal(a, sample_timesteps(1000, 1.0, torch.Generator().manual_seed(1)))


# ---- reports --------------------------------------------------------------------------------------------
def test_top_p_keeps_the_smallest_sufficient_set():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.1)).tolist() == [[True, False, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_batched_reports_with_different_prompt_lengths_match_single_runs(tiny_model):
    engine = ReportGenerator(tiny_model)
    px = images(2)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    batch = engine.generate(px, prompts, max_new_tokens=6)
    for row in range(2):
        single = engine.generate(px[row:row + 1], [prompts[row]], max_new_tokens=6)
        assert batch.token_ids[row] == single.token_ids[0]


def test_rows_stop_independently_at_eos(tiny_model):
    """Declare as EOS a token that row 0 emits and row 1 never does: row 0 stops there, row 1 runs on."""
    engine = ReportGenerator(tiny_model)
    px, prompts = images(2), [[5, 6, 7], [8]]
    blocks = [engine.prompt_block(p) for p in prompts]
    free = engine.decode(engine.prefill(px, blocks, 8), 8).token_ids
    stop_at = next(k for k, tok in enumerate(free[0]) if tok not in free[1])
    engine.tokens = replace(engine.tokens, eos=free[0][stop_at])
    out = engine.decode(engine.prefill(px, blocks, 8), 8)
    assert out.token_ids == [free[0][:stop_at], free[1]]
    assert out.finished == [True, False]


def test_sampled_decoding_is_seedable(tiny_model):
    engine = ReportGenerator(tiny_model)
    run = lambda seed: engine.generate(images(1), [[5, 6]], max_new_tokens=6, do_sample=True, temperature=1.5,
                                       top_p=0.9, generator=torch.Generator().manual_seed(seed)).token_ids
    assert run(3) == run(3)
    assert any(run(3) != run(s) for s in range(4, 10))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        engine.generate(images(1), [[5]], max_new_tokens=2, do_sample=True, temperature=0.0)


def test_double_bos_is_the_released_default(tiny_model):
    tok = tiny_model.cfg.tokens
    engine = ReportGenerator(tiny_model)
    assert engine.prompt_block([7, 8]) == [tok.bos, tok.bos, 7, 8, tok.eos]
    assert engine.prompt_block([7, 8], double_bos=False) == [tok.bos, 7, 8, tok.eos]


def test_report_only_model_decodes_like_the_full_model(tiny_model):
    report_only = UniX(load_config("tiny"), with_generation=False).eval()
    report_only.load_state_dict({k: v for k, v in tiny_model.state_dict().items()
                                 if k in report_only.state_dict()}, strict=True)
    a = ReportGenerator(tiny_model).generate(images(1), [[5, 6]], max_new_tokens=5).token_ids
    b = ReportGenerator(report_only).generate(images(1), [[5, 6]], max_new_tokens=5).token_ids
    assert a == b
    with pytest.raises(ValueError, match="report-only"):
        ImageGenerator(report_only).sample([[5]], 64, 64, generator=torch.Generator().manual_seed(0))


def test_bad_report_inputs(tiny_model):
    engine = ReportGenerator(tiny_model)
    with pytest.raises(ValueError, match="vision tower expects 3x32x32 images, got 3x48x48"):
        engine.generate(torch.zeros(1, 3, 48, 48), [[5]], max_new_tokens=2)
    with pytest.raises(ValueError, match="vision tower expects 3x32x32 images, got 1x32x32"):
        engine.generate(torch.zeros(1, 1, 32, 32), [[5]], max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds the context"):
        engine.generate(images(1), [[5] * 20000], max_new_tokens=2)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        engine.generate(images(2), [[5]], max_new_tokens=2)


# ---- images ---------------------------------------------------------------------------------------------
def test_batched_sampling_matches_single_prompts_and_is_seedable(tiny_model):
    engine = ImageGenerator(tiny_model)
    prompts = [[5, 6, 7, 8], [9]]
    noise = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0))
    batch = engine.sample(prompts, 64, 64, init_noise=noise)
    assert batch.shape == (2, 16, 4, 4)
    for row in range(2):
        single = engine.sample([prompts[row]], 64, 64, init_noise=noise[row:row + 1])
        torch.testing.assert_close(batch[row], single[0], atol=1e-5, rtol=1e-4)
    g = lambda: torch.Generator().manual_seed(11)
    assert torch.equal(engine.sample(prompts, 64, 64, generator=g()), engine.sample(prompts, 64, 64, generator=g()))


def test_guidance_changes_the_result_and_scale_one_skips_it(tiny_model):
    engine = ImageGenerator(tiny_model)
    rows_per_step = []
    velocity = engine.velocity

    def counting_velocity(x_t, t, cache, grid):
        rows_per_step.append(x_t.shape[0])
        return velocity(x_t, t, cache, grid)

    engine.velocity = counting_velocity
    noise = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(2))
    t_grid = time_grid(engine.sampling.num_timesteps, engine.sampling.timestep_shift).tolist()[:-1]
    inside = [in_cfg_interval(t, engine.sampling.cfg_interval) for t in t_grid]
    assert any(inside)
    guided = engine.sample([[5, 6]], 64, 64, init_noise=noise, cfg_text_scale=4.0)
    assert rows_per_step == [2 if i else 1 for i in inside]  # conditional + unconditional row inside the interval
    rows_per_step.clear()
    trace = SamplingTrace()
    plain = engine.sample([[5, 6]], 64, 64, init_noise=noise, cfg_text_scale=1.0, trace=trace)
    assert rows_per_step == [1] * len(t_grid)  # scale 1: no unconditional branch at all, even inside the interval
    assert trace.timesteps == pytest.approx(t_grid)
    cond = engine.encode_context([[5, 6]])
    for t, x_t, v in zip(trace.timesteps, trace.x_t, trace.velocity, strict=True):
        torch.testing.assert_close(v, velocity(x_t, t, cond, (4, 4)))  # the plain conditional velocity
    rows_per_step.clear()
    outside = engine.sample([[5, 6]], 64, 64, init_noise=noise, cfg_text_scale=4.0, cfg_interval=(0.99, 1.0))
    assert rows_per_step == [2] + [1] * (len(t_grid) - 1)  # only the first update (t = 1) lies in (0.99, 1]
    assert not torch.allclose(guided, plain)
    assert not torch.allclose(outside, plain)  # the first step (t = 1) is still guided


def test_bad_image_requests(tiny_model):
    engine = ImageGenerator(tiny_model)
    with pytest.raises(ValueError, match="not a multiple of the VAE factor 16"):
        engine.sample([[5]], 60, 64)
    with pytest.raises(ValueError, match="exceeds max_latent_size 8"):
        engine.sample([[5]], 256, 256)
    with pytest.raises(ValueError, match="init_noise must have shape"):
        engine.sample([[5]], 64, 64, init_noise=torch.zeros(1, 9, 16))


# ---- training forward -----------------------------------------------------------------------------------
def mixed_batch(cfg):
    gen = torch.Generator().manual_seed(0)
    und = [VitImage(images(1)[0]), Text([5, 6, 7]), Text([8, 9, 10, 11], loss=True)]
    t2i = [Text([12, 13]), Latent(torch.randn(16, 4, 4, generator=gen))]
    dropped_caption = [Latent(torch.randn(16, 2, 3, generator=gen))]
    return pack([und, t2i, dropped_caption], cfg)


def test_packing_a_mixed_batch():
    cfg = load_config("tiny")
    tok = cfg.tokens
    batch = mixed_batch(cfg)
    n_vit = cfg.vision.num_patches
    und_len = (n_vit + 2) + 5 + 6
    assert batch.position_ids.tolist() == ([0] * (n_vit + 2) + list(range(1, 12))  # und sample
                                           + [0, 1, 2, 3] + [4] * 18  # t2i: caption then one shared position
                                           + [0] * 8)  # dropped caption: the image at position 0
    assert batch.text_ids[:2].tolist() == [tok.start_of_image, tok.end_of_image]
    assert batch.ce_labels.tolist() == [8, 9, 10, 11, tok.eos]
    assert batch.ce_indexes.tolist() == list(range(und_len - 6, und_len - 1))
    assert batch.latent_indexes.numel() == 16 + 6 and batch.num_latent_images == 2
    assert batch.latent_position_ids[16:].tolist() == [0, 1, 2, 8, 9, 10]  # 2x3 grid in an 8x8 table


def test_training_forward_losses_and_gradients():
    cfg = load_config("tiny")
    model = randomize(UniX(cfg)).train()
    batch = mixed_batch(cfg)
    noise = torch.randn(22, 16, generator=torch.Generator().manual_seed(1))
    out = training_forward(model, batch, noise=noise, timesteps=torch.tensor([0.3, 0.8]))
    assert out.ce.shape == (5,) and out.mse.shape == (22, 16)
    assert bool(torch.isfinite(out.ce).all()) and bool(torch.isfinite(out.mse).all())
    (out.ce.mean() + out.mse.mean()).backward()
    assert model.decoder.layers[0].gen.q_proj.weight.grad.abs().sum() > 0
    assert model.vision.connector.fc1.weight.grad.abs().sum() > 0
    # an understanding-only batch never reaches the generation expert
    model.zero_grad(set_to_none=True)
    und_only = pack([[VitImage(images(1)[0]), Text([5]), Text([6, 7], loss=True)]], cfg)
    training_forward(model, und_only).ce.sum().backward()
    assert model.decoder.layers[0].gen.q_proj.weight.grad is None
    with pytest.raises(ValueError, match="pass `noise` and `timesteps`"):
        training_forward(model, batch)
    with pytest.raises(ValueError, match="2 latent images but 1 timesteps"):
        training_forward(model, batch, noise=noise, timesteps=torch.tensor([0.5]))


def test_velocity_target_and_interpolation():
    """With t = 1 the model input is pure noise; the MSE target is eps - x0 (checked through a zero head)."""
    cfg = load_config("tiny")
    model = randomize(UniX(cfg)).eval()
    torch.nn.init.zeros_(model.llm2vae.weight)
    torch.nn.init.zeros_(model.llm2vae.bias)  # v_hat = 0 -> mse = target^2
    x0 = torch.randn(16, 2, 2)
    batch = pack([[Text([5]), Latent(x0)]], cfg)
    eps = torch.randn(4, 16)
    with torch.no_grad():
        out = training_forward(model, batch, noise=eps, timesteps=torch.tensor([0.7]))
    target = eps - x0.permute(1, 2, 0).reshape(4, 16)
    torch.testing.assert_close(out.mse, target ** 2)


def test_generate_decodes_to_uint8_images(tiny_model):
    from unix_cxr.model.vae import LatentVAE

    vae = randomize(LatentVAE(load_config("tiny").vae), seed=3).eval()
    engine = ImageGenerator(tiny_model, vae=vae)
    g = lambda: torch.Generator().manual_seed(5)
    images = engine.generate([[5, 6], [7]], 64, 64, generator=g())
    assert images.shape == (2, 64, 64, 3) and images.dtype == torch.uint8
    latents = engine.sample([[5, 6], [7]], 64, 64, generator=g())
    expected = ((vae.decode(latents) / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(images, expected)
    with pytest.raises(ValueError, match="needs a VAE"):
        ImageGenerator(tiny_model).generate([[5]], 64, 64)


def test_packed_sequences_may_exceed_the_position_limit_but_samples_may_not():
    cfg = load_config("tiny")
    cfg.decoder.max_position_embeddings = 12
    short = [Text([5, 6, 7, 8])]  # 6 tokens each
    assert pack([short, short, short], cfg).position_ids.numel() == 18  # positions restart per sample
    with pytest.raises(ValueError, match="sample 1 has 13 tokens, more than max_position_embeddings 12"):
        pack([short, [Text(list(range(11)))]], cfg)

"""The image loop's step cache (`sampling.step_cache: taylor`, `unix_cxr.infer.step_cache`): exact forecasts of
linear velocities, the evaluation schedule (1.88x fewer at 50 points), guidance still applied on forecast steps,
and on the demo model images close to the uncached ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unix_cxr.config import load_config
from unix_cxr.infer import image as image_module
from unix_cxr.infer.image import ImageGenerator, SamplingTrace
from unix_cxr.infer.pipeline import UniXPipeline
from unix_cxr.infer.step_cache import BranchHistory, TaylorCache
from unix_cxr.model.unix import UniX


def test_a_linear_velocity_is_forecast_exactly():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    history = BranchHistory()
    assert not history.can_forecast
    for t in (0.9, 0.8, 0.7):
        history.record(t, a + t * b)
    assert torch.allclose(history.forecast(0.55), a + 0.55 * b, atol=1e-6)


def test_the_schedule_evaluates_26_of_49_steps():
    cache = TaylorCache(interval=2, warmup=3)
    evaluated = []
    for i in range(49):
        evaluated.append(cache.evaluates(i, guided=False))
        if evaluated[-1]:
            cache.cond.record(1.0 - i / 49, torch.zeros(1))
    assert evaluated[:4] == [True, True, True, False] and sum(evaluated) == 26
    assert not cache.evaluates(51, guided=False) and cache.evaluates(51, guided=True)  # no unconditional history yet
    assert all(TaylorCache(interval=1).evaluates(i, False) for i in range(3, 20))
    with pytest.raises(ValueError, match="interval must be >= 1"):
        TaylorCache(interval=0)


@pytest.fixture(scope="module")
def generator() -> ImageGenerator:
    torch.manual_seed(0)
    model = UniX(load_config("tiny")).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.llm2vae.weight, std=0.2)  # a non-zero velocity head
    return ImageGenerator(model)


def sample(generator, monkeypatch, **overrides):
    calls = []
    real = ImageGenerator.velocity
    monkeypatch.setattr(ImageGenerator, "velocity", lambda self, *a: calls.append(1) or real(self, *a))
    trace = SamplingTrace()
    x = generator.sample([[5, 6], [7]], 32, 32, generator=torch.Generator().manual_seed(1), trace=trace,
                         num_timesteps=50, cfg_interval=(0.0, 1.0), **overrides)
    return x, trace, len(calls)


def test_the_cache_runs_the_model_26_times_at_50_points_and_guidance_still_applies(generator, monkeypatch):
    plain, plain_trace, plain_calls = sample(generator, monkeypatch, cfg_text_scale=3.0)
    assert plain_calls == 49 and all(plain_trace.evaluated)
    combined = []
    real_combine = image_module.cfg_combine
    monkeypatch.setattr(image_module, "cfg_combine", lambda *a, **k: combined.append(1) or real_combine(*a, **k))
    cached, trace, calls = sample(generator, monkeypatch, cfg_text_scale=3.0, step_cache="taylor")
    assert calls == 26 and sum(trace.evaluated) == 26
    assert len(combined) == 49  # guidance on every step, forecast or evaluated
    unguided, _, _ = sample(generator, monkeypatch, cfg_text_scale=1.0, step_cache="taylor")
    assert not torch.allclose(cached, unguided, atol=1e-3)  # the guidance changed the cached result
    assert not torch.equal(cached, plain)
    assert (cached - plain).abs().mean() < 0.25 * plain.abs().mean()


def test_bad_step_cache_settings_are_refused(generator):
    with pytest.raises(ValueError, match="step_cache must be 'none' or 'taylor'"):
        generator.sample([[5]], 32, 32, step_cache="teacache")


def test_on_the_demo_model_cached_images_stay_close_to_uncached_ones():
    reports = ["FINDINGS: There is a large left pleural effusion. Moderate cardiomegaly.",
               "FINDINGS: The heart is normal in size. The lungs are clear."]
    plain = UniXPipeline.from_pretrained("demo").generate(reports, n=2, seed=0, steps=50)
    cached = UniXPipeline.from_pretrained("demo", sampling={"step_cache": "taylor"}).generate(reports, n=2, seed=0,
                                                                                              steps=50)
    diffs = [np.abs(a.pixels.astype(float) - b.pixels.astype(float)).mean() for a, b in zip(plain, cached,
                                                                                           strict=True)]
    assert 0 < max(diffs) < 6.0  # grey levels (of 255), mean over the image

"""Test utility: write a golden directory in the ../shared/parity format from OUR implementation, at any size.

`write_golden_dir(root, ...)` builds a randomly initialised UniX + VAE at the requested configuration (layer,
head and kv-head counts, widths, vocabulary, ViT and VAE sizes, a possibly non-square generation size, step
count, sampling settings), saves them the way the authors' harness does (`config.json`, `harness.json`,
`vae/config.yaml`, `vae.safetensors` in the ldm layout, `model.safetensors` in the authors' key layout,
`manifest.json`) and computes the six cases `unix-cxr parity` supports:

  case1_vae, case2_vit, case3_understanding, case4_velocity, case5_sampling, case6_training

each as `caseN_<kind>.safetensors` (input/, layout/, output/ keys) + `caseN_<kind>.json` (parameters, layout lists,
shape/dtype of every tensor). The formulas follow the goldens' README; where a step is short, it is written out
here (latent sampling from the moments, CFG and its renorm, the Euler loop with its time grid and CFG window,
the per-sample attention masks) instead of calling the engine function the runner uses, so that the runner's
reading of the settings is checked and not just replayed. Everything is float32 on the CPU and seeded.

Not part of the package: only the tests import it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from unix_cxr.checkpoint.io import save_authors_weights
from unix_cxr.checkpoint.safetensors_io import read_safetensors
from unix_cxr.checkpoint.vae import save_vae
from unix_cxr.config import SamplingConfig, SpecialTokens, UniXConfig, from_authors_config
from unix_cxr.data.packing import Latent, Text, VitImage, pack
from unix_cxr.infer.image import ImageGenerator
from unix_cxr.infer.report import ReportGenerator
from unix_cxr.model.unix import UniX
from unix_cxr.model.vae import LatentVAE, to_01
from unix_cxr.train.objectives import training_forward

LOGVAR_RANGE = (-30.0, 20.0)
ATTN_RESOLUTIONS = (16,)


# ---- initialisation ------------------------------------------------------------------------------------------
def randomize_(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """In `named_parameters` order: weights, biases, embeddings and position tables ~ N(0, 0.02^2); the weight of
    every norm (RMSNorm, LayerNorm, GroupNorm: a module whose name contains "norm") ~ 1 + 0.05 N(0, 1).
    Nothing is left at its default (llm2vae, which UniX zero-initialises, and the sin-cos tables included)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            owner, _, leaf = name.rpartition(".")
            noise = torch.randn(p.shape, generator=gen)
            is_norm = "norm" in owner.rsplit(".", 1)[-1] and leaf == "weight" and p.dim() == 1
            p.copy_(1 + 0.05 * noise if is_norm else 0.02 * noise)
    return module


# ---- small helpers -------------------------------------------------------------------------------------------
def _spec(tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()}


def _write_case(root: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}  # no shared storage
    save_file(tensors, str(root / f"{name}.safetensors"))
    (root / f"{name}.json").write_text(json.dumps({**meta, "tensors": _spec(tensors)}, indent=1))


def _schedule(num_timesteps: int, shift: float) -> list[float]:
    """t_i = shift*s/(1 + (shift - 1)*s), s = linspace(1, 0, num_timesteps), as float32 values."""
    s = torch.linspace(1, 0, num_timesteps)
    return (shift * s / (1 + (shift - 1) * s)).tolist()


def _cfg(v_c: torch.Tensor, v_u: torch.Tensor, scale: float, kind: str, renorm_min: float) -> torch.Tensor:
    """Text CFG on (n, C) velocities: global renorm over all tokens and channels, channel / text_channel per token."""
    v = v_u + scale * (v_c - v_u)
    if kind == "none":
        return v
    if kind == "global":
        ratio = v_c.norm() / (v.norm() + 1e-8)
    else:
        ratio = v_c.norm(dim=-1, keepdim=True) / (v.norm(dim=-1, keepdim=True) + 1e-8)
    return v * ratio.clamp(min=renorm_min, max=1.0)


def _sample_masks(split_lens: list[int], split_modes: list[str]) -> torch.Tensor:
    """Additive 0/-inf mask of one sample: causal split = earlier splits + itself causally; full / noise split =
    earlier splits + all of itself; a noise split is seen by no row outside it."""
    n = sum(split_lens)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    starts = [sum(split_lens[:i]) for i in range(len(split_lens))]
    for i, (start, length, mode) in enumerate(zip(starts, split_lens, split_modes, strict=True)):
        end = start + length
        for j in range(i):  # earlier splits, unless they are noise splits
            if split_modes[j] != "noise":
                allowed[start:end, starts[j]:starts[j] + split_lens[j]] = True
        block = torch.ones(length, length, dtype=torch.bool)
        allowed[start:end, start:end] = block.tril() if mode == "causal" else block
    return torch.zeros(n, n).masked_fill(~allowed, float("-inf"))


def _vae_yaml(ch: int, ch_mult: tuple[int, ...], res_blocks: int, z: int, resolution: int) -> str:
    return (
        "model:\n"
        "  base_learning_rate: 4.5e-06\n"
        "  target: ldm.models.autoencoder.AutoencoderKL\n"
        "  params:\n"
        "    monitor: val/rec_loss\n"
        f"    embed_dim: {z}\n"
        "    lossconfig:\n"
        "      target: torch.nn.Identity\n"
        "    ddconfig:\n"
        "      double_z: true\n"
        f"      z_channels: {z}\n"
        f"      resolution: {resolution}\n"
        "      in_channels: 3\n"
        "      out_ch: 3\n"
        f"      ch: {ch}\n"
        f"      ch_mult: [{', '.join(str(m) for m in ch_mult)}]\n"
        f"      num_res_blocks: {res_blocks}\n"
        f"      attn_resolutions: [{', '.join(str(r) for r in ATTN_RESOLUTIONS)}]\n"
        "      dropout: 0.0\n"
    )


# ---- the writer ----------------------------------------------------------------------------------------------
def write_golden_dir(
    root: Path, *, hidden: int = 96, layers: int = 3, heads: int = 6, kv_heads: int = 6, inter: int = 160,
    vocab: int = 410, vit_image: int = 48, vit_patch: int = 16, vit_width: int = 48, vit_layers: int = 1,
    vit_heads: int = 3, vit_inter: int = 96, vae_ch: int = 32, vae_ch_mult: tuple[int, ...] = (1, 1, 1, 1, 1),
    vae_res_blocks: int = 1, vae_resolution: int = 256, z_channels: int = 16, max_latent: int = 6,
    gen_hw: tuple[int, int] = (32, 48), num_timesteps: int = 4, prompt_len: int = 5, n_new_tokens: int = 5,
    answer_len: int = 4, caption_len: int = 4, gen_prompt_len: int = 4, train_timestep_shift: float = 4.0,
    infer_timestep_shift: float = 2.0, cfg_text_scale: float = 3.0, cfg_interval: tuple[float, float] = (0.55, 1.0),
    cfg_renorm_type: str = "global", cfg_renorm_min: float = 0.0, seed: int = 20260201,
) -> Path:
    """Write a complete golden directory at `root` (created) and return it. See the module docstring."""
    root = Path(root)
    (root / "vae").mkdir(parents=True, exist_ok=True)
    downsample = 2 ** (len(vae_ch_mult) - 1)
    h_img, w_img = gen_hw
    if h_img % downsample or w_img % downsample:
        raise ValueError(f"gen_hw {gen_hw} is not a multiple of the VAE factor {downsample}")
    if vae_resolution // 16 != downsample:  # the reference derives its downsample factor as resolution // 16
        raise ValueError(f"vae_resolution {vae_resolution} // 16 must equal the VAE factor {downsample}")
    grid = (h_img // downsample, w_img // downsample)
    n_lat = grid[0] * grid[1]
    base = vocab - 10  # ordinary ids [0, base); the four special ids just above, near the top of the vocabulary
    special = {"bos_token_id": base, "eos_token_id": base + 1, "start_of_image": base + 2, "end_of_image": base + 3}
    tokens = SpecialTokens(bos=base, eos=base + 1, start_of_image=base + 2, end_of_image=base + 3)

    # ---- config.json, harness.json, vae/config.yaml (the authors' formats) ----
    config = {
        "model_type": "unix", "architectures": ["UniX"], "visual_gen": True, "visual_und": True,
        "latent_patch_size": 1, "max_latent_size": max_latent, "vit_max_num_patch_per_side": vit_image // vit_patch,
        "connector_act": "gelu_pytorch_tanh", "interpolate_pos": False, "timestep_shift": train_timestep_shift,
        "llm_config": {
            "model_type": "qwen2", "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
            "max_position_embeddings": 16384, "layer_module": "Qwen2MoTDecoderLayer", "qk_norm": True,
            "tie_word_embeddings": False, "torch_dtype": "float32",
        },
        "vit_config": {
            "model_type": "siglip_vision_model", "hidden_size": vit_width, "image_size": vit_image,
            "intermediate_size": vit_inter, "num_attention_heads": vit_heads, "num_hidden_layers": vit_layers,
            "patch_size": vit_patch, "select_layer": -1,
        },
        "vae_config": {"path": "vae/kl-f16d16.ckpt", "downsample": downsample, "z_channels": z_channels},
        "inference_config": {
            "understanding": {"do_sample": False, "text_temperature": 0.3, "cfg_text_scale": cfg_text_scale,
                              "cfg_img_scale": 1.0, "cfg_interval": list(cfg_interval),
                              "num_timesteps": num_timesteps},
            "generation": {"cfg_text_scale": cfg_text_scale, "cfg_img_scale": 1.0, "cfg_interval": list(cfg_interval),
                           "num_timesteps": num_timesteps, "do_sample": False},
        },
        "vae_path": "vae/kl-f16d16.ckpt",
    }
    settings = {
        "seed": seed,
        "llm": {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab},
        "n_text_ids": base,
        "special": special,
        "vit": {"image_size": vit_image, "patch_size": vit_patch, "hidden_size": vit_width,
                "intermediate_size": vit_inter, "num_hidden_layers": vit_layers, "num_attention_heads": vit_heads},
        "vit_max_num_patch_per_side": vit_image // vit_patch,
        "vae": {"ch": vae_ch, "ch_mult": list(vae_ch_mult), "num_res_blocks": vae_res_blocks,
                "z_channels": z_channels, "attn_resolutions": list(ATTN_RESOLUTIONS), "resolution": vae_resolution},
        "gen_image": [h_img, w_img],
        "max_latent_size": max_latent,
        "train_timestep_shift": train_timestep_shift,
        "infer_timestep_shift": infer_timestep_shift,
        "num_timesteps": num_timesteps,
        "cfg_text_scale": cfg_text_scale,
        "cfg_interval": list(cfg_interval),
        "cfg_renorm_min": cfg_renorm_min,
        "cfg_renorm_type": cfg_renorm_type,
        "prompt_len": prompt_len,
        "answer_len": answer_len,
        "caption_len": caption_len,
        "gen_prompt_len": gen_prompt_len,
        "n_new_tokens": n_new_tokens,
    }
    cases = {"case1_vae": "VAE encode / decode", "case2_vit": "SigLIP tower + connector",
             "case3_understanding": "image + prompt prefill, greedy decoding with the KV cache",
             "case4_velocity": "one flow velocity: conditional, unconditional, CFG",
             "case5_sampling": f"text-to-image sampling, {num_timesteps - 1} Euler steps, VAE decode",
             "case6_training": "training forward on a packed SFT + text-to-image batch"}
    harness = {
        "preset": "generic (tests/golden_writer.py, from unix_cxr itself)", "seed": seed, "threads": 1,
        "special_token_ids": special, "settings": settings,
        "init": {"weights_biases_embeddings": "N(0, 0.02^2)", "norm_weights": "1 + 0.05*N(0,1)",
                 "order": "named_parameters order, one torch.Generator seeded with settings.seed (VAE, then UniX)"},
        "cases": cases,
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "harness.json").write_text(json.dumps(harness, indent=1))
    yaml_path = root / "vae" / "config.yaml"
    yaml_path.write_text(_vae_yaml(vae_ch, vae_ch_mult, vae_res_blocks, z_channels, vae_resolution))

    # ---- the models: the config as both sides read it, random weights, saved in the authors' layouts ----
    cfg: UniXConfig = from_authors_config(config, yaml_path, tokens)
    cfg.sampling = SamplingConfig(num_timesteps=num_timesteps, timestep_shift=infer_timestep_shift,
                                  cfg_text_scale=cfg_text_scale, cfg_interval=tuple(cfg_interval),
                                  cfg_renorm_type=cfg_renorm_type, cfg_renorm_min=cfg_renorm_min, image_size=h_img)
    cfg.validate()
    gen = torch.Generator().manual_seed(seed)
    vae = randomize_(LatentVAE(cfg.vae), gen).eval()
    model = randomize_(UniX(cfg), gen).eval()
    save_vae(vae, root / "vae.safetensors", layout="ldm")
    save_authors_weights(model, root / "model.safetensors")
    manifest = {name: {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                       for k, v in read_safetensors(root / name).items()}
                for name in ("model.safetensors", "vae.safetensors")}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))

    data = torch.Generator().manual_seed(seed + 1)

    def ids(n: int) -> torch.Tensor:  # ordinary token ids
        return torch.randint(0, base, (n,), generator=data)

    def uint8(*shape: int) -> torch.Tensor:
        return torch.randint(0, 256, shape, generator=data, dtype=torch.uint8)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=data)

    def vit_px(img: torch.Tensor) -> torch.Tensor:  # SigLIPImageTransform: /255, then the CXR mean / std
        return (img.permute(2, 0, 1)[None].float() / 255 - cfg.vision.pixel_mean) / cfg.vision.pixel_std

    def vae_px(img: torch.Tensor) -> torch.Tensor:  # VAEImageTransform: /255, then (x - 0.5) / 0.5
        return (img.permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5

    n_patches = (vit_image // vit_patch) ** 2
    scale, shift = cfg.vae.scale_factor, cfg.vae.shift_factor

    with torch.inference_mode():
        # ---- case 1: VAE ----
        img = uint8(h_img, w_img, 3)
        image = vae_px(img)
        moments = vae.moments(image)
        mean, logvar = moments.chunk(2, dim=1)
        eps = randn(*mean.shape)
        decode_latent = randn(*mean.shape)
        decoded = vae.decode(decode_latent)
        _write_case(root, "case1_vae", {
            "input/image_uint8_hwc": img, "input/image": image, "output/moments": moments,
            "output/latent_mean": scale * (mean - shift), "input/posterior_eps": eps,
            "output/latent_sampled": scale * (mean + torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE)) * eps - shift),
            "input/decode_latent": decode_latent, "output/decoded": decoded, "output/decoded_01": to_01(decoded),
            "output/decoded_roundtrip": vae.decode(scale * (mean - shift)),
        }, {"summary": cases["case1_vae"], "scale_factor": scale, "shift_factor": shift})

        # ---- case 2: vision tokens ----
        img = uint8(vit_image, vit_image, 3)
        px = vit_px(img)
        features = model.vision.features(px)
        _write_case(root, "case2_vit", {
            "input/image_uint8_hwc": img, "input/pixel_values": px, "output/vit_features": features,
            "output/vision_tokens": model.vision.connector(features),
        }, {"summary": cases["case2_vit"]})

        # ---- case 3: report generation ----
        img = uint8(vit_image, vit_image, 3)
        px = vit_px(img)
        prompt = ids(prompt_len)
        block = [tokens.bos, *prompt.tolist(), tokens.eos]
        steps = n_new_tokens + 1  # the reference runs one more forward step than it returns tokens
        engine = ReportGenerator(model)
        state = engine.prefill(px, [block], steps)
        used = int(state.cache.lens[0])
        keys = state.cache.k[:, 0, :, :used].transpose(1, 2).clone()
        values = state.cache.v[:, 0, :, :used].transpose(1, 2).clone()
        text_logits = model.logits(state.prompt_hidden[0])
        out = engine.decode(state, steps, keep_logits=True)
        generated = torch.tensor([tokens.bos, *out.token_ids[0]])[:steps]
        step_logits = torch.stack([s[0] for s in out.step_logits])
        n_img = n_patches + 2
        _write_case(root, "case3_understanding", {
            "input/image_uint8_hwc": img, "input/pixel_values": px, "input/prompt_ids": prompt,
            "layout/image_block_position_ids": torch.zeros(n_img, dtype=torch.long),
            "layout/text_block_token_ids": torch.tensor(block),
            "layout/text_block_position_ids": torch.arange(1, len(block) + 1),
            "layout/decode_position_ids": torch.arange(len(block) + 1, len(block) + 1 + step_logits.shape[0]),
            "output/image_block_hidden": state.image_hidden[0], "output/text_block_hidden": state.prompt_hidden[0],
            "output/text_block_logits": text_logits, "output/last_position_logits": text_logits[-1],
            "output/kv_cache_keys": keys, "output/kv_cache_values": values,
            "output/generated_tokens": generated, "output/step_logits": step_logits,
        }, {"summary": cases["case3_understanding"], "special_token_ids": special, "n_image_tokens": n_patches,
            "n_text_block": len(block), "generated_tokens": generated.tolist(), "eos_reached": out.finished[0],
            "top1_minus_top2_logit_per_step": [float(a - b) for a, b in step_logits.topk(2, dim=-1).values]})

        # ---- case 4: one velocity ----
        sampler = ImageGenerator(model, cfg.sampling)
        prompt = ids(gen_prompt_len)
        x_t = randn(n_lat, z_channels)
        t_grid = _schedule(num_timesteps, infer_timestep_shift)
        t = t_grid[1]
        cond = sampler.encode_context([prompt.tolist()])
        empty = model.decoder.new_cache(1, 1)  # the unconditional branch: no context at all
        v_c = sampler.velocity(x_t[None], t, cond, grid)[0]  # cond and uncond as separate batches here
        v_u = sampler.velocity(x_t[None], t, empty, grid)[0]
        _write_case(root, "case4_velocity", {
            "input/prompt_ids": prompt, "input/x_t": x_t, "input/t": torch.tensor([t]),
            "layout/cond_query_position_ids": torch.full((n_lat + 2,), gen_prompt_len + 2),
            "layout/uncond_query_position_ids": torch.zeros(n_lat + 2, dtype=torch.long),
            "layout/latent_position_ids": (torch.arange(grid[0])[:, None] * max_latent
                                           + torch.arange(grid[1])[None]).reshape(-1),
            "output/v_cond": v_c, "output/v_uncond": v_u,
            "output/v_cfg": _cfg(v_c, v_u, cfg_text_scale, "global", cfg_renorm_min),
            "output/v_cfg_renorm_channel": _cfg(v_c, v_u, cfg_text_scale, "channel", cfg_renorm_min),
            "output/v_cfg_renorm_text_channel": _cfg(v_c, v_u, cfg_text_scale, "text_channel", cfg_renorm_min),
        }, {"summary": cases["case4_velocity"], "t": t, "timestep_schedule_it_comes_from": t_grid,
            "cfg_text_scale": cfg_text_scale, "cfg_renorm_min": cfg_renorm_min,
            "reference_default_renorm": "global (v_cfg); channel and text_channel are the other branches"})

        # ---- case 5: sampling (the Euler loop written out) ----
        prompt = ids(gen_prompt_len)
        init_noise = randn(n_lat, z_channels)
        cond = sampler.encode_context([prompt.tolist()])
        x, xs, vs, scales = init_noise.clone(), [], [], []
        for t, t_next in itertools.pairwise(t_grid):
            v_c = sampler.velocity(x[None], t, cond, grid)[0]
            guided = cfg_text_scale != 1.0 and cfg_interval[0] < t <= cfg_interval[1]
            if guided:
                v_u = sampler.velocity(x[None], t, empty, grid)[0]
                v = _cfg(v_c, v_u, cfg_text_scale, cfg_renorm_type, cfg_renorm_min)
            else:
                v = v_c
            xs.append(x)
            vs.append(v)
            scales.append(cfg_text_scale if guided else 1.0)
            x = x - v * (t - t_next)
        final_nchw = x.view(1, *grid, z_channels).permute(0, 3, 1, 2).contiguous()
        decoded = vae.decode(final_nchw)
        image_uint8 = (to_01(decoded)[0].permute(1, 2, 0) * 255).clamp(0, 255).to(torch.uint8)  # truncation
        _write_case(root, "case5_sampling", {
            "input/prompt_ids": prompt, "input/init_noise": init_noise,
            "output/timesteps": torch.tensor(t_grid[:-1]), "output/step_x_t": torch.stack(xs),
            "output/step_velocity": torch.stack(vs), "output/final_latent_tokens": x,
            "output/final_latent_nchw": final_nchw, "output/decoded": decoded, "output/decoded_01": to_01(decoded),
            "output/image_uint8_hwc": image_uint8,
        }, {"summary": cases["case5_sampling"], "image_shape_hw": [h_img, w_img], "latent_grid_hw": list(grid),
            "num_timesteps_argument": num_timesteps, "timesteps_used": t_grid[:-1],
            "cfg_text_scale_per_step": scales, "cfg_renorm_type": cfg_renorm_type})

        # ---- case 6: training forward on a packed batch ----
        und_img = uint8(vit_image, vit_image, 3)
        t2i_img = uint8(h_img, w_img, 3)
        und_px, t2i_px = vit_px(und_img), vae_px(t2i_img)
        latent = vae.encode(t2i_px)  # posterior mean, (1, C, h, w)
        prompt, answer, caption = ids(prompt_len), ids(answer_len), ids(caption_len)
        samples = [[VitImage(und_px[0]), Text(prompt.tolist()), Text(answer.tolist(), loss=True)],
                   [Text(caption.tolist()), Latent(latent[0], noised=True)]]
        splits = [[[n_patches + 2, prompt_len + 2, answer_len + 2], ["full", "causal", "causal"]],
                  [[caption_len + 2, n_lat + 2], ["causal", "noise"]]]
        batch = pack(samples, cfg)
        raw = randn(1)
        timesteps = train_timestep_shift * torch.sigmoid(raw) / (1 + (train_timestep_shift - 1) * torch.sigmoid(raw))
        noise = randn(n_lat, z_channels)
        result = training_forward(model, batch, noise=noise, timesteps=timesteps)
        masks = {f"input/nested_attention_mask_{s}": _sample_masks(*split) for s, split in enumerate(splits)}
        _write_case(root, "case6_training", {
            "input/und_image_uint8_hwc": und_img, "input/vit_pixel_values": und_px,
            "input/t2i_image_uint8_hwc": t2i_img, "input/vae_pixel_values": t2i_px, "input/padded_latent": latent,
            "input/packed_text_ids": batch.text_ids, "input/packed_text_indexes": batch.text_indexes,
            "input/packed_position_ids": batch.position_ids,
            "input/sample_lens": torch.tensor([sum(lens) for lens, _ in splits]),
            **masks,
            "input/packed_vit_token_indexes": batch.vit_indexes,
            "input/packed_vae_token_indexes": batch.latent_indexes,
            "input/packed_latent_position_ids": batch.latent_position_ids,
            "input/patchified_vae_latent_shapes": torch.tensor([list(grid)]),
            "input/packed_timesteps_raw": raw.expand(n_lat).clone(),
            "input/mse_loss_indexes": batch.latent_indexes,
            "input/ce_loss_indexes": batch.ce_indexes, "input/packed_label_ids": batch.ce_labels,
            "input/noise": noise,
            "output/ce": result.ce, "output/mse": result.mse,
        }, {"summary": cases["case6_training"], "sequence_length": int(batch.position_ids.numel()),
            "sample_lens": [sum(lens) for lens, _ in splits], "split_lens_and_attn_modes_per_sample": splits,
            "patchified_vae_latent_shapes": [list(grid)], "raw_timestep": float(raw),
            "timestep_shift_from_config": train_timestep_shift, "packed_text_ids": batch.text_ids.tolist(),
            "packed_position_ids": batch.position_ids.tolist(), "ce_mean": float(result.ce.mean()),
            "mse_mean": float(result.mse.mean())})
    return root

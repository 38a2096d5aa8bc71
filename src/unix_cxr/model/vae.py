"""The UniX image autoencoder: CompVis latent-diffusion AutoencoderKL (kl-f16) built on diffusers' `AutoencoderKL`.

* `build_autoencoder(cfg)` builds a diffusers `AutoencoderKL` whose module tree is the CompVis one exactly:
  attention blocks at the levels whose resolution (cfg.resolution / 2**level) is in `attn_resolutions`, single-head
  attention in the middle blocks, zero-pad (0, 1, 0, 1) + stride-2 conv downsampling, nearest x2 + conv upsampling,
  GroupNorm(32, eps 1e-6), swish. Weights map 1:1 through the ldm <-> diffusers key map of `unix_cxr.checkpoint`.
* `LatentVAE` wraps it with UniX's latent normalisation: latent = scale_factor * (z - shift_factor);
  decode undoes it. Images are (B, C, H, W) in [-1, 1].
Weight I/O (safetensors loading, saving, the one-time pickle conversion) is `unix_cxr.checkpoint.vae`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import VAEConfig

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

LOGVAR_RANGE = (-30.0, 20.0)  # ldm DiagonalGaussianDistribution clamps the log-variance to this range


# ---- building -----------------------------------------------------------------------------------------------
def attention_levels(cfg: VAEConfig) -> list[bool]:
    """Per level (0 = full resolution): does the CompVis model put attention blocks there?"""
    return [cfg.resolution // 2**level in cfg.attn_resolutions for level in range(len(cfg.ch_mult))]


def build_autoencoder(cfg: VAEConfig) -> AutoencoderKL:
    """A randomly initialised diffusers AutoencoderKL with the CompVis module layout of `cfg`."""
    cfg.validate()
    if cfg.embed_dim != cfg.z_channels:
        raise ValueError(f"vae embed_dim {cfg.embed_dim} != z_channels {cfg.z_channels}: diffusers' AutoencoderKL "
                         "uses one latent width for quant_conv and the decoder")
    if cfg.ch_mult[0] != 1:
        # CompVis conv_in outputs `ch` channels, diffusers outputs ch * ch_mult[0]; they agree only for 1.
        raise ValueError(f"vae ch_mult must start with 1 (got {tuple(cfg.ch_mult)}) to match the CompVis layout")
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # heavy import (~5 s), only when building

    attn = attention_levels(cfg)
    return AutoencoderKL(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)),
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        layers_per_block=cfg.num_res_blocks,
        act_fn="silu",
        latent_channels=cfg.z_channels,
        norm_num_groups=32,
        sample_size=cfg.resolution,
        scaling_factor=cfg.scale_factor,
        shift_factor=cfg.shift_factor,
        use_quant_conv=True,
        use_post_quant_conv=True,
        mid_block_add_attention=True,
    )


# ---- the wrapper ----------------------------------------------------------------------------------------------
class LatentVAE(nn.Module):
    """Encoder/decoder with UniX's latent normalisation. Images in [-1, 1]; latents = scale * (z - shift)."""

    def __init__(self, cfg: VAEConfig, autoencoder: AutoencoderKL | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.autoencoder = autoencoder if autoencoder is not None else build_autoencoder(cfg)
        self.scale_factor = float(cfg.scale_factor)
        self.shift_factor = float(cfg.shift_factor)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    @property
    def downsample(self) -> int:
        return self.cfg.downsample

    # -- checks
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"VAE input must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"VAE input must be 4-D (B, C, H, W), got {images.ndim}-D shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"VAE input must be a floating-point image in [-1, 1], got dtype {images.dtype}")
        _, c, h, w = images.shape
        if c != self.cfg.in_channels:
            raise ValueError(f"VAE input has {c} channels, expected {self.cfg.in_channels} "
                             f"(shape {tuple(images.shape)}, layout (B, C, H, W))")
        f = self.downsample
        if h % f or w % f:
            raise ValueError(f"VAE input size {h}x{w} is not a multiple of the downsampling factor {f}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"VAE latents must be a torch.Tensor, got {type(latents).__name__}")
        if latents.ndim != 4:
            raise ValueError(f"VAE latents must be 4-D (B, Z, h, w), got {latents.ndim}-D shape "
                             f"{tuple(latents.shape)}")
        if latents.shape[1] != self.cfg.z_channels:
            raise ValueError(f"VAE latents have {latents.shape[1]} channels, expected z_channels "
                             f"{self.cfg.z_channels}")

    # -- encoding
    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """quant_conv(encoder(images)): (B, 2Z, H/f, W/f); channels [:Z] = mean, [Z:] = log-variance (unclamped)."""
        self._check_images(images)
        ae = self.autoencoder
        return ae.quant_conv(ae.encoder(images.to(self.dtype)))

    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               eps: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latent scale * (z - shift); z = posterior mean, or mean + std * eps when `sample`.

        The reference `encode()` samples by default (image-conditioned generation uses that); here the
        deterministic mean is the default. `eps` (same shape as the latent) overrides drawing from `generator`.
        """
        mean, logvar = self.moments(images).chunk(2, dim=1)
        if sample:
            if eps is None:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            elif eps.shape != mean.shape:
                raise ValueError(f"eps has shape {tuple(eps.shape)}, expected the latent shape {tuple(mean.shape)}")
            std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
            z = mean + std * eps.to(device=mean.device, dtype=mean.dtype)
        elif eps is not None:
            raise ValueError("eps is only used with sample=True")
        else:
            z = mean
        return self.scale_factor * (z - self.shift_factor)

    # -- decoding
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Image in about [-1, 1] from normalised latents: decoder(post_quant_conv(latents / scale + shift))."""
        self._check_latents(latents)
        ae = self.autoencoder
        z = latents.to(self.dtype) / self.scale_factor + self.shift_factor
        return ae.decoder(ae.post_quant_conv(z))

    def decode_to_01(self, latents: torch.Tensor) -> torch.Tensor:
        """`decode` mapped to [0, 1] the way the reference displays images."""
        return to_01(self.decode(latents))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(images))


def to_01(images: torch.Tensor) -> torch.Tensor:
    """clamp(x / 2 + 0.5, 0, 1): [-1, 1] images to [0, 1] (reference `denormalize_vae_output`)."""
    return (images / 2 + 0.5).clamp(0, 1)


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """Decoded (B, 3, H, W) images in about [-1, 1] -> (B, H, W, 3) uint8, truncating as the authors do."""
    return (to_01(images).float() * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


__all__ = ["LatentVAE", "attention_levels", "build_autoencoder", "to_01", "to_uint8_hwc"]

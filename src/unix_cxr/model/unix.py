"""The UniX model: MoT decoder + SigLIP vision encoder + generation-side embeddings and heads (spec 1.1).

The model only computes: embeddings in, hidden states out, and the two heads. Noise, timesteps, losses,
sampling and guidance live in `unix_cxr.engines`. The VAE is a separate object (`model.vae.LatentVAE`).

`with_generation=False` builds a report-only model: no generation experts, no generation final norm and no
generation embeddings/heads are ever allocated (about 1.2 B fewer parameters at full size).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import UniXConfig
from .decoder import MoTDecoder
from .embeddings import PositionTable, TimestepEmbedder, sincos_2d_table
from .vision import VisionEncoder


class UniX(nn.Module):
    def __init__(self, cfg: UniXConfig, with_generation: bool = True):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.with_generation = with_generation
        d = cfg.decoder.hidden_size
        self.decoder = MoTDecoder(cfg.decoder, with_generation=with_generation)
        self.lm_head = nn.Linear(d, cfg.decoder.vocab_size, bias=False)
        if cfg.decoder.tie_word_embeddings:
            self.lm_head.weight = self.decoder.embed_tokens.weight
        self.vision = VisionEncoder(cfg.vision, d)
        # built and saved by the authors, used by no forward path (SigLIP has its own learned positions)
        self.vit_pos_embed = PositionTable(cfg.vit_max_num_patch_per_side, d)
        if with_generation:
            self.time_embedder = TimestepEmbedder(d)
            self.vae2llm = nn.Linear(cfg.vae.z_channels, d)
            self.llm2vae = nn.Linear(d, cfg.vae.z_channels)
            self.latent_pos_embed = PositionTable(cfg.max_latent_size, d)
            nn.init.zeros_(self.llm2vae.weight)
            nn.init.zeros_(self.llm2vae.bias)

    @torch.no_grad()
    def reset_fixed_tables(self) -> None:
        """Refill what no checkpoint carries or trains: the sin-cos tables and SigLIP's position-id buffer.

        Needed after building on the meta device and `to_empty` (fast loading of large models).
        """
        d = self.cfg.decoder.hidden_size
        self.vit_pos_embed.pos_embed.copy_(sincos_2d_table(self.cfg.vit_max_num_patch_per_side, d))
        if self.with_generation:
            self.latent_pos_embed.pos_embed.copy_(sincos_2d_table(self.cfg.max_latent_size, d))
        ids = self.vision.tower.embeddings.position_ids
        ids.copy_(torch.arange(ids.shape[-1], device=ids.device).expand_as(ids))

    # ---- embeddings ---------------------------------------------------------------------------------------
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids)

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, num_patches, D) vision tokens."""
        return self.vision(pixel_values.to(self.lm_head.weight.dtype))

    def embed_latents(self, x_t: torch.Tensor, t: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Noisy latent tokens (N, C), their timesteps (N,) and latent table rows (N,) -> (N, D)."""
        self._require_generation()
        x_t = x_t.to(self.vae2llm.weight.dtype)
        return self.vae2llm(x_t) + self.time_embedder(t) + self.latent_pos_embed(position_ids)

    # ---- heads --------------------------------------------------------------------------------------------
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        self._require_generation()
        return self.llm2vae(hidden)

    def _require_generation(self) -> None:
        if not self.with_generation:
            raise ValueError("this UniX was built report-only (with_generation=False): it cannot generate images")

"""The UniX model: MoT decoder + SigLIP vision encoder + generation-side embeddings and heads (spec 1.1).

The model only computes. `UniX.forward(PackedInputs)` runs one packed training sequence: it embeds the text,
ViT and (already noised) latent rows, runs the decoder once (the packed mask made once) and applies the two heads
to the rows the caller names; so data-parallel wrappers that hook the root's forward (FSDP2's `fully_shard`) see
every parameter used. Noise, x_t, targets and losses live in `unix_cxr.train.objectives`; sampling and guidance in
`unix_cxr.infer`, which call the embedding and head methods below with a KV cache. The VAE is a separate object
(`model.vae.LatentVAE`).

`with_generation=False` builds a report-only model: no generation experts, no generation final norm and no
generation embeddings/heads are ever allocated (about 1.2 B fewer parameters at full size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import UniXConfig
from .decoder import MoTDecoder
from .embeddings import PositionTable, TimestepEmbedder, sincos_2d_table
from .linear import Linear
from .masks import PackedLayout
from .vision import VisionEncoder


@dataclass
class PackedInputs:
    """One packed sequence of N rows, as `UniX.forward` takes it (built by `unix_cxr.data.packing` + the objective).

    Rows are filled from three sources; every row is exactly one of them:
      text_ids (Nt,) at text_indexes (Nt,): text and image-marker tokens (understanding expert);
      vit_pixel_values (I, 3, S, S) at vit_indexes (I * patches,): SigLIP tokens, image by image;
      latent_x_t (M, C) at latent_indexes (M,) with latent_timesteps (M,) and latent_position_ids (M,): VAE latent
        tokens (generation expert), noised by the caller (t = 0 for clean conditioning images).
    logit_rows / velocity_rows: the rows whose hidden state goes through lm_head / llm2vae.
    """

    layout: PackedLayout
    position_ids: torch.Tensor
    text_ids: torch.Tensor
    text_indexes: torch.Tensor
    vit_pixel_values: torch.Tensor | None
    vit_indexes: torch.Tensor
    latent_x_t: torch.Tensor
    latent_timesteps: torch.Tensor
    latent_indexes: torch.Tensor
    latent_position_ids: torch.Tensor
    logit_rows: torch.Tensor
    velocity_rows: torch.Tensor


@dataclass
class UniXOutput:
    hidden: torch.Tensor  # (N, D) final (per-expert normed) hidden states
    logits: torch.Tensor  # (len(logit_rows), V)
    velocity: torch.Tensor  # (len(velocity_rows), C)
    hidden_states: list[torch.Tensor] | None = None  # (N, D) residual stream after each layer, if asked


class UniX(nn.Module):
    def __init__(self, cfg: UniXConfig, with_generation: bool = True):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.with_generation = with_generation
        d = cfg.decoder.hidden_size
        self.decoder = MoTDecoder(cfg.decoder, with_generation=with_generation)
        self.lm_head = Linear(d, cfg.decoder.vocab_size, bias=False)
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

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the decoder's final norm (the embeddings may be held in int8)."""
        return self.decoder.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.norm.weight.device

    @torch.no_grad()
    def reset_fixed_tables(self) -> None:
        """Refill what no checkpoint carries or trains: the sin-cos tables and SigLIP's position-id buffer.

        Needed after building on the meta device and `to_empty` (fast loading of large models).
        """
        d = self.cfg.decoder.hidden_size
        self.vit_pos_embed.pos_embed.copy_(sincos_2d_table(self.cfg.vit_max_num_patch_per_side, d))
        if self.with_generation:
            self.latent_pos_embed.pos_embed.copy_(sincos_2d_table(self.cfg.max_latent_size, d))
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Refill the buffers that no state dict carries (SigLIP's position ids), e.g. after `to_empty`."""
        ids = self.vision.tower.embeddings.position_ids
        ids.copy_(torch.arange(ids.shape[-1], device=ids.device).expand_as(ids))

    # ---- the packed forward ------------------------------------------------------------------------------
    def forward(self, inputs: PackedInputs, keep_hidden_states: bool = False) -> UniXOutput:
        device, dtype = self.device, self.dtype
        n, dim = inputs.position_ids.numel(), self.cfg.decoder.hidden_size
        seq = torch.zeros(n, dim, device=device, dtype=dtype)
        seq = seq.index_copy(0, inputs.text_indexes.to(device), self.embed_text(inputs.text_ids.to(device)))
        if inputs.vit_pixel_values is not None:
            vis = self.embed_images(inputs.vit_pixel_values.to(device))
            seq = seq.index_copy(0, inputs.vit_indexes.to(device), vis.reshape(-1, dim))
        gen_mask = torch.zeros(n, dtype=torch.bool, device=device)
        if inputs.latent_indexes.numel():
            rows = inputs.latent_indexes.to(device)
            emb = self.embed_latents(inputs.latent_x_t.to(device), inputs.latent_timesteps.to(device),
                                     inputs.latent_position_ids.to(device))
            seq = seq.index_copy(0, rows, emb.to(dtype))
            gen_mask[rows] = True
        hidden_states = [] if keep_hidden_states else None
        hidden = self.decoder(seq[None], inputs.position_ids.to(device)[None], gen_mask[None], inputs.layout,
                              hidden_states)[0]
        logits = self.logits(hidden.index_select(0, inputs.logit_rows.to(device)))  # see Route.map
        velocity_rows = inputs.velocity_rows.to(device)
        velocity = self.velocity(hidden.index_select(0, velocity_rows)) if velocity_rows.numel() else \
            hidden.new_zeros(0, self.cfg.vae.z_channels)
        return UniXOutput(hidden, logits, velocity, [h[0] for h in hidden_states] if keep_hidden_states else None)

    # ---- embeddings ---------------------------------------------------------------------------------------
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids)

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, num_patches, D) vision tokens."""
        return self.vision(pixel_values.to(self.dtype))

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

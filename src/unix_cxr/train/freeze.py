"""Which parameters a stage trains (spec 5.1, 5.4). Frozen parameters get requires_grad=False and stay out of the
optimizer, so they are bit-identical after the stage.

  und   (stage 1) SigLIP tower, connector, token embeddings, every understanding expert, the final norm, lm_head;
  gen   (stages 2-3) every generation expert, the generation final norm, time_embedder, vae2llm, llm2vae
        (the released rule: language-model names containing `moe_gen`, plus the generation-side modules);
  both  the union (the paper's Table 5 joint-training ablation).
The fixed sin-cos tables and SigLIP's unused pooling head are never trained; the VAE is a separate module and
never trained by UniX.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)

# never trained: the fixed sin-cos tables and SigLIP's attention-pool head (kept for the checkpoint, used by no
# forward path, so it would never receive a gradient)
FIXED = ("vit_pos_embed.", "latent_pos_embed.", "vision.tower.head.")
GEN_MODULES = ("time_embedder.", "vae2llm.", "llm2vae.", "decoder.norm_gen.")


def is_generation_parameter(name: str) -> bool:
    return ".gen." in f".{name}" or name.startswith(GEN_MODULES)


def trainable(name: str, experts: str) -> bool:
    """Does a stage that trains `experts` ("und", "gen" or "both") train the parameter `name` of UniX?"""
    if name.startswith(FIXED):
        return False
    if experts == "both":
        return True
    gen = is_generation_parameter(name)
    return gen if experts == "gen" else not gen


def apply_freeze(model: nn.Module, experts: str) -> list[nn.Parameter]:
    """Set requires_grad per `trainable` and return the trained parameters (in module order)."""
    params, frozen = [], 0
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name, experts))
        if p.requires_grad:
            params.append(p)
        else:
            frozen += p.numel()
    trained = sum(p.numel() for p in params)
    log.info("training the %s side: %s parameters trained, %s frozen", experts, f"{trained:,}", f"{frozen:,}")
    return params

"""UniX vision side: SigLIP ViT tower (Janus timm copy, built as transformers' SiglipVisionModel) + MLP connector.

Spec 1.3 / 1.4. pixel (B, 3, S, S), normalised with the CXR statistics -> Conv patch embedding (bias) ->
+ learned position table (no class token) -> pre-LN blocks (exact-erf GELU MLP) -> final LayerNorm ->
all S/P x S/P patch tokens -> connector fc2(act(fc1(x))) -> (B, N, llm_hidden).

The tower is `transformers.SiglipVisionModel` with `vision_use_head=True` only so that the checkpoint's
unused timm `attn_pool` tensors have a home (`tower.head`, see `unix_cxr.checkpoint.vision_keys`); our
forward runs embeddings -> encoder -> post_layernorm and never calls the head. Attention uses "sdpa"
(no mask, exact softmax; float32 parity with the authors' timm ViT is ~1e-7).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from unix_cxr.config import VisionConfig

log = logging.getLogger(__name__)

__all__ = ["Connector", "VisionEncoder", "normalize_grey", "normalize_pixels", "siglip_config"]

_CONNECTOR_ACTS = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}  # connector_act -> nn.GELU(approximate=...)


def siglip_config(cfg: VisionConfig, attn_implementation: str = "sdpa") -> SiglipVisionConfig:
    """The transformers config of our tower; the head is kept (vision_use_head) for the unused attn_pool."""
    return SiglipVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_channels=3,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act=cfg.hidden_act,  # "gelu" = exact erf GELU in transformers' ACT2FN, as timm nn.GELU
        layer_norm_eps=cfg.layer_norm_eps,
        attention_dropout=0.0,
        vision_use_head=True,
        attn_implementation=attn_implementation,
    )


class Connector(nn.Module):
    """Two-layer MLP vision -> LLM: fc2(act(fc1(x))); checkpoint keys `connector.layers.0/2` (Janus naming)."""

    def __init__(self, in_features: int, out_features: int, act: str = "gelu_pytorch_tanh") -> None:
        super().__init__()
        if act not in _CONNECTOR_ACTS:
            raise ValueError(f"connector activation must be one of {sorted(_CONNECTOR_ACTS)}, got {act!r}")
        self.fc1 = nn.Linear(in_features, out_features)
        self.act = nn.GELU(approximate=_CONNECTOR_ACTS[act])
        self.fc2 = nn.Linear(out_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionEncoder(nn.Module):
    """SigLIP tower + connector; `forward` gives the vision tokens that go into the LLM's image block."""

    def __init__(self, cfg: VisionConfig, llm_hidden_size: int, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        cfg.validate()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"vision hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        self.tower = SiglipVisionModel(siglip_config(cfg, attn_implementation))
        self.connector = Connector(cfg.hidden_size, llm_hidden_size, cfg.connector_act)

    @property
    def num_patches(self) -> int:
        return self.cfg.num_patches

    def check_pixels(self, pixel_values: torch.Tensor) -> None:
        """Raise ValueError unless `pixel_values` is a float (B, 3, S, S) batch with S = image_size."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"vision tower expects a torch.Tensor, got {type(pixel_values).__name__}")
        size = self.cfg.image_size
        if pixel_values.dim() != 4:
            raise ValueError(f"vision tower expects a 4-D (batch, 3, {size}, {size}) tensor, "
                             f"got shape {tuple(pixel_values.shape)}")
        _, c, h, w = pixel_values.shape
        if (c, h, w) != (3, size, size):
            raise ValueError(f"vision tower expects 3x{size}x{size} images, got {c}x{h}x{w}")
        if not pixel_values.is_floating_point():
            raise ValueError("vision tower expects float pixel values (see normalize_pixels), "
                             f"got {pixel_values.dtype}")

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, N, vision hidden): all patch tokens after the final LayerNorm."""
        self.check_pixels(pixel_values)
        tower = self.tower
        hidden = tower.embeddings(pixel_values)  # patch conv + position table
        hidden = tower.encoder(inputs_embeds=hidden).last_hidden_state
        return tower.post_layernorm(hidden)  # tower.head (attn_pool) is deliberately not called

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, num_patches, llm_hidden_size) vision tokens."""
        feats = self.features(pixel_values)
        return self.connector(feats.to(self.connector.fc1.weight.dtype))


def normalize_pixels(images: torch.Tensor | np.ndarray, cfg: VisionConfig | None = None) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images, (H, W, 3) / (3, H, W) / (B, H, W, 3) / (B, 3, H, W) ->
    float32 (B, 3, H, W) = (x - pixel_mean) / pixel_std, as the authors' SigLIPImageTransform
    (ToTensor then Normalize). No resizing: that belongs to image I/O.
    """
    cfg = cfg or VisionConfig()
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"normalize_pixels expects (B,) H, W, 3 or (B,) 3, H, W images, got shape {tuple(x.shape)}")
    first, last = x.shape[1] == 3, x.shape[-1] == 3
    if first and last:
        raise ValueError(f"normalize_pixels: ambiguous channel layout for shape {tuple(x.shape)}")
    if last:
        x = x.permute(0, 3, 1, 2)
    elif not first:
        raise ValueError(f"normalize_pixels expects 3 channels (first or last), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).div(255)
    elif x.is_floating_point():
        x = x.to(torch.float32)
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"normalize_pixels: float images must lie in [0, 1], "
                             f"got range [{x.min().item():.4g}, {x.max().item():.4g}]")
    else:
        raise ValueError(f"normalize_pixels expects uint8 or float images, got {x.dtype}")
    return _standardize(x, cfg).contiguous()


def normalize_grey(grey: torch.Tensor | np.ndarray, cfg: VisionConfig | None = None) -> torch.Tensor:
    """uint8 grey images (H, W) / (B, H, W) -> float32 (B, 3, H, W), equal bit for bit to `normalize_pixels` of
    the grey repeated into three channels, computed on one channel and then copied into the other two (the
    phantom recipe's vision stage spent a sixth of its step normalising three identical channels)."""
    cfg = cfg or VisionConfig()
    x = torch.from_numpy(np.array(grey)) if isinstance(grey, np.ndarray) else grey  # a copy: PIL's are read-only
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.dtype != torch.uint8:
        raise ValueError(f"normalize_grey expects uint8 (B,) H, W images, got {x.dtype} of shape {tuple(x.shape)}")
    return _standardize(x[:, None].to(torch.float32).div(255), cfg).expand(-1, 3, -1, -1).contiguous()


def _standardize(x: torch.Tensor, cfg: VisionConfig) -> torch.Tensor:
    """(x - pixel_mean) / pixel_std of float [0, 1] pixels (one mean and std for every channel)."""
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32)
    return (x - mean) / std

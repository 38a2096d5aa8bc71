"""REPA for stage 2 (spec 3.2, 5.4): align the generation branch's hidden states with a frozen image encoder.

For every noised latent image of a micro-batch, the residual stream after LLM layer `layer` (1-based: the paper's
"eighth layer" is `layer: 8`, the output of decoder layer index 7; the released code passes 8 to a 0-based index,
i.e. `layer: 9` here) at its latent rows goes through the projector (Linear-SiLU-Linear-SiLU-Linear to the
encoder width), is L2-normalised and laid out on its 2-D latent grid; the grid is resized bilinearly to the
encoder's patch grid when they differ (16x16 latents at 256 px and RadDINO at 224 px already agree, spec 5.4);
the loss of the image is the mean negative cosine similarity with the normalised encoder features of the same
image. The trainer sums it over images and divides by the number of REPA images of the accumulation window over
all ranks, like the other terms.

Encoders sit behind one interface (`FeatureEncoder`): RadDINO from a local Hugging Face folder (its processor
settings: mean 0.5307, std 0.2583 on 3 channels, 14 px patches), or a small fixed patch encoder (`patch`) for
tests and offline runs. Inputs are images in [0, 1] (the released path converted [-1, 1] tensors with
`(x * 255).astype(uint8)`, wrapping negative values: `inputs: released-wrap` reproduces it for ablations).
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class FeatureEncoder(Protocol):
    dim: int
    image_size: int
    grid: tuple[int, int]

    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) grey images in [0, 1] -> (B, grid_h * grid_w, dim) patch features, raster order."""
        ...


class RadDinoEncoder:
    """microsoft/rad-dino (a Dinov2 ViT-B/14) from a local folder; patch tokens of `last_hidden_state`."""

    MEAN, STD = 0.5307, 0.2583

    def __init__(self, folder: str, image_size: int = 224, device: torch.device | str = "cpu") -> None:
        from transformers import AutoModel

        if image_size % 14:
            raise ValueError(f"RadDINO image_size must be a multiple of its 14 px patches, got {image_size}")
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.image_size = image_size
        self.grid = (image_size // 14, image_size // 14)

    @torch.no_grad()
    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        x = ((images01 - self.MEAN) / self.STD).expand(-1, 3, -1, -1)
        out = self.model(pixel_values=x.to(next(self.model.parameters()).dtype)).last_hidden_state
        return out[:, 1:].float()  # drop CLS


class PatchEncoder(nn.Module):
    """A fixed random patch embedding (frozen): an offline stand-in with the encoder interface, for tests."""

    def __init__(self, dim: int = 32, patch: int = 8, image_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.proj = nn.Conv2d(1, dim, patch, stride=patch)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=gen) / patch)
            self.proj.bias.zero_()
        self.requires_grad_(False)
        self.dim, self.image_size = dim, image_size
        self.grid = (image_size // patch, image_size // patch)

    @torch.no_grad()
    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(images01)).flatten(2).transpose(1, 2)


def build_encoder(kind: str, path: str | None, image_size: int, device: torch.device) -> FeatureEncoder:
    if kind == "raddino":
        if not path:
            raise ValueError("repa.encoder raddino needs repa.path: a local folder with the RadDINO weights")
        return RadDinoEncoder(path, image_size, device)
    if kind == "patch":
        return PatchEncoder(image_size=image_size).to(device)
    raise ValueError(f"unknown repa.encoder {kind!r}; choose raddino or patch")


class Projector(nn.Module):
    """REPA's projector (spec 3.2): Linear(D, P) - SiLU - Linear(P, P) - SiLU - Linear(P, E), per token."""

    def __init__(self, hidden: int, width: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def encoder_inputs(images: list[np.ndarray], inputs: str) -> torch.Tensor:
    """uint8 (S, S) grey images -> (B, 1, S, S) in [0, 1]; `released-wrap`: the released path's uint8 wrap of the
    VAE-normalised [-1, 1] image, for ablations."""
    x = torch.from_numpy(np.stack(images)).float()[:, None] / 255.0
    if inputs == "released-wrap":
        wrapped = ((x * 2 - 1) * 255).to(torch.int64) % 256  # numpy's astype(uint8) on negative values
        return wrapped.float() / 255.0
    if inputs != "unit":
        raise ValueError(f"repa.inputs must be 'unit' or 'released-wrap', got {inputs!r}")
    return x


def latent_grids(batch, max_latent_size: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """(rows, (h, w)) of every noised latent image of a packed batch, rows in raster order."""
    out = []
    for image in range(batch.num_latent_images):
        sel = (batch.latent_image_ids == image).nonzero().squeeze(1)
        if not bool(batch.latent_noised[sel[0]]):
            continue
        pos = batch.latent_position_ids[sel]
        h, w = int(pos.max()) // max_latent_size + 1, int(pos.max()) % max_latent_size + 1
        out.append((batch.latent_indexes[sel], (h, w)))
    return out


def repa_loss_sum(hidden: torch.Tensor, grids: list[tuple[torch.Tensor, tuple[int, int]]],
                  targets: torch.Tensor, target_grid: tuple[int, int], projector: nn.Module) -> torch.Tensor:
    """Sum over images of the mean negative cosine between projected hidden states and encoder features.

    hidden: (N, D) residual stream at the chosen layer; targets: (images, gh * gw, E), one per grid entry.
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    for (rows, (h, w)), target in zip(grids, targets, strict=True):
        z = F.normalize(projector(hidden[rows]).float(), dim=-1)  # (h*w, E)
        if (h, w) != target_grid:
            z = F.interpolate(z.T.reshape(1, -1, h, w), size=target_grid, mode="bilinear", align_corners=False)
            z = F.normalize(z.reshape(z.shape[1], -1).T, dim=-1)
        total = total - (z * F.normalize(target.to(z.device), dim=-1)).sum(-1).mean()
    return total


class RepaTerm:
    """The REPA term of one stage: the frozen encoder, the trained projector, the layer, and how a micro-batch's
    images are found (through the loader's sources) and scored."""

    def __init__(self, settings, cfg, encoder: FeatureEncoder, projector: nn.Module) -> None:
        if not 1 <= settings.layer <= cfg.decoder.num_layers:
            raise ValueError(f"repa.layer {settings.layer} outside 1..{cfg.decoder.num_layers} (the model's layers)")
        self.settings, self.cfg, self.encoder, self.projector = settings, cfg, encoder, projector

    @classmethod
    def build(cls, settings, cfg, d) -> RepaTerm:
        """Encoder and projector (created before the optimizer, so the projector is trained from step 1)."""
        encoder = build_encoder(settings.encoder, settings.path, settings.image_size, d.device)
        projector = Projector(cfg.decoder.hidden_size, settings.projector_dim, encoder.dim).to(d.device)
        if d.world_size > 1:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            fully_shard(projector, mesh=init_device_mesh(d.device.type, (d.world_size,)))
        log.info("REPA: %s encoder (%d-d, %dx%d patches), LLM layer %d, weight %g, inputs %s", settings.encoder,
                 encoder.dim, *encoder.grid, settings.layer, settings.weight, settings.inputs)
        return cls(settings, cfg, encoder, projector)

    @staticmethod
    def count(window) -> int:
        """Noised latent images of a window (the REPA images)."""
        return sum(len(latent_grids(b.batch, 1 << 30)) for b in window)

    def _images(self, micro, loader, grids) -> list[np.ndarray]:
        from ..data.transforms import vae_image

        images = []
        for rows, _ in grids:
            key = micro.samples[int(micro.batch.layout.sample_id[rows[0]])].key
            record = loader.source(key.source).records[key.index]
            if record.image is None:
                raise ValueError(f"REPA needs the image of record {record.id!r} (source {key.source!r} has none)")
            images.append(np.asarray(vae_image(record.image, self.settings.image_size, None,
                                               pad=self.settings.pad)))
        return images

    def loss_sum(self, hidden_states: list[torch.Tensor], micro, loader) -> torch.Tensor:
        grids = latent_grids(micro.batch, self.cfg.max_latent_size)
        if not grids:
            return hidden_states[0].new_zeros((), dtype=torch.float32)
        pixels = encoder_inputs(self._images(micro, loader, grids), self.settings.inputs)
        with torch.no_grad():
            targets = self.encoder(pixels.to(hidden_states[0].device))
        hidden = hidden_states[self.settings.layer - 1]
        return repa_loss_sum(hidden, [(r.to(hidden.device), g) for r, g in grids], targets, self.encoder.grid,
                             self.projector)

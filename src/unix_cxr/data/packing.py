"""Packing samples into one training sequence (spec 2.4 a, b). Pure: tensors in, a PackedBatch out.

A sample is a list of segments, in order:
  Text(ids, loss)          [BOS] ids [EOS], causal; loss=True predicts ids and the final EOS (CE);
  VitImage(pixel_values)   [BOI] vision tokens [EOI], full attention, one RoPE position;
  Latent(latent, noised)   [BOI] h*w latent tokens [EOI]; noised=True is the MSE target (mode "noise"),
                           otherwise a clean conditioning image (mode "full", timestep 0).
Markers and text are understanding tokens; latent tokens are generation tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import UniXConfig
from ..model.embeddings import latent_position_ids
from ..model.masks import PackedLayout, split_position_ids


@dataclass(frozen=True)
class Text:
    ids: list[int]
    loss: bool = False


@dataclass(frozen=True)
class VitImage:
    pixel_values: torch.Tensor  # (3, S, S), normalised


@dataclass(frozen=True)
class Latent:
    latent: torch.Tensor  # (C, h, w), normalised VAE latent (clean)
    noised: bool = True


Segment = Text | VitImage | Latent


# ---- rows a segment takes, markers included (the one place this arithmetic is written) --------------------------
def text_rows(num_ids: int) -> int:
    """[BOS] ids [EOS]."""
    return num_ids + 2


def image_rows(num_tokens: int) -> int:
    """[BOI] vision or latent tokens [EOI]."""
    return num_tokens + 2


def segment_num_tokens(segment: Segment, cfg: UniXConfig) -> int:
    """Rows the segment takes in a packed sequence."""
    if isinstance(segment, Text):
        return text_rows(len(segment.ids))
    if isinstance(segment, VitImage):
        return image_rows(cfg.vision.num_patches)
    if isinstance(segment, Latent):
        return image_rows(segment.latent.shape[1] * segment.latent.shape[2])
    raise ValueError(f"unknown segment type {type(segment).__name__}")


@dataclass
class PackedBatch:
    layout: PackedLayout
    position_ids: torch.Tensor  # (N,)
    text_ids: torch.Tensor  # (Nt,) ids of the text and marker rows
    text_indexes: torch.Tensor  # (Nt,) their rows
    vit_pixel_values: torch.Tensor | None  # (I, 3, S, S)
    vit_indexes: torch.Tensor  # (I * patches,) rows of the vision tokens, image by image
    latent_tokens: torch.Tensor  # (M, C) clean latents, row-major per image
    latent_indexes: torch.Tensor  # (M,) rows of the latent tokens
    latent_position_ids: torch.Tensor  # (M,) rows of the latent position table
    latent_noised: torch.Tensor  # (M,) bool: carries the MSE loss
    latent_image_ids: torch.Tensor  # (M,) which latent image a token belongs to (one timestep per image)
    ce_indexes: torch.Tensor  # rows whose next token is predicted
    ce_labels: torch.Tensor

    @property
    def num_latent_images(self) -> int:
        return int(self.latent_image_ids.max()) + 1 if self.latent_image_ids.numel() else 0


def pack(samples: list[list[Segment]], cfg: UniXConfig) -> PackedBatch:
    tok = cfg.tokens
    splits: list[tuple[list[int], list[str]]] = []
    positions: list[int] = []
    text_ids, text_idx, vit_idx, vit_px = [], [], [], []
    lat_tok, lat_idx, lat_pos, lat_noised, lat_img = [], [], [], [], []
    ce_idx, ce_lab = [], []
    row = 0
    num_patches = cfg.vision.num_patches

    for sample in samples:
        lens, modes = [], []
        for seg in sample:
            if isinstance(seg, Text):
                ids = [tok.bos, *seg.ids, tok.eos]
                text_ids += ids
                text_idx += range(row, row + len(ids))
                if seg.loss:
                    ce_idx += range(row, row + len(ids) - 1)
                    ce_lab += ids[1:]
                lens.append(text_rows(len(seg.ids)))
                modes.append("causal")
            elif isinstance(seg, VitImage):
                text_ids += [tok.start_of_image, tok.end_of_image]
                text_idx += [row, row + num_patches + 1]
                vit_idx += range(row + 1, row + 1 + num_patches)
                vit_px.append(seg.pixel_values)
                lens.append(image_rows(num_patches))
                modes.append("full")
            elif isinstance(seg, Latent):
                c, h, w = seg.latent.shape
                n = h * w
                text_ids += [tok.start_of_image, tok.end_of_image]
                text_idx += [row, row + n + 1]
                lat_tok.append(seg.latent.permute(1, 2, 0).reshape(n, c))
                lat_idx += range(row + 1, row + 1 + n)
                lat_pos.append(latent_position_ids(h, w, cfg.max_latent_size))
                lat_noised += [seg.noised] * n
                lat_img += [len(lat_tok) - 1] * n
                lens.append(image_rows(n))
                modes.append("noise" if seg.noised else "full")
            else:
                raise ValueError(f"unknown segment type {type(seg).__name__}")
            row += lens[-1]
        if sum(lens) > cfg.decoder.max_position_embeddings:  # positions restart in every sample
            raise ValueError(f"sample {len(splits)} has {sum(lens)} tokens, more than max_position_embeddings "
                             f"{cfg.decoder.max_position_embeddings}")
        splits.append((lens, modes))
        positions += split_position_ids(lens, modes)
    long = lambda xs: torch.tensor(list(xs), dtype=torch.long)
    return PackedBatch(
        layout=PackedLayout.from_splits(splits),
        position_ids=long(positions),
        text_ids=long(text_ids),
        text_indexes=long(text_idx),
        vit_pixel_values=torch.stack(vit_px) if vit_px else None,
        vit_indexes=long(vit_idx),
        latent_tokens=torch.cat(lat_tok) if lat_tok else torch.zeros(0, cfg.vae.z_channels),
        latent_indexes=long(lat_idx),
        latent_position_ids=torch.cat(lat_pos) if lat_pos else long([]),
        latent_noised=torch.tensor(lat_noised, dtype=torch.bool),
        latent_image_ids=long(lat_img),
        ce_indexes=long(ce_idx),
        ce_labels=long(ce_lab),
    )

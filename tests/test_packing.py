"""The rows a segment takes are written once (data.packing) and agree with what `pack` lays out."""

import pytest
import torch

from unix_cxr.config import load_config
from unix_cxr.data.packing import Latent, Text, VitImage, pack, segment_num_tokens


def test_segment_rows_agree_with_the_packed_layout():
    cfg = load_config("tiny")
    sample = [VitImage(torch.zeros(3, 32, 32)), Text([5, 6, 7], loss=True), Latent(torch.zeros(16, 2, 3))]
    rows = [segment_num_tokens(s, cfg) for s in sample]
    assert rows == [cfg.vision.num_patches + 2, 5, 8]
    assert pack([sample], cfg).position_ids.numel() == sum(rows)
    with pytest.raises(ValueError, match="unknown segment type str"):
        segment_num_tokens("text", cfg)

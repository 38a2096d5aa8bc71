"""Masks and positions against small hand-drawn matrices (spec 2.2, 2.3). Run: pytest tests/test_masks.py"""

import pytest
import torch

from unix_cxr.model.masks import PackedLayout, cache_attention_mask, split_position_ids


def grid(rows: str) -> torch.Tensor:
    """'1' = may attend. One string per query row."""
    return torch.tensor([[c == "1" for c in r.split()] for r in rows.strip().splitlines()])


def test_causal_then_full_image():
    # text (3, causal) then a ViT image (2, full)
    mask = PackedLayout.from_splits([([3, 2], ["causal", "full"])]).dense()
    assert torch.equal(mask, grid("""
        1 0 0 0 0
        1 1 0 0 0
        1 1 1 0 0
        1 1 1 1 1
        1 1 1 1 1
    """))


def test_noise_split_is_invisible_from_outside():
    # caption (2, causal), noised latents (3), then text after them (2, causal): the text may not see the noise
    mask = PackedLayout.from_splits([([2, 3, 2], ["causal", "noise", "causal"])]).dense()
    assert torch.equal(mask, grid("""
        1 0 0 0 0 0 0
        1 1 0 0 0 0 0
        1 1 1 1 1 0 0
        1 1 1 1 1 0 0
        1 1 1 1 1 0 0
        1 1 0 0 0 1 0
        1 1 0 0 0 1 1
    """))


def test_packed_samples_are_isolated():
    mask = PackedLayout.from_splits([([2], ["causal"]), ([1, 2], ["causal", "full"])]).dense()
    assert torch.equal(mask, grid("""
        1 0 0 0 0
        1 1 0 0 0
        0 0 1 0 0
        0 0 1 1 1
        0 0 1 1 1
    """))


def test_every_row_sees_itself():
    layout = PackedLayout.from_splits([([4, 3, 5], ["full", "causal", "noise"]), ([2, 6], ["causal", "noise"])])
    assert bool(layout.dense().diagonal().all())


def test_positions_share_one_id_per_image_and_noise_does_not_advance():
    # und sample: image (4) at 0, prompt (3) at 1..3, answer (2) at 4..5
    assert split_position_ids([4, 3, 2], ["full", "causal", "causal"]) == [0] * 4 + [1, 2, 3, 4, 5]
    # t2i sample: caption (3) at 0..2, noised image (5) all at 3
    assert split_position_ids([3, 5], ["causal", "noise"]) == [0, 1, 2] + [3] * 5
    # caption dropped for CFG: the image gets position 0
    assert split_position_ids([5], ["noise"]) == [0] * 5


def test_bad_split_mode_and_lengths():
    with pytest.raises(ValueError, match="unknown split mode 'diagonal'"):
        PackedLayout.from_splits([([2], ["diagonal"])])
    with pytest.raises(ValueError, match="split lengths must be positive"):
        PackedLayout.from_splits([([0], ["causal"])])
    with pytest.raises(ValueError, match="2 split lengths but 1 modes"):
        PackedLayout.from_splits([([1, 2], ["causal"])])


def test_cache_mask_appended_causal_is_bottom_right_aligned():
    # row 0 has 2 cached keys, row 1 has 1; a 2-token causal block is appended after each row's prefix
    mask = cache_attention_mask(torch.tensor([2, 1]), query_len=2, causal=True, key_len=4, appended=True)
    assert mask.shape == (2, 1, 2, 4)
    assert torch.equal(mask[0, 0], grid("""
        1 1 1 0
        1 1 1 1
    """))
    assert torch.equal(mask[1, 0], grid("""
        1 1 0 0
        1 1 1 0
    """))


def test_cache_mask_read_only_full_block():
    # denoising: keys = [cache padded to 3 ; block of 2]; row 1 is unconditional (no context)
    mask = cache_attention_mask(torch.tensor([3, 0]), query_len=2, causal=False, key_len=5, appended=False)
    assert torch.equal(mask[0, 0], grid("""
        1 1 1 1 1
        1 1 1 1 1
    """))
    assert torch.equal(mask[1, 0], grid("""
        0 0 0 1 1
        0 0 0 1 1
    """))

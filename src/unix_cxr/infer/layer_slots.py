"""Which layers of a UniX the inference-time weight forms replace (`infer.upcast`, `infer.packed`): the plain
linear layers of the decoder layers (both experts) and of SigLIP's encoder layers, and `lm_head`, which may share
its weight with the token embeddings."""

from __future__ import annotations

from torch import nn

from ..model.linear import Linear

PLAIN_LINEARS = (nn.Linear, Linear)  # exactly these classes (quantized, upcast and packed layers are not)


def linear_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute name) of every plain linear layer in the decoder layers and SigLIP's encoder layers, in
    module order; a list, so that the caller may replace them as it goes."""
    scopes = [*model.decoder.layers, *model.vision.tower.encoder.layers]
    return [(parent, name) for scope in scopes for parent in scope.modules()
            for name, child in parent.named_children() if type(child) in PLAIN_LINEARS]


def lm_head_tied(model: nn.Module) -> bool:
    """Whether `lm_head` holds the token embeddings' table itself (also on the meta device)."""
    return getattr(model.lm_head, "weight", None) is getattr(model.decoder.embed_tokens, "weight", False)


__all__ = ["PLAIN_LINEARS", "linear_slots", "lm_head_tied"]

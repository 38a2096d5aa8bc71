"""A byte-level BPE tokenizer trained on a corpus with the `tokenizers` library, saved as a transformers folder.

    tok = train_bpe_tokenizer(reports + prompts, vocab_size=1024, special_tokens=SpecialTokens(0, 1, 2, 3))
    tok.save_pretrained(folder)          # tokenizer.json + tokenizer_config.json: what `load_tokenizer` reads

Byte-level pre-tokenisation (GPT-2 style, no prefix space) and the byte-level decoder make `decode(encode(text))`
give back any text exactly, also words the corpus never had. The four structural tokens of the model config
(BOS, EOS, begin / end of image) take the ids the config gives them; they must be the lowest ids (0 .. 3, in any
order), which the trainer places first, so that a corpus of any size leaves them where the model expects them.
`vocab_size` counts them; a small corpus may end with fewer tokens (every merge learned), never more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ..config import SpecialTokens

SPECIAL_NAMES = {"bos": "<bos>", "eos": "<eos>", "start_of_image": "<begin_of_image>",
                 "end_of_image": "<end_of_image>"}
"""The text form of each structural token (field of `SpecialTokens` -> token)."""


def special_token_order(tokens: SpecialTokens) -> list[str]:
    """The special tokens' texts by id; ValueError unless the ids are 0 .. 3."""
    by_id = {getattr(tokens, f.name): SPECIAL_NAMES[f.name] for f in dataclasses.fields(tokens)}
    if sorted(by_id) != list(range(len(SPECIAL_NAMES))):
        raise ValueError(f"a trained tokenizer puts the special tokens first: their ids must be 0 .. "
                         f"{len(SPECIAL_NAMES) - 1}, got {dataclasses.asdict(tokens)}")
    return [by_id[i] for i in range(len(by_id))]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: SpecialTokens,
                        min_frequency: int = 2) -> Any:
    """A `transformers.PreTrainedTokenizerFast` with byte-level BPE learned from `texts` (see the module doc)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    names = special_token_order(special_tokens)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(names) + len(alphabet):
        raise ValueError(f"vocab_size {vocab_size} leaves no room for the {len(alphabet)} byte tokens and "
                         f"{len(names)} special tokens (at least {len(names) + len(alphabet)})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=names,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    for i, name in enumerate(names):
        if tok.token_to_id(name) != i:  # the trainer adds special tokens first, in order; make sure
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, expected {i}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL_NAMES["bos"], eos_token=SPECIAL_NAMES["eos"],
        additional_special_tokens=[SPECIAL_NAMES["start_of_image"], SPECIAL_NAMES["end_of_image"]],
        clean_up_tokenization_spaces=False, model_max_length=16384)


__all__ = ["SPECIAL_NAMES", "special_token_order", "train_bpe_tokenizer"]

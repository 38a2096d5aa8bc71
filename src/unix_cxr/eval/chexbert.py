"""CheXbert: the BERT labeler behind the paper's "CheXbert F1" (spec section 7.1), from LOCAL files only.

Architecture (Smit et al. 2020, ``bert_labeler``): a bert-base-uncased encoder (``transformers.BertModel``), dropout
on the [CLS] hidden state of the last layer, then 14 linear heads on it -- 13 heads of 4 classes
``{0 blank, 1 positive, 2 negative, 3 uncertain}`` for the 13 observations and one head of 2 classes
``{0 blank, 1 positive}`` for No Finding. The heads follow CheXbert's condition order (:data:`CHEXBERT_CONDITIONS`,
spec 7.1), which is CheXpert's order (:data:`unix_cxr.chexpert.CHEXPERT_LABELS`).

Labelling, as the authors run it: each report goes through :func:`~unix_cxr.eval.report_metrics.truncate_for_chexbert`
(newlines -> spaces, first 512 characters), is tokenised by the bert-base-uncased WordPiece tokenizer
(``[CLS] ... [SEP]``, at most 512 tokens; an empty report is ``[CLS] [SEP]``), batches of 16 are run with an
attention mask over the padding, and the argmax of each head is mapped to our label values:

=====================  ==========  ===========================
head class             our value   CheXbert's own CSV value
=====================  ==========  ===========================
0 blank                ``None``    NaN (not mentioned)
1 positive             ``1``       1
2 negative             ``0``       0
3 uncertain            ``-1``      -1
=====================  ==========  ===========================

(No Finding: 0 -> ``None``, 1 -> ``1``.)

Files. The public checkpoint ``chexbert.pth`` is a torch checkpoint dict whose ``model_state_dict`` has keys
``module.bert.*`` and ``module.linear_heads.{i}.{weight,bias}`` (the model was wrapped in ``DataParallel``). It is
read with ``torch.load(weights_only=True)`` only -- never full unpickling; a file that needs more than tensors and
plain containers is refused. A ``.safetensors`` file with the same keys (with or without ``module.``) is also
accepted. The tokenizer is a local bert-base-uncased folder with ``vocab.txt`` (``BertTokenizer``, lower-casing).
Nothing is fetched from the Hugging Face hub.

The BERT configuration is taken from (1) a ``config`` argument, else (2) a ``config.json`` in the tokenizer folder
or beside the checkpoint whose sizes match the checkpoint, else (3) the checkpoint's tensor shapes with one
attention head per 64 hidden units (bert-base: 768 hidden, 12 heads, 12 layers).

API: :class:`CheXbert` (the ``nn.Module``), :func:`load_chexbert_state_dict`, :func:`config_from_state_dict`,
:func:`load_chexbert`, :func:`heads_to_labels`, :class:`CheXbertLabeler` (``label`` / ``label_many``, the same
interface as the rule :class:`~unix_cxr.eval.labeler.Labeler`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from ..checkpoint.safetensors_io import read_safetensors, state_dict_mismatch
from ..chexpert import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from .report_metrics import truncate_for_chexbert

log = logging.getLogger(__name__)

__all__ = [
    "CHEXBERT_BATCH_SIZE",
    "CHEXBERT_CONDITIONS",
    "CHEXBERT_F1_NAME",
    "CheXbert",
    "CheXbertLabeler",
    "config_from_state_dict",
    "heads_to_labels",
    "load_chexbert",
    "load_chexbert_state_dict",
]

CHEXBERT_CONDITIONS: Final[tuple[str, ...]] = (
    "enlarged_cardiomediastinum", "cardiomegaly", "lung_opacity", "lung_lesion", "edema", "consolidation",
    "pneumonia", "atelectasis", "pneumothorax", "pleural_effusion", "pleural_other", "fracture", "support_devices",
    "no_finding",
)
"""CheXbert's heads, in order (spec 7.1)."""

CONDITION_TO_CHEXPERT: Final[dict[str, str]] = dict(zip(CHEXBERT_CONDITIONS, CHEXPERT_LABELS, strict=True))
"""CheXbert condition name -> our CheXpert name (the two orders are the same)."""

CLASS_TO_LABEL: Final[dict[int, int | None]] = {0: None, 1: POSITIVE, 2: NEGATIVE, 3: UNCERTAIN}
"""Class index of one of the 13 four-way heads -> our label value."""
NO_FINDING_CLASS_TO_LABEL: Final[dict[int, int | None]] = {0: None, 1: POSITIVE}
"""Class index of the two-way No Finding head -> our label value."""

CHEXBERT_BATCH_SIZE: Final[int] = 16
CHEXBERT_MAX_TOKENS: Final[int] = 512
CHEXBERT_F1_NAME: Final[str] = "CheXbert F1"
"""The labeler name every F1 made from CheXbert labels carries (``chexpert_f1(..., labeler=CHEXBERT_F1_NAME)``)."""

_N_FOUR_WAY = 13
_IGNORED_KEYS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")  # buffers in old transformers
_HEAD_KEY = re.compile(r"^linear_heads\.(\d+)\.(weight|bias)$")
_LAYER_KEY = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")


class CheXbert(nn.Module):
    """CheXbert's ``bert_labeler``: BertModel, dropout on the [CLS] state, 13 four-way heads + 1 two-way head.

    ``forward(input_ids, attention_mask)`` returns the 14 logit tensors, shapes (B, 4) x 13 and (B, 2).
    The BERT pooler is built (the public checkpoint has its weights) but not used.
    """

    def __init__(self, config: Any, dropout: float = 0.1) -> None:
        from transformers import BertModel

        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(dropout)
        hidden = config.hidden_size
        self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in range(_N_FOUR_WAY)] + [nn.Linear(hidden, 2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """The 14 heads' logits for a padded batch of token ids."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
        cls = self.dropout(hidden[:, 0, :])
        return [head(cls) for head in self.linear_heads]


def load_chexbert_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a CheXbert checkpoint, keys without the ``module.`` prefix.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)`` (never full
    unpickling), taking ``model_state_dict`` from a checkpoint dict or the dict itself when it is a bare state dict.
    Raises FileNotFoundError for a missing file and ValueError for a file that is not a CheXbert state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CheXbert checkpoint {path} does not exist or is not a file")
    if path.suffix.lower() == ".safetensors":
        obj: Any = read_safetensors(path)
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for objects weights_only refuses, RuntimeError for non-torch files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True) ({first}); only "
                             "checkpoints of tensors and plain containers are loaded, never by full unpickling"
                             ) from None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a checkpoint dict with 'model_state_dict' (or a state dict), got "
                         f"{type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: the state dict holds {type(value).__name__} under {key!r}, not a tensor")
        key = key.removeprefix("module.")
        if key not in _IGNORED_KEYS:
            state[key] = value
    if not any(_HEAD_KEY.match(k) for k in state) or "bert.embeddings.word_embeddings.weight" not in state:
        raise ValueError(f"{path}: not a CheXbert checkpoint (no 'module.bert.embeddings.word_embeddings.weight' "
                         "or 'module.linear_heads.*' keys)")
    return state


def _read_config_json(path: Path) -> Any:
    from transformers import BertConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON BERT config ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return BertConfig(**{k: v for k, v in data.items() if k not in ("architectures", "transformers_version")})


def config_from_state_dict(state: dict[str, torch.Tensor], num_attention_heads: int | None = None) -> Any:
    """A ``BertConfig`` whose sizes match the checkpoint's tensors.

    Vocabulary, hidden, intermediate, layer, position and token-type sizes come from the tensor shapes; the number of
    attention heads cannot, so it is ``num_attention_heads`` or ``hidden_size // 64`` (bert-base: 12).
    """
    from transformers import BertConfig

    vocab, hidden = state["bert.embeddings.word_embeddings.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))}
    if not layers:
        raise ValueError("CheXbert checkpoint has no bert.encoder.layer.* tensors")
    heads = num_attention_heads or max(1, hidden // 64)
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not a multiple of {heads} attention heads")
    return BertConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=max(layers) + 1, num_attention_heads=heads,
        intermediate_size=int(state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state["bert.embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["bert.embeddings.token_type_embeddings.weight"].shape[0]),
    )


def _find_config(state: dict[str, torch.Tensor], folders: Iterable[Path]) -> Any:
    """The first ``config.json`` in ``folders`` that fits the checkpoint, else the shapes' config."""
    inferred = config_from_state_dict(state)
    for folder in folders:
        path = folder / "config.json"
        if not path.is_file():
            continue
        cfg = _read_config_json(path)
        sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings")
        if all(getattr(cfg, s) == getattr(inferred, s) for s in sizes):
            log.info("CheXbert: BERT configuration from %s", path)
            return cfg
        log.warning("CheXbert: ignoring %s, its sizes do not match the checkpoint", path)
    log.info("CheXbert: BERT configuration from the checkpoint's shapes (%d layers, hidden %d, %d heads)",
             inferred.num_hidden_layers, inferred.hidden_size, inferred.num_attention_heads)
    return inferred


def load_chexbert(checkpoint: str | Path, *, config: Any = None,
                  config_dirs: Sequence[str | Path] = ()) -> CheXbert:
    """A :class:`CheXbert` in eval mode with the checkpoint's weights (strict: every tensor must fit).

    ``config`` (a ``BertConfig``) wins; else the first fitting ``config.json`` in ``config_dirs`` or beside the
    checkpoint; else :func:`config_from_state_dict`. The BERT pooler may be absent from the file (it is unused).
    """
    checkpoint = Path(checkpoint)
    state = load_chexbert_state_dict(checkpoint)
    if config is None:
        config = _find_config(state, [Path(d) for d in config_dirs] + [checkpoint.parent])
    model = CheXbert(config)
    expected = model.state_dict()
    for key in ("bert.pooler.dense.weight", "bert.pooler.dense.bias"):
        if key not in state:
            state[key] = expected[key]
    problem = state_dict_mismatch(expected, state)
    if problem:
        raise ValueError(f"{checkpoint}: does not fit the CheXbert architecture: {problem}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def heads_to_labels(logits: Sequence[torch.Tensor]) -> list[dict[str, int | None]]:
    """Argmax of each head mapped to our values: a list (one per batch row) of 14-key CheXpert label dicts."""
    if len(logits) != len(CHEXBERT_CONDITIONS):
        raise ValueError(f"expected {len(CHEXBERT_CONDITIONS)} heads, got {len(logits)}")
    classes = [t.argmax(dim=1).tolist() for t in logits]
    out = []
    for row in range(len(classes[0])):
        labels: dict[str, int | None] = {}
        for head, name in enumerate(CHEXPERT_LABELS):
            table = NO_FINDING_CLASS_TO_LABEL if head == _N_FOUR_WAY else CLASS_TO_LABEL
            labels[name] = table[classes[head][row]]
        out.append(labels)
    return out


class CheXbertLabeler:
    """CheXbert labels for report texts, the same interface as the rule labeler (``label``, ``label_many``).

    Args:
        checkpoint: the local ``chexbert.pth`` (or ``.safetensors``) file.
        tokenizer_dir: a local bert-base-uncased folder with ``vocab.txt`` (``BertTokenizer``, lower-casing).
        config: optional ``BertConfig``; see the module docstring for where it comes from otherwise.
        device: torch device to run on; batch_size: reports per forward pass (the authors' 16).
    """

    name = "CheXbert"
    f1_name = CHEXBERT_F1_NAME

    def __init__(self, checkpoint: str | Path, tokenizer_dir: str | Path, *, config: Any = None,
                 device: str | torch.device = "cpu", batch_size: int = CHEXBERT_BATCH_SIZE) -> None:
        tokenizer_dir = Path(tokenizer_dir)
        model = load_chexbert(checkpoint, config=config, config_dirs=[tokenizer_dir])
        self._init(model, load_tokenizer(tokenizer_dir), device=device, batch_size=batch_size)
        self.checkpoint = Path(checkpoint)
        self.tokenizer_dir = tokenizer_dir

    @classmethod
    def from_model(cls, model: CheXbert, tokenizer: Any, *, device: str | torch.device = "cpu",
                   batch_size: int = CHEXBERT_BATCH_SIZE) -> CheXbertLabeler:
        """A labeler around an already built model and tokenizer (tests, callers with their own loading)."""
        self = cls.__new__(cls)
        self._init(model, tokenizer, device=device, batch_size=batch_size)
        self.checkpoint = None
        self.tokenizer_dir = None
        return self

    def _init(self, model: CheXbert, tokenizer: Any, *, device: str | torch.device, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_tokens = min(CHEXBERT_MAX_TOKENS, int(model.bert.config.max_position_embeddings))

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask of a batch: truncate_for_chexbert, ``[CLS] ... [SEP]``, <= 512 tokens."""
        prepared = [truncate_for_chexbert(t) for t in texts]
        enc = self.tokenizer(prepared, padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.inference_mode()
    def label_many(self, texts: Iterable[str], *, progress: bool = False) -> list[dict[str, int | None]]:
        """Labels of each report, in order (batches of ``batch_size``; a progress bar when asked)."""
        from tqdm.auto import tqdm

        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"reports must be str; not str at position(s) {bad[:5]}")
        out: list[dict[str, int | None]] = []
        for start in tqdm(range(0, len(texts), self.batch_size), desc="CheXbert", unit="batch",
                          disable=not progress):
            enc = self.encode(texts[start:start + self.batch_size])
            logits = self.model(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            out.extend(heads_to_labels([t.float().cpu() for t in logits]))
        return out

    def label(self, text: str) -> dict[str, int | None]:
        """The 14 CheXpert labels of one report."""
        return self.label_many([text])[0]

    def describe(self) -> dict[str, Any]:
        """What the results card records about this labeler."""
        cfg = self.model.bert.config
        return {"name": self.name, "metric_name": self.f1_name,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "tokenizer_dir": str(self.tokenizer_dir) if self.tokenizer_dir else None,
                "bert": {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
                         "num_attention_heads": cfg.num_attention_heads, "vocab_size": cfg.vocab_size},
                "batch_size": self.batch_size, "input": "truncate_for_chexbert (newlines -> spaces, first 512 "
                f"characters), at most {self.max_tokens} tokens", "decision": "argmax per head"}


def load_tokenizer(folder: str | Path) -> Any:
    """The bert-base-uncased WordPiece tokenizer from a local folder with ``vocab.txt`` (no hub access)."""
    from transformers import BertTokenizer

    folder = Path(folder)
    if not (folder / "vocab.txt").is_file():
        raise FileNotFoundError(f"CheXbert tokenizer folder {folder} has no vocab.txt (a local bert-base-uncased "
                                "tokenizer folder is needed)")
    return BertTokenizer.from_pretrained(str(folder), local_files_only=True, do_lower_case=True)

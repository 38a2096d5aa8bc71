"""unix-cxr: the open, trainable, tested implementation of UniX (arXiv 2601.11522) for chest X-rays.

Start here::

    from unix_cxr import UniXPipeline
    pipe = UniXPipeline.from_pretrained("weights/UniX")      # a local release folder
    reports = pipe.report(["chest.dcm"])                      # PNG, JPEG or DICOM
    images = pipe.generate(["Heart size is normal. No pleural effusion."], seed=42)

`load_config` reads every kind of configuration (preset, recipe, the authors' config.json, a release folder);
`UniX` is the model, `UniXConfig` its typed configuration. The names are imported on first use, so that
`import unix_cxr` (and `unix-cxr --help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "UniXConfig": "unix_cxr.config",
    "load_config": "unix_cxr.config",
    "UniX": "unix_cxr.model.unix",
    "UniXPipeline": "unix_cxr.infer.pipeline",
}
__all__ = ["UniX", "UniXConfig", "UniXPipeline", "__version__", "load_config"]

if TYPE_CHECKING:
    from .config import UniXConfig, load_config
    from .infer.pipeline import UniXPipeline
    from .model.unix import UniX


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unix_cxr' has no attribute {name!r}")

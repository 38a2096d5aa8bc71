"""`unix-cxr lora merge BASE_RELEASE ADAPTER_DIR -o OUT_RELEASE`: merge a peft LoRA adapter into a release folder.

BASE_RELEASE is a release folder (config.json or unix-cxr.yaml, model.safetensors, vae/, tokenizer files);
ADAPTER_DIR a peft adapter folder (adapter_config.json + adapter_model.safetensors, as `unix_cxr.train.lora`
saves it). OUT_RELEASE gets the base folder's files with the merged model.safetensors (same dtype as the base's)
and lora_merge.json, written to a temporary folder and renamed. Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _cmd_merge(args: argparse.Namespace) -> int:
    from ..train.lora import merge_release

    out = merge_release(Path(args.base), Path(args.adapter), Path(args.output))
    print(out)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="per-expert LoRA adapters (peft): merge one into a release folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    lora_sub = p.add_subparsers(dest="lora_command", required=True)
    m = lora_sub.add_parser("merge", help="base release + adapter -> a release folder with merged weights",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("base", metavar="BASE_RELEASE", help="release folder the adapter was trained on")
    m.add_argument("adapter", metavar="ADAPTER_DIR", help="peft adapter folder (adapter_config.json + weights)")
    m.add_argument("-o", "--output", required=True, metavar="OUT_RELEASE", help="release folder to write")
    m.set_defaults(func=_cmd_merge)

"""Model-level commands: `parity DIR`, `convert-vae CKPT OUT --trust-pickle`, `convert-janus FOLDER --trust-pickle`,
`config PRESET`."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import PRESETS

log = logging.getLogger(__name__)

DTYPE_NAMES = ("float32", "bfloat16")


def _cmd_parity(args: argparse.Namespace) -> int:
    import torch

    from ..eval.parity import run_parity
    from ..utils.devices import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_parity(args.golden_dir, getattr(torch, args.dtype), resolve_device(args.device))
    for result in results:
        sys.stdout.write(result.line() + "\n")
    failed = [r.name for r in results if not r.passed]
    sys.stdout.write(f"{len(results) - len(failed)} passed, {len(failed)} failed\n")
    return 0 if not failed else 1


def _cmd_convert_vae(args: argparse.Namespace) -> int:
    from ..checkpoint.vae import convert_pickled_vae

    out = convert_pickled_vae(args.checkpoint, args.output, trust_pickle=args.trust_pickle,
                              allow_non_finite=args.allow_non_finite)
    log.info("wrote %s", out)
    return 0


def _cmd_convert_janus(args: argparse.Namespace) -> int:
    from ..checkpoint.janus import convert_pickled_janus

    out = convert_pickled_janus(args.folder, trust_pickle=args.trust_pickle, allow_non_finite=args.allow_non_finite)
    log.info("wrote %s", out)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from ..config import load_config

    sys.stdout.write(yaml.safe_dump(load_config(args.preset).to_dict(), sort_keys=False))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parity", help="check our model against a directory of golden tensors from the authors' code")
    p.add_argument("golden_dir", help="directory in the ../shared/parity format")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32",
                   help="run in this dtype; bfloat16 is checked against bf16 tolerances (docs/parity.md)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_parity)

    p = sub.add_parser("convert-vae", help="one-time conversion of a pickled CompVis VAE checkpoint to safetensors",
                       description="Convert a pickled CompVis VAE checkpoint (the authors' kl-f16d16.ckpt) into an "
                                   "ldm-layout .safetensors file, once. The pickle is read with "
                                   "torch.load(weights_only=True) only: tensors and plain containers, never a full "
                                   "unpickle; a file that needs more is refused (docs/weights.md).")
    p.add_argument("checkpoint", help="the .ckpt file (e.g. kl-f16d16.ckpt)")
    p.add_argument("output", help="the .safetensors file to write (atomically; an existing file survives a failure)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="required: confirm that the file comes from a source you trust. It is then read with "
                        "torch.load(weights_only=True), which rebuilds only tensors and plain containers (dict, "
                        "list, numbers, strings) and refuses any other object; nothing is ever fully unpickled")
    p.add_argument("--allow-non-finite", action="store_true",
                   help="convert even if a tensor holds NaN or infinity (refused by default, naming the tensor)")
    p.set_defaults(func=_cmd_convert_vae)

    p = sub.add_parser("convert-janus", help="one-time conversion of a Janus-Pro folder's pickled weights",
                       description="Convert the pickled weights of a local Janus-Pro folder (pytorch_model.bin, or "
                                   "the shards of pytorch_model.bin.index.json) into FOLDER/model.safetensors, once, "
                                   "so that training can start from it (init=FOLDER). Every tensor is kept as it is. "
                                   "The pickle is read with torch.load(weights_only=True) only: tensors and plain "
                                   "containers, never a full unpickle; a file that needs more is refused "
                                   "(docs/weights.md).")
    p.add_argument("folder", help="the Janus-Pro folder (e.g. weights/Janus-Pro-1B: config.json, pytorch_model.bin)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="required: confirm that the files come from a source you trust (read with "
                        "torch.load(weights_only=True), as for convert-vae)")
    p.add_argument("--allow-non-finite", action="store_true",
                   help="convert even if a tensor holds NaN or infinity (refused by default, naming the tensor)")
    p.set_defaults(func=_cmd_convert_janus)

    p = sub.add_parser("config", help="print a preset configuration as YAML")
    p.add_argument("preset", choices=sorted(PRESETS))
    p.set_defaults(func=_cmd_config)

"""The `unix-cxr` command line (also `python -m unix_cxr`).

Bad input ends with one line on stderr naming the problem and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import torch

log = logging.getLogger("unix_cxr")

# Modules that add their own subcommands: each has `add_cli(subparsers)`; the handler it sets as `func` takes the
# parsed arguments and returns the exit status.
TOP_LEVEL_COMMANDS: tuple[str, ...] = ("unix_cxr.eval.label_cli", "unix_cxr.eval.eval_cli")
DATA_COMMANDS: tuple[str, ...] = (
    "unix_cxr.data.preview_cli",
    "unix_cxr.data.clean_cli",
    "unix_cxr.data.phantom_cli",
    "unix_cxr.data.build_cli",
    "unix_cxr.data.cache_cli",
)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _cmd_parity(args: argparse.Namespace) -> int:
    from .parity import run_parity

    torch.set_num_threads(args.threads) if args.threads else None
    results = run_parity(args.golden_dir, DTYPES[args.dtype])
    for result in results:
        sys.stdout.write(result.line() + "\n")
    failed = [r.name for r in results if not r.passed]
    sys.stdout.write(f"{len(results) - len(failed)} passed, {len(failed)} failed\n")
    return 0 if not failed else 1


def _cmd_convert_vae(args: argparse.Namespace) -> int:
    from .model.vae import convert_pickled_vae

    out = convert_pickled_vae(args.checkpoint, args.output, trust_pickle=args.trust_pickle)
    log.info("wrote %s", out)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from .config import preset

    sys.stdout.write(__import__("yaml").safe_dump(preset(args.preset).to_dict(), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unix-cxr", description="UniX: chest X-ray report and image generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parity", help="check our model against a directory of golden tensors from the authors' code")
    p.add_argument("golden_dir", help="directory in the ../shared/parity format")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="run in this dtype; bfloat16 is checked against bf16 tolerances (docs/parity.md)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=_cmd_parity)

    p = sub.add_parser("convert-vae", help="one-time conversion of a pickled CompVis VAE checkpoint to safetensors")
    p.add_argument("checkpoint", help="the .ckpt file (e.g. kl-f16d16.ckpt)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--trust-pickle", action="store_true",
                   help="confirm that you trust this file: unpickling can run arbitrary code")
    p.set_defaults(func=_cmd_convert_vae)

    p = sub.add_parser("config", help="print a preset configuration as YAML")
    p.add_argument("preset", choices=["unix-full", "tiny"])
    p.set_defaults(func=_cmd_config)

    if DATA_COMMANDS:
        data = sub.add_parser("data", help="data preparation: cleaning, image preview, phantoms, datasets")
        data_sub = data.add_subparsers(dest="data_command", required=True)
        for module in DATA_COMMANDS:
            importlib.import_module(module).add_cli(data_sub)
    for module in TOP_LEVEL_COMMANDS:
        importlib.import_module(module).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"unix-cxr {args.command}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())

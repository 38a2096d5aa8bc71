"""The `unix-cxr` command line (also `python -m unix_cxr`).

One module per command family registers its subcommands (`add_cli`); handlers import the library lazily, so
`unix-cxr --help` and every subcommand's `--help` answer without importing torch. Every handler runs inside the
one error boundary (`cli.errors.run`): bad input ends with one line on stderr naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import (
    data_build,
    data_cache,
    data_clean,
    data_phantom,
    data_preview,
    demo,
    generate,
    label,
    lora,
    model,
    report,
    serve,
    train,
)
from . import eval as eval_commands
from .errors import run

log = logging.getLogger("unix_cxr")

DATA_FAMILIES = (data_preview, data_clean, data_phantom, data_build, data_cache)


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (and exit status 2) instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="unix-cxr", description="UniX: chest X-ray report and image generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_cli(sub)
    report.add_cli(sub)
    generate.add_cli(sub)
    serve.add_cli(sub)
    model.add_cli(sub)
    data = sub.add_parser("data", help="data preparation: cleaning, image preview, phantoms, datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    for family in DATA_FAMILIES:
        family.add_cli(data_sub)
    label.add_cli(sub)
    eval_commands.add_cli(sub)
    train.add_cli(sub)
    lora.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    command = " ".join(c for c in (args.command, getattr(args, "data_command", None)) if c)
    return run(command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())

"""The one error boundary of the command line: bad input ends in one line naming the problem, exit status 2.

Every command's handler runs inside `run`. ValueError (bad arguments, bad files), OSError (missing file,
permission denied, a folder where a file was expected, disk full, ...) and RecursionError (pathologically nested
input) become `unix-cxr COMMAND: error: MESSAGE` on stderr and exit status 2, with no traceback (`-v` logs it).
An interrupt (Ctrl-C) exits 130 with one line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

log = logging.getLogger("unix_cxr")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def describe(err: BaseException) -> str:
    """One line for an error: an OSError names its file(s) and the system's reason."""
    if isinstance(err, OSError) and err.strerror:
        names = [str(n) for n in (err.filename, err.filename2) if n is not None]
        return f"{' -> '.join(names)}: {err.strerror}" if names else err.strerror
    if isinstance(err, RecursionError):
        return f"input nested too deeply to process ({err})"
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def run(command: str, handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except (ValueError, OSError, RecursionError) as err:
        log.debug("%s failed", command, exc_info=True)
        sys.stderr.write(f"unix-cxr {command}: error: {describe(err)}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write(f"unix-cxr {command}: interrupted\n")
        return EXIT_INTERRUPTED

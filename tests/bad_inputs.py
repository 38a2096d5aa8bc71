"""Shared helper of the bad-input batteries (tests/test_bad_inputs_*.py): run one command in-process and check
the promises of the README for bad input."""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path

from unix_cxr.cli import main


@dataclass
class Outcome:
    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if "error" in line.lower()]


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise Hang if the block runs longer than `seconds` (SIGALRM: also interrupts a blocking read)."""

    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(argv: list[str], capsys, timeout: int = 60) -> Outcome:
    """`unix-cxr ARGV` in this process, with a time limit; stdout / stderr captured."""
    capsys.readouterr()
    with time_limit(timeout):
        rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return Outcome(rc, out, err)


def assert_usage_error(outcome: Outcome, *needles: str) -> str:
    """Exit status 2, no traceback, exactly one error line on stderr, naming every needle (file or flag)."""
    assert outcome.rc == 2, (outcome.rc, outcome.err)
    assert "Traceback" not in outcome.err, outcome.err
    lines = outcome.error_lines
    assert len(lines) == 1, outcome.err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def assert_untouched(path: Path, content: bytes) -> None:
    """An existing output survives a failed run byte for byte, and no temporary file of ours is left beside it."""
    assert path.read_bytes() == content
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".unix-cxr-tmp")]

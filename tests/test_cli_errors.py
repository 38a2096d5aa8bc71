"""The one writer and the one error boundary, tried as a user would: every bad output path, a full disk, bad
sizes and inputs that are not regular files end in one stderr line naming the file or flag and exit status 2;
an output appears whole or not at all, and an old output survives a failed write."""

import errno
import json
import os
import pathlib
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unix_cxr.cli import main
from unix_cxr.utils import atomic
from unix_cxr.utils.atomic import TEMP_SUFFIX, atomic_open, write_atomic


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def reports(tmp_path):
    path = tmp_path / "reports.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "FINDINGS: Heart size is normal. IMPRESSION: Normal."}) + "\n"
                    + json.dumps({"id": "b", "text": "Comparison: none."}) + "\n")
    return path


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "cxr.png"
    Image.fromarray(np.linspace(0, 255, 48 * 40, dtype=np.uint8).reshape(48, 40)).save(path)
    return path


def commands(kind: str, src, out) -> list[str]:
    return {"clean": ["data", "clean", str(src), "-o", str(out), "--no-progress"],
            "label": ["label", str(src), "-o", str(out), "--no-progress"],
            "preview": ["data", "preview", str(src), "-o", str(out)]}[kind]


def source_for(kind, reports, png, tmp_path):
    if kind == "label":
        labelled = tmp_path / "to_label.jsonl"
        labelled.write_text(json.dumps({"id": "a", "report": "No pleural effusion."}) + "\n")
        return labelled
    return png if kind == "preview" else reports


@pytest.mark.parametrize("kind", ["clean", "label", "preview"])
def test_output_that_is_a_folder_or_under_a_file(kind, reports, png, tmp_path, capsys):
    src = source_for(kind, reports, png, tmp_path)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(commands(kind, src, folder)) == 2
    one_error_line(capsys, str(folder), "is a folder")
    under = src / "out.jsonl"  # a path under a regular file
    assert main(commands(kind, src, under)) == 2
    one_error_line(capsys, str(src), "is not a folder")


@pytest.mark.parametrize("kind", ["clean", "label", "preview"])
def test_full_disk_keeps_the_old_output(kind, reports, png, tmp_path, capsys, monkeypatch):
    src = source_for(kind, reports, png, tmp_path)
    out = tmp_path / "out.file"
    out.write_bytes(b"the old output")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    assert main(commands(kind, src, out)) == 2
    one_error_line(capsys, "No space left on device")
    assert out.read_bytes() == b"the old output"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)] == []


@pytest.mark.parametrize("size", ["0", "-16", "100000"])
def test_preview_size_out_of_range(size, png, tmp_path, capsys):
    assert main(["data", "preview", str(png), "-o", str(tmp_path / "p.png"), "--size", size]) == 2
    one_error_line(capsys, "--size must be between 1 and 4096 px", size)
    assert not (tmp_path / "p.png").exists()


def test_inputs_that_are_not_regular_files_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        proc = subprocess.run([sys.executable, "-m", "unix_cxr", "data", "preview", str(path), "-o",
                               str(tmp_path / "p.png")], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "not a regular file" in proc.stderr and str(path) in proc.stderr
        assert "Traceback" not in proc.stderr


def test_missing_input_and_parity_folder(tmp_path, capsys):
    assert main(["parity", str(tmp_path / "nowhere")]) == 2
    one_error_line(capsys, str(tmp_path / "nowhere"), "no such golden folder")
    assert main(["label", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2
    one_error_line(capsys, "missing.jsonl")


def test_permission_denied_is_one_line(tmp_path, capsys, reports):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # a folder this user may not write to: `locked` for a normal user; /sys (sysfs) refuses new files even to root
    folder = locked if not os.access(locked, os.W_OK) else pathlib.Path("/sys")
    try:
        assert main(commands("clean", reports, folder / "out.jsonl")) == 2
        one_error_line(capsys, "Permission denied", str(folder))
    finally:
        locked.chmod(0o700)


def test_the_writer_gives_normal_permissions_and_removes_stale_temps(tmp_path):
    old_mask = os.umask(0o022)
    try:
        stale = tmp_path / f".out.txt.abc123{TEMP_SUFFIX}"
        stale.write_text("left by a killed run")
        other = tmp_path / ".unrelated.tmp"
        other.write_text("not ours")
        write_atomic(tmp_path / "out.txt", "hello")
    finally:
        os.umask(old_mask)
    assert (tmp_path / "out.txt").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
    assert not stale.exists() and other.exists()


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as f:
        f.write("half of the new\n")
        raise KeyboardInterrupt
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_clean_then_label_chain(reports, tmp_path, capsys, caplog):
    cleaned, labels = tmp_path / "cleaned.jsonl", tmp_path / "labels.jsonl"
    assert main(commands("clean", reports, cleaned)) == 0
    rows = [json.loads(line) for line in cleaned.read_text().splitlines()]
    assert [r["report"] is None for r in rows] == [False, True]  # b has no findings or impression: dropped
    with caplog.at_level("INFO"):
        assert main(commands("label", cleaned, labels)) == 0
    assert [json.loads(line)["id"] for line in labels.read_text().splitlines()] == ["a"]
    assert "1 dropped report(s) skipped" in caplog.text


def test_every_help_answers_without_importing_torch():
    script = """
import sys
from unix_cxr.cli import build_parser
commands = [[], ["parity"], ["convert-vae"], ["config"], ["label"], ["eval"], ["eval", "reports"],
            ["eval", "images"], ["eval", "cycle"], ["data"]] + [["data", c] for c in
            ("preview", "clean", "phantom", "build", "cache-latents")]
for argv in commands:
    try:
        build_parser().parse_args([*argv, "--help"])
    except SystemExit as stop:
        assert stop.code == 0, argv
print("torch imported:", "torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "torch imported: False"
    assert "usage: unix-cxr data cache-latents" in proc.stdout


def test_a_library_save_through_atomic_path_gets_normal_permissions(tmp_path):
    """safetensors replaces the file it writes (mode 0600); the writer gives it the umask's permissions again."""
    import torch

    from unix_cxr.checkpoint.safetensors_io import write_safetensors_atomic

    old_mask = os.umask(0o022)
    try:
        path = write_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

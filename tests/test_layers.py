"""The import layers (pyproject.toml's import-linter contracts) hold, and an upward import breaks them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
lint_imports = shutil.which("lint-imports")
needs_import_linter = pytest.mark.skipif(lint_imports is None, reason="import-linter is not installed")


def _lint(src: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(src), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([lint_imports, str(ROOT / "pyproject.toml"), "--no-cache"], cwd=src,
                          env=env, capture_output=True, text=True, timeout=120)


@needs_import_linter
def test_the_layers_hold_and_an_upward_import_breaks_them(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "unix_cxr", src / "unix_cxr", ignore=shutil.ignore_patterns("__pycache__"))
    kept = _lint(src)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "2 kept, 0 broken" in kept.stdout

    unix = src / "unix_cxr" / "model" / "unix.py"  # the model reaching up into inference
    unix.write_text(unix.read_text() + "\nfrom ..infer import report  # noqa: E402, F401\n")
    broken = _lint(src)
    assert broken.returncode != 0
    assert "unix_cxr.model.unix -> unix_cxr.infer.report" in broken.stdout
    assert "0 kept, 2 broken" in broken.stdout  # the layers, and now a cycle model <-> infer as well

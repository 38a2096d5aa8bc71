"""`unix-cxr parity` on the authors' goldens in ../shared/parity (skipped where that folder is absent).

Run: pytest tests/test_parity.py
"""

import shutil

import torch
from conftest import PARITY, needs_parity
from safetensors.torch import load_file, save_file

from unix_cxr.cli import main

pytestmark = needs_parity


def test_every_golden_case_passes_in_float32(capsys):
    assert main(["parity", str(PARITY)]) == 0
    out = capsys.readouterr().out.splitlines()
    cases = sorted(p.stem for p in PARITY.glob("case*_*.safetensors"))
    assert [line.split()[0] for line in out[:-1]] == cases
    assert all(" PASS " in line for line in out[:-1])
    assert out[-1] == f"{len(cases)} passed, 0 failed"


def test_bfloat16_stays_within_bf16_tolerance(capsys):
    assert main(["parity", str(PARITY), "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("passed, 0 failed")


def test_a_perturbed_weight_fails(tmp_path, capsys):
    golden = tmp_path / "golden"
    shutil.copytree(PARITY, golden)
    weights = load_file(golden / "model.safetensors")
    key = "language_model.model.layers.1.mlp_moe_gen.down_proj.weight"
    weights[key] = weights[key] + 1e-3 * torch.randn_like(weights[key])
    (golden / "model.safetensors").chmod(0o644)
    save_file(weights, golden / "model.safetensors")
    assert main(["parity", str(golden)]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[:-1]}
    # only the generation expert changed: understanding cases still pass, generation cases fail
    assert " PASS " in lines["case3_understanding"] and " PASS " in lines["case2_vit"]
    assert " FAIL " in lines["case4_velocity"] and " FAIL " in lines["case5_sampling"]


def test_not_a_golden_dir_is_a_one_line_error(tmp_path, capsys):
    assert main(["parity", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a golden directory" in err[0]

"""benchmarks/bench_gpu.py, the script a session with a GPU runs in its few minutes: its quick form on CPU."""

import logging

from conftest import load_benchmark


def test_the_gpu_script_runs_every_figure_in_its_quick_form(caplog):
    bench = load_benchmark("bench_gpu")
    with caplog.at_level(logging.INFO, logger="bench_gpu"):
        assert bench.main(["--quick", "--device", "cpu", "--parity", "", "--repeats", "1", "--no-compile"]) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("report, eager step: ") and "for 8 tokens" in line for line in lines)
    assert sum(line.startswith("image 64 px, 50 time points") for line in lines) == 2  # step cache off and on
    assert not any(line.startswith("parity") for line in lines)

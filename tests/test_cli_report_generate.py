"""`unix-cxr report` and `unix-cxr generate` (unix_cxr.cli.report / generate, unix_cxr.infer.batch): inputs, output
records, per-item failures, resuming (after a SIGKILL too), batch-size independence, the synthetic marking, bad
arguments and a real two-process torchrun run. A tiny random release folder (conftest.write_release) with small
decoding and sampling settings keeps every run short."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from bad_inputs import Outcome, assert_usage_error, run
from conftest import write_release
from PIL import Image as PILImage
from test_pipeline import word_tokenizer

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.config import OWN_CONFIG, load_config
from unix_cxr.data import phantom as ph
from unix_cxr.infer.batch import file_stem, item_seed
from unix_cxr.infer.marking import read_marking
from unix_cxr.infer.pipeline import UniXPipeline

REPORT_KEYS = {"id", "image", "report", "labels", "finished", "seconds"}
IMAGE_KEYS = {"id", "k", "file", "seed", "prompt", "seconds"}
N_IMAGES = 6


@dataclass
class Assets:
    root: Path
    release: Path
    images: Path  # im0.png .. im5.png, and sub/deep.png


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("batch")
    cfg = load_config("tiny", {"decoding.max_new_tokens": 3, "sampling.num_timesteps": 2,
                               "sampling.image_size": 32})
    release = write_release(root / "release", cfg, word_tokenizer(cfg.decoder.vocab_size))
    (release / OWN_CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # the special token ids
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(N_IMAGES):
        ph.save_png(ph.render(ph.PhantomSpec(size=64, seed=i)), images / f"im{i}.png")
    ph.save_png(ph.render(ph.PhantomSpec(size=64, seed=99)), images / "sub" / "deep.png")
    return Assets(root, release, images)


@pytest.fixture(autouse=True)
def _one_process_one_thread(monkeypatch):
    """Not under torchrun; one torch thread (the runs are tiny, and threads fight over a busy machine)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_thread_env() -> dict[str, str]:
    """The environment of a subprocess: not under torchrun, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def calls(monkeypatch) -> dict[str, int]:
    """How many images `UniXPipeline.report` read and how many reports `generate` drew."""
    counts = {"report": 0, "generate": 0}
    report, generate = UniXPipeline.report, UniXPipeline.generate

    def counted_report(self, images, *args, **kwargs):
        counts["report"] += len(images)
        return report(self, images, *args, **kwargs)

    def counted_generate(self, reports, *args, **kwargs):
        counts["generate"] += len(reports)
        return generate(self, reports, *args, **kwargs)

    monkeypatch.setattr(UniXPipeline, "report", counted_report)
    monkeypatch.setattr(UniXPipeline, "generate", counted_generate)
    return counts


def report(assets: Assets, capsys, *args) -> Outcome:
    return run(["report", *args, "--model", assets.release, "--no-progress"], capsys)


def generate(assets: Assets, capsys, *args) -> Outcome:
    return run(["generate", *args, "--model", assets.release, "--no-progress", "--steps", "2", "--size", "32"],
               capsys)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# ------------------------------------------------------------------------------------------------------ report


def test_report_reads_files_folders_jsonl_and_csv(assets, tmp_path, capsys):
    rel = Path(os.path.relpath(assets.images, tmp_path))  # image paths relative to the list's folder
    (tmp_path / "list.jsonl").write_text(json.dumps({"id": "j1", "image": str(rel / "im0.png")}) + "\n")
    (tmp_path / "list.csv").write_text(f"id,image,other\nc1,{rel / 'im1.png'},x\n")
    out = tmp_path / "out.jsonl"
    outcome = report(assets, capsys, assets.images, tmp_path / "list.jsonl", tmp_path / "list.csv",
                     assets.images / "sub" / "deep.png", "-o", out, "--max-new-tokens", "2", "--batch-size", "4")
    assert outcome.rc == 0, outcome.err
    records = lines(out)
    assert [r["id"] for r in records] == [f"im{i}" for i in range(N_IMAGES)] + ["j1", "c1", "deep"]
    for r in records:
        assert set(r) == REPORT_KEYS and isinstance(r["report"], str) and isinstance(r["finished"], bool)
        assert list(r["labels"]) == list(CHEXPERT_LABELS) and r["seconds"] > 0
        assert len(r["report"].split()) <= 2  # --max-new-tokens 2 (word tokens)
    assert records[0]["image"] == str(assets.images / "im0.png")
    assert records[6]["image"] == str(tmp_path / rel / "im0.png")
    assert records[6]["report"] == records[0]["report"] and records[7]["report"] == records[1]["report"]
    assert not list(tmp_path.glob("*.partial"))

    # a folder's subfolders with -r (id: the path inside the folder); without -o the reports go to stdout
    outcome = report(assets, capsys, assets.images, "-r", "--max-new-tokens", "2")
    assert outcome.rc == 0, outcome.err
    printed = [line.split("\t") for line in outcome.out.splitlines()]
    assert [i for i, _ in printed] == [f"im{i}" for i in range(N_IMAGES)] + ["sub/deep"]
    assert [t for _, t in printed[:N_IMAGES]] == [r["report"] for r in records[:N_IMAGES]]
    assert printed[-1][1] == records[-1]["report"]


def test_report_bad_image_fails_alone_and_a_rerun_retries_only_it(assets, tmp_path, capsys, caplog, calls):
    folder = tmp_path / "images"
    shutil.copytree(assets.images, folder)
    (folder / "bad.png").write_text("not an image")
    (tmp_path / "more.jsonl").write_text(json.dumps({"id": "gone", "image": "elsewhere/missing.png"}) + "\n")
    out = tmp_path / "out.jsonl"
    argv = [folder, tmp_path / "more.jsonl", "-o", out, "--batch-size", "3"]
    outcome = report(assets, capsys, *argv)
    assert outcome.rc == 1
    records = {r["id"]: r for r in lines(out)}
    assert list(records) == ["bad"] + [f"im{i}" for i in range(N_IMAGES)] + ["gone"]
    assert set(records["bad"]) == {"id", "image", "error"} and "not a PNG, JPEG or DICOM" in records["bad"]["error"]
    assert "no such file" in records["gone"]["error"] and "\n" not in records["gone"]["error"]
    assert all(set(records[f"im{i}"]) == REPORT_KEYS for i in range(N_IMAGES))
    assert "2 item(s) failed" in caplog.text and "  bad: " in caplog.text and "  gone: " in caplog.text

    # fix both: the rerun reads only those two and keeps every other line as it was
    shutil.copy(folder / "im0.png", folder / "bad.png")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(folder / "im1.png", tmp_path / "elsewhere" / "missing.png")
    calls["report"] = 0
    outcome = report(assets, capsys, *argv)
    assert outcome.rc == 0, outcome.err
    assert calls["report"] == 2
    again = {r["id"]: r for r in lines(out)}
    assert list(again) == list(records)
    assert all(again[k] == records[k] for k in records if k not in ("bad", "gone"))
    assert again["bad"]["report"] == again["im0"]["report"] and again["gone"]["report"] == again["im1"]["report"]


def test_report_resumes_from_a_torn_partial_file(assets, tmp_path, capsys, calls):
    out = tmp_path / "out.jsonl"
    argv = [assets.images, "-o", out, "--batch-size", "2"]
    assert report(assets, capsys, *argv).rc == 0
    full = out.read_text().splitlines(keepends=True)
    # a run killed in its third batch: two batches recorded, a torn line, no OUTPUT
    partial = tmp_path / "out.jsonl.partial"
    partial.write_text("".join(full[:4]) + full[4][:25])
    out.unlink()
    calls["report"] = 0
    outcome = report(assets, capsys, *argv)
    assert outcome.rc == 0, outcome.err
    assert calls["report"] == N_IMAGES - 4  # only the images not recorded
    now = out.read_text().splitlines(keepends=True)
    assert now[:4] == full[:4]  # kept as recorded (same seconds: not read again)
    assert without_seconds([json.loads(x) for x in now]) == without_seconds([json.loads(x) for x in full])
    assert not partial.exists()
    # a finished run again: nothing to do; --no-resume does it all over
    calls["report"] = 0
    assert report(assets, capsys, *argv).rc == 0 and calls["report"] == 0 and out.read_text() == "".join(now)
    assert report(assets, capsys, *argv, "--no-resume").rc == 0 and calls["report"] == N_IMAGES


def test_report_survives_sigkill(assets, tmp_path, capsys):
    """A real `kill -9` in the middle of a run: the rerun keeps every record of the killed run and ends whole."""
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    argv = ["report", str(assets.images), "-o", str(out), "--model", str(assets.release), "--batch-size", "1",
            "--max-new-tokens", "64", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "unix_cxr", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=one_thread_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL or out.exists():
        pytest.skip("the run ended before it could be killed")
    kept = [json.loads(x) for x in partial.read_text().split("\n")[:-1]]  # the whole lines
    assert 2 <= len(kept) <= N_IMAGES
    outcome = run(argv, capsys)
    assert outcome.rc == 0, outcome.err
    records = lines(out)
    assert [r["id"] for r in records] == [f"im{i}" for i in range(N_IMAGES)]
    assert all(r in records for r in kept) and not partial.exists()


def test_greedy_reports_do_not_depend_on_the_batch_size(assets, tmp_path, capsys):
    texts = []
    for size in ("1", "8"):
        out = tmp_path / f"b{size}.jsonl"
        assert report(assets, capsys, assets.images, "-r", "-o", out, "--batch-size", size).rc == 0
        texts.append({r["id"]: r["report"] for r in lines(out)})
    assert texts[0] == texts[1] and len(texts[0]) == N_IMAGES + 1


def test_report_under_torchrun_two_processes(assets, tmp_path, capsys):
    single = tmp_path / "single.jsonl"
    assert report(assets, capsys, assets.images, "-r", "-o", single).rc == 0
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "unix_cxr", "report", str(assets.images), "-r", "-o", str(out), "--model",
                           str(assets.release), "--batch-size", "2", "--no-progress"],
                          capture_output=True, text=True, env=one_thread_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert without_seconds(lines(out)) == without_seconds(lines(single))  # merged in input order, once
    assert not list(tmp_path.glob("*.partial"))


# ---------------------------------------------------------------------------------------------------- generate


def test_generate_inputs_files_records_and_marking(assets, tmp_path, capsys):
    (tmp_path / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "r1", "report": "FINDINGS: Right pleural effusion. IMPRESSION: Effusion."},
        {"id": 7, "report": "The heart is enlarged."}]))
    (tmp_path / "reports.csv").write_text("id,report\nc/1,Clear lungs.\n")
    (tmp_path / "note.txt").write_text("Small left pneumothorax.\n")
    out = tmp_path / "out"
    outcome = generate(assets, capsys, "No acute process.", f"@{tmp_path / 'reports.jsonl'}", tmp_path / "reports.csv",
                       tmp_path / "note.txt", "-n", "2", "--dicom", "--batch-size", "2", "-o", out)
    assert outcome.rc == 0, outcome.err
    records = lines(out / "images.jsonl")
    ids = ["text-1", "r1", "7", "c/1", "note"]
    assert [(r["id"], r["k"]) for r in records] == [(i, k) for i in ids for k in range(2)]
    assert records[2]["prompt"] == "Right pleural effusion." and records[0]["prompt"] == "No acute process."
    for r in records:
        assert set(r) == IMAGE_KEYS and r["seed"] == item_seed(0, r["id"])
        assert r["file"] == f"{file_stem(r['id'])}-{r['k']}.png"
        png = out / r["file"]
        assert PILImage.open(png).size == (32, 32)
        marks = read_marking(png)
        assert marks["unix-cxr:synthetic"] == "true" and marks["unix-cxr:seed"] == str(r["seed"])
        assert marks["unix-cxr:prompt"] == r["prompt"] and "not for diagnosis" in marks["Disclaimer"]
        dcm = pydicom.dcmread(png.with_suffix(".dcm"))
        assert dcm.ConversionType == "SYN" and dcm.Rows == 32
    assert records[6]["file"].startswith("c_1-")  # "c/1": a file name of its own, not a subfolder
    assert len({r["seed"] for r in records}) == len(ids)
    assert not (out / "images.jsonl.partial").exists()


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(PILImage.open(p)).astype(int) for p in sorted(folder.glob("*.png"))}


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """The same drawing, pixel for pixel (the pipeline samples each image alone: batch-invariant)."""
    return np.array_equal(a, b)


def test_generate_images_depend_only_on_seed_and_id_and_resume(assets, tmp_path, capsys, calls):
    (tmp_path / "reports.jsonl").write_text("".join(json.dumps({"id": i, "report": t}) + "\n" for i, t in [
        ("a", "FINDINGS: Right pleural effusion."), ("b", "FINDINGS: Right pleural effusion."),
        ("c", "The heart is enlarged.")]))
    drawn = []
    for size in ("1", "3"):
        out = tmp_path / f"b{size}"
        assert generate(assets, capsys, tmp_path / "reports.jsonl", "-n", "3", "--batch-size", size, "-o", out).rc == 0
        drawn.append(_pixels(out))
    assert list(drawn[0]) == [f"{i}-{k}.png" for i in "abc" for k in range(3)]
    assert all(same_image(drawn[0][name], drawn[1][name]) for name in drawn[0])
    assert not same_image(drawn[0]["a-0.png"], drawn[0]["b-0.png"])  # same report, other id: other seed
    # another --seed: other images; a report moved to another place in the input: the same images
    moved = tmp_path / "moved.jsonl"
    moved.write_text("".join(reversed((tmp_path / "reports.jsonl").read_text().splitlines(keepends=True))))
    assert generate(assets, capsys, moved, "-n", "3", "-o", tmp_path / "moved").rc == 0
    assert all(same_image(a, drawn[0][name]) for name, a in _pixels(tmp_path / "moved").items())
    assert generate(assets, capsys, moved, "-n", "1", "--seed", "1", "-o", tmp_path / "s1").rc == 0
    assert not same_image(_pixels(tmp_path / "s1")["a-0.png"], drawn[0]["a-0.png"])

    # resume: nothing left to draw; a deleted image redraws its report only, identically
    out = tmp_path / "b1"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    record_lines = (out / "images.jsonl").read_text()
    calls["generate"] = 0
    assert generate(assets, capsys, tmp_path / "reports.jsonl", "-n", "3", "-o", out).rc == 0
    assert calls["generate"] == 0 and (out / "images.jsonl").read_text() == record_lines
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == before
    (out / "b-1.png").unlink()
    assert generate(assets, capsys, tmp_path / "reports.jsonl", "-n", "3", "-o", out).rc == 0
    assert calls["generate"] == 1
    assert all(same_image(a, drawn[0][name]) for name, a in _pixels(out).items())
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("a-*.png")} == {k: v for k, v in before.items()
                                                                           if k.startswith("a-")}


def test_generate_records_failed_reports_and_goes_on(assets, tmp_path, capsys, caplog):
    (tmp_path / "reports.jsonl").write_text("\n".join([
        json.dumps({"id": "ok", "report": "Clear lungs."}), "{not json", json.dumps({"id": "empty", "report": " "}),
        json.dumps({"id": "none"}), json.dumps({"id": "ok", "report": "again"})]) + "\n")
    out = tmp_path / "out"
    outcome = generate(assets, capsys, tmp_path / "reports.jsonl", "-o", out)
    assert outcome.rc == 1
    records = lines(out / "images.jsonl")
    assert set(records[0]) == IMAGE_KEYS and (out / records[0]["file"]).is_file()
    errors = records[1:]
    assert all(set(r) == {"id", "error"} for r in errors) and len(errors) == 4
    assert "not valid JSON" in errors[0]["error"] and errors[1]["error"] == "empty report"
    assert "missing 'report'" in errors[2]["error"] and "duplicate id 'ok'" in errors[3]["error"]
    assert "4 item(s) failed" in caplog.text and "Traceback" not in outcome.err


# ----------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(("argv", "needle"), [
    (["report", "{images}/nope.png"], "nope.png: no such file or folder"),
    (["report", "{images}/im0.png", "--temperature", "0.5"], "--temperature"),
    (["report", "{images}/im0.png", "--sample", "--top-p", "2"], "--top-p"),
    (["report", "{images}/im0.png", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["report", "{images}/im0.png", "-o", "{images}"], "is a folder"),
    (["report", "{empty}"], "no image files"),
    (["report", "{csv}"], "no column id or image"),
    (["report", "{images}/im0.png", "--model", "{empty}/nope"], "--model"),
    (["report", "{images}/im0.png", "--batch-size", "0"], "--batch-size"),
    (["report", "{images}/im0.png", "--prompt", " "], "--prompt"),
    (["generate", "x", "-o", "{tmp}/o", "-n", "0"], "-n must be"),
    (["generate", "x", "-o", "{tmp}/o", "--steps", "1"], "--steps"),
    (["generate", "x", "-o", "{tmp}/o", "--size", "40"], "--size 40"),
    (["generate", "x", "-o", "{images}/im0.png"], "not a folder"),
    (["generate", "@{tmp}/missing.jsonl", "-o", "{tmp}/o"], "missing.jsonl: no such file"),
    (["generate", "{empty}/r.txt", "-o", "{tmp}/o"], "r.txt: no such file"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments_are_one_line_exit_2(argv, needle, assets, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("name,path\na,b\n")
    values = {"images": assets.images, "empty": tmp_path / "empty", "csv": tmp_path / "bad.csv", "tmp": tmp_path}
    argv = [a.format(**{k: str(v) for k, v in values.items()}) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(assets.release)]
    assert_usage_error(run(argv, capsys), needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("argv", "needle"), [
    (["report"], "the following arguments are required: IMAGE"),
    (["generate", "x"], "the following arguments are required: -o/--output"),
    (["generate", "x", "-o", "d", "--size", "big"], "argument --size: invalid int value"),
])
def test_usage_errors_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as stop:
        run(argv, capsys)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err

"""Synthetic phantom chest radiographs (issue 3 item 5): findings measured back from the pixels, labels against
reports, determinism of the CLI output, bad arguments. Run: pytest tests/test_phantom.py

Every pixel test compares a case with the same case (same seed: same anatomy, same noise) without the finding, and
measures on the image the way one would on a radiograph, without reading the renderer's internals.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from functools import lru_cache

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.cli import main
from unix_cxr.data.phantom import (
    DEVICE_KINDS,
    NEGATABLE,
    Finding,
    PhantomSpec,
    labels,
    render,
    report,
    sample_spec,
)

SIZE = 256  # the measurements below are in pixels of 256-px images
SEEDS = (0, 1, 2)


@lru_cache(maxsize=64)
def _render(spec: PhantomSpec) -> np.ndarray:
    img = render(spec)
    img.setflags(write=False)
    return img


def _case(seed: int, *findings: Finding, **kw: float) -> np.ndarray:
    return _render(PhantomSpec(findings=findings, size=SIZE, seed=seed, **kw))


def _box(img: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)² window, edges replicated."""
    p = np.pad(img.astype(np.float64), r, mode="edge")
    n, m = img.shape
    return sum(p[i:i + n, j:j + m] for i in range(2 * r + 1) for j in range(2 * r + 1)) / (2 * r + 1) ** 2


def _levels(sm: np.ndarray) -> tuple[float, float]:
    """(dark lung level, mediastinum level) of a smoothed image: the 5th percentile of the mid-chest (away from
    the black background) and the median of the midline at heart level."""
    n = sm.shape[0]
    lung = float(np.percentile(sm[int(0.3 * n):int(0.6 * n), int(0.1 * n):int(0.9 * n)], 5))
    med = float(np.median(sm[int(0.55 * n):int(0.65 * n), n // 2 - 2:n // 2 + 3]))
    return lung, med


def _region(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    n = img.shape[0]
    return img[int(y0 * n):int(y1 * n), int(x0 * n):int(x1 * n)].astype(np.float64)


def measure_ctr(img: np.ndarray) -> float:
    """Cardiothoracic ratio measured as on a PA film: the widest horizontal heart diameter (right and left heart
    borders found by walking out from the midline to the first lung pixel, on rows above the right hemidiaphragm)
    over the widest inner thoracic diameter (between the lateral lung edges)."""
    sm = _box(img, 1)
    n = sm.shape[0]
    mid = n // 2
    lung, med = _levels(sm)
    thr = 0.5 * (lung + med)  # lung / heart border
    thr_wall = lung + 0.3 * (med - lung)  # lung / chest wall border
    thoracic = 0
    for r in range(int(0.2 * n), int(0.9 * n)):
        row = sm[r]
        body = np.nonzero(row > thr_wall)[0]
        if len(body) == 0:
            continue
        dark = np.nonzero(row[body[0]:body[-1] + 1] < thr_wall)[0]
        if len(dark) >= 4:
            thoracic = max(thoracic, dark[-1] - dark[0] + 1)
    # the right hemidiaphragm dome: the lowest lung pixel down the mid-hemithorax column on the image left
    dome = int(np.nonzero(sm[: int(0.95 * n), mid - int(0.22 * n)] < thr)[0].max())
    right = left = 0
    for r in range(int(0.5 * n), dome):
        row = sm[r]
        for step in (-1, 1):
            j = mid
            while 0 < j < n - 1 and row[j] >= thr:
                j += step
            if row[j] < thr:
                if step < 0:
                    right = max(right, mid - j)
                else:
                    left = max(left, j - mid)
    return (right + left) / thoracic


def test_measured_cardiothoracic_ratio_tracks_the_intended_one():
    intended = (0.4, 0.5, 0.6, 0.7)
    measured = []
    for seed in SEEDS:
        row = []
        for ctr in intended:
            img = _case(seed, ctr=ctr) if ctr <= 0.5 else _case(seed, Finding("cardiomegaly", value=ctr))
            row.append(measure_ctr(img))
        assert all(b > a + 0.05 for a, b in itertools.pairwise(row)), (seed, row)  # monotonic
        measured.append(row)
    m = np.asarray(measured)
    x = np.tile(intended, len(SEEDS))
    assert np.corrcoef(x, m.ravel())[0, 1] > 0.98
    assert np.abs(m - np.asarray(intended)).mean() < 0.03, m


def test_cardiomegaly_severity_orders_the_heart_size():
    sizes = [measure_ctr(_case(0, Finding("cardiomegaly", severity=s))) for s in ("mild", "moderate", "severe")]
    assert sizes[0] > 0.5 and sizes == sorted(sizes), sizes


LATERAL_BASE = {"right": (0.10, 0.24, 0.64, 0.80), "left": (0.76, 0.90, 0.64, 0.80)}  # patient right = image left


@pytest.mark.parametrize("side", ["right", "left"])
def test_effusion_whitens_the_costophrenic_region_of_its_side_only(side):
    other = "left" if side == "right" else "right"
    for seed in SEEDS:
        normal = _case(seed)
        rise = {}
        for severity in ("mild", "moderate"):
            img = _case(seed, Finding("pleural_effusion", side=side, severity=severity))
            rise[severity] = _region(img, *LATERAL_BASE[side]).mean() - _region(normal, *LATERAL_BASE[side]).mean()
            assert abs(_region(img, *LATERAL_BASE[other]).mean() - _region(normal, *LATERAL_BASE[other]).mean()) < 1
        assert 1.5 < rise["mild"] < rise["moderate"] and rise["moderate"] > 20, (seed, rise)


def test_bilateral_effusion_whitens_both_bases():
    normal = _case(0)
    img = _case(0, Finding("pleural_effusion", side="bilateral", severity="moderate"))
    for box in LATERAL_BASE.values():
        assert _region(img, *box).mean() - _region(normal, *box).mean() > 20


def _lateral_band_detail(normal: np.ndarray, img: np.ndarray, side: str) -> tuple[float, float]:
    """Fine-detail energy (3x3 minus 7x7 box band-pass, squared) in a band 2-10 px inside the lateral lung edge
    (found on the normal image) over the upper lung (rows 15-40 % of the height): (normal, img)."""
    sm = _box(normal, 1)
    n = sm.shape[0]
    lung, med = _levels(sm)
    thr = lung + 0.3 * (med - lung)
    bands = [_box(x, 1) - _box(x, 3) for x in (normal, img)]
    energy = [0.0, 0.0]
    count = 0
    for r in range(int(0.15 * n), int(0.40 * n)):
        half = sm[r, : n // 2] if side == "right" else sm[r, n // 2:][::-1]
        wall = np.nonzero(half > thr)[0]
        dark = np.nonzero(half[wall[0]:] < thr)[0]
        if len(dark) == 0:  # above the apex
            continue
        edge = wall[0] + dark[0]
        cols = np.arange(edge + 2, edge + 10)
        cols = cols if side == "right" else n - 1 - cols
        for k in (0, 1):
            energy[k] += float((bands[k][r, cols] ** 2).sum())
        count += len(cols)
    return energy[0] / count, energy[1] / count


@pytest.mark.parametrize("side", ["right", "left"])
def test_pneumothorax_removes_lung_markings_beyond_the_pleural_line(side):
    other = "left" if side == "right" else "right"
    ratios = []
    for seed in SEEDS:
        normal = _case(seed)
        img = _case(seed, Finding("pneumothorax", side=side, severity="severe"))
        before, after = _lateral_band_detail(normal, img, side)
        ratios.append(after / before)
        before_o, after_o = _lateral_band_detail(normal, img, other)
        assert after_o == pytest.approx(before_o, rel=1e-9)  # the other lung is untouched
    assert max(ratios) < 0.93 and np.mean(ratios) < 0.82, ratios


def test_pneumothorax_shows_a_pleural_line():
    # the visceral pleural line is a thin bright curve inside the dark pleural air: a row through the upper lung
    # has a local maximum well inside the lateral wall that the normal image lacks
    normal = _case(0)
    img = _case(0, Finding("pneumothorax", side="right", severity="severe"))
    diff = _box(img, 0) - _box(normal, 0)
    n = SIZE
    upper = diff[int(0.2 * n):int(0.35 * n), : n // 2]
    assert upper.max() > 12 and upper.min() < -12  # bright line, darker (marking-free) pleural space


ZONES = {"upper": (0.14, 0.30), "middle": (0.34, 0.50), "lower": (0.54, 0.70)}
HEMITHORAX = {"right": (0.14, 0.38), "left": (0.62, 0.86)}


@pytest.mark.parametrize("kind", ["consolidation", "lung_opacity"])
def test_consolidation_raises_density_in_the_named_zone_only(kind):
    for seed in SEEDS[:2]:
        normal = _case(seed)
        for side in ("right", "left"):
            for zone in ZONES:
                img = _case(seed, Finding(kind, side=side, zone=zone, severity="moderate"))
                for s2, (x0, x1) in HEMITHORAX.items():
                    for z2, (y0, y1) in ZONES.items():
                        rise = _region(img, x0, x1, y0, y1).mean() - _region(normal, x0, x1, y0, y1).mean()
                        if (s2, z2) == (side, zone):
                            assert rise > (10 if kind == "consolidation" else 3), (seed, side, zone, rise)
                        else:
                            assert abs(rise) < 1, (seed, side, zone, s2, z2, rise)


def test_atelectasis_adds_band_like_density_on_its_side():
    normal = _case(1)
    img = _case(1, Finding("atelectasis", side="left", zone="lower", severity="severe"))
    diff = img.astype(np.float64) - normal
    n = SIZE
    left, right = diff[:, n // 2:], diff[:, : n // 2]
    assert left.max() > 25 and np.abs(right).max() == 0
    # band-like: the added density is much wider than it is tall
    ys, xs = np.nonzero(left > 0.5 * left.max())
    assert np.ptp(xs) > 2 * np.ptp(ys) / 3 and np.ptp(xs) > 0.05 * n


def _white_tophat(img: np.ndarray, k: int = 7) -> np.ndarray:
    """Image minus its grey opening with a kxk square: bright structures thinner than k pixels."""
    p = np.pad(img.astype(np.float64), k // 2, mode="edge")
    eroded = sliding_window_view(p, (k, k)).min(axis=(2, 3))
    opened = sliding_window_view(np.pad(eroded, k // 2, mode="edge"), (k, k)).max(axis=(2, 3))
    return img - opened


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_support_devices_add_bright_thin_structures(kind):
    for seed in SEEDS:
        normal = _white_tophat(_case(seed))
        img = _white_tophat(_case(seed, Finding(kind)))
        assert (normal > 60).sum() < 10  # anatomy: no thin structure this bright
        assert (img > 60).sum() > (normal > 60).sum() + 50 and img.max() > normal.max() + 20, (seed, kind)


def test_edema_hazes_both_perihilar_regions():
    normal = _case(2)
    img = _case(2, Finding("edema", severity="severe"))
    for x0, x1 in ((0.28, 0.38), (0.62, 0.72)):  # beside each hilum
        assert _region(img, x0, x1, 0.38, 0.55).mean() - _region(normal, x0, x1, 0.38, 0.55).mean() > 10


def test_adding_a_finding_leaves_the_rest_of_the_image_alone():
    normal = _case(0)
    img = _case(0, Finding("consolidation", side="right", zone="upper"))
    n = SIZE
    assert np.array_equal(img[:, n // 2 + 8:], normal[:, n // 2 + 8:])


# ------------------------------------------------------------------------------------------------ spec & render

@pytest.mark.parametrize("size", [64, 128, 256, 96])
def test_render_shape_dtype_and_determinism(size):
    spec = PhantomSpec(findings=(Finding("pleural_effusion"), Finding("pacemaker")), size=size, seed=11)
    a, b = render(spec), render(spec)
    assert a.shape == (size, size) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(PhantomSpec(findings=spec.findings, size=size, seed=12)))
    assert 20 < a.mean() < 200 and a.min() < 20  # black air outside the body, grey chest


@pytest.mark.parametrize(("bad", "message"), [
    (dict(kind="tumour"), r"unknown finding kind 'tumour'; expected one of cardiomegaly, pleural_effusion, "),
    (dict(kind="cardiomegaly", side="left"), r"cardiomegaly: side must be one of None, got 'left'"),
    (dict(kind="pneumothorax", side="bilateral"), r"pneumothorax: side must be one of right, left, got 'bilateral'"),
    (dict(kind="consolidation", zone="apex"), r"consolidation: zone must be one of upper, middle, lower, got 'apex'"),
    (dict(kind="pleural_effusion", severity="huge"), r"severity must be one of mild, moderate, severe, got 'huge'"),
    (dict(kind="pleural_effusion", zone="upper"), r"pleural_effusion takes no zone, got 'upper'"),
    (dict(kind="cardiomegaly", value=0.95), r"cardiomegaly: value must be in \[0\.3, 0\.75\], got 0\.95"),
    (dict(kind="pacemaker", uncertain=True), r"pacemaker cannot be uncertain"),
])
def test_finding_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        Finding(**bad)


@pytest.mark.parametrize(("bad", "message"), [
    (dict(size=100), r"size must be 64, 128 or 256 \(any multiple of 16 from 64 to 512\), got 100"),
    (dict(size=48), r"size must be .*, got 48"),
    (dict(size=528), r"size must be .*, got 528"),
    (dict(seed=-1), r"seed must be a non-negative integer, got -1"),
    (dict(ctr=0.6), r"ctr of a normal heart must be in \[0\.3, 0\.5\], got 0\.6 \(a larger heart is cardiomegaly"),
    (dict(ctr=0.45, findings=(Finding("cardiomegaly"),)), r"either as ctr or as a cardiomegaly finding, not both"),
    (dict(negatives=("Pneumonia",)), r"negatives \['Pneumonia'\] cannot be stated; expected a subset of"),
    (dict(findings=(Finding("pleural_effusion", side="bilateral"), Finding("pleural_effusion", side="left"))),
     r"finding pleural_effusion \(side left, zone None\) is given twice"),
])
def test_spec_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        PhantomSpec(**bad)


def test_spec_round_trips_through_a_dict():
    spec = sample_spec(np.random.default_rng(5), size=64)
    while not spec.findings:
        spec = sample_spec(np.random.default_rng(spec.seed), size=64)
    again = PhantomSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and np.array_equal(render(again), render(spec))


# ------------------------------------------------------------------------------------------------ labels & reports

KEYWORDS = {
    "Cardiomegaly": r"cardiomegaly", "Pleural Effusion": r"effusion", "Pneumothorax": r"pneumothorax",
    "Consolidation": r"consolidation", "Lung Opacity": r"opacit", "Atelectasis": r"atelectasis",
    "Edema": r"edema", "Support Devices": r"tube|catheter|line|pacemaker|pacer",
    "Enlarged Cardiomediastinum": r"mediastin", "Fracture": r"fracture",
}
HEDGES = r"possible|questionable|cannot be excluded|not excluded|may represent"


def _sentences(text: str) -> list[str]:
    return [s.strip().lower() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]


def test_labels_and_reports_agree_over_many_cases():
    rng = np.random.default_rng(2024)
    seen = {k: 0 for k in CHEXPERT_LABELS}
    phrasings = set()
    for _ in range(600):
        spec = sample_spec(rng, size=64)
        text = report(spec, np.random.default_rng(spec.seed))
        lab = labels(spec)
        assert list(lab) == list(CHEXPERT_LABELS)
        assert text.startswith("FINDINGS: ") and text.count(" IMPRESSION: ") == 1
        findings_part, impression = text[len("FINDINGS: "):].split(" IMPRESSION: ")
        assert findings_part.strip() and impression.strip()
        low = text.lower()
        for name, value in lab.items():
            if value is not None:
                seen[name] += 1
            if name == "No Finding":
                pathology = [k for k in CHEXPERT_LABELS if k not in ("No Finding", "Support Devices")]
                assert (value == 1) == all(lab[k] in (0, None) for k in pathology)
                assert value in (1, None)
                if value == 1:
                    assert re.search(r"no acute|no radiographic evidence", impression.lower())
                continue
            if value in (1, -1):
                assert re.search(KEYWORDS[name], low), (name, text)
            if value == -1:
                assert any(re.search(KEYWORDS[name], s) and re.search(HEDGES, s) for s in _sentences(text)), text
            if value == 0:  # a stated pertinent negative
                assert name in NEGATABLE
                assert any(re.search(KEYWORDS[name] if name != "Cardiomegaly" else r"cardiomegaly|heart size", s)
                           and re.search(r"\bno\b|normal|not widened|within normal", s)
                           for s in _sentences(findings_part)), (name, text)
        phrasings.add(re.sub(r"\b(right|left|small|moderate|large|mild|severe)\b", "", impression))
    for name in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Opacity", "Atelectasis",
                 "Edema", "Support Devices", "No Finding"):
        assert seen[name] > 20, (name, seen)
    assert len(phrasings) > 50


def test_label_rules():
    spec = PhantomSpec(findings=(Finding("pleural_effusion", side="left", uncertain=True), Finding("pacemaker")),
                       negatives=("Pneumothorax", "Pleural Effusion"))
    lab = labels(spec)
    assert lab["Pleural Effusion"] == -1 and lab["Support Devices"] == 1 and lab["Pneumothorax"] == 0
    assert lab["No Finding"] is None  # an uncertain pathology is not "no finding"
    devices_only = labels(PhantomSpec(findings=(Finding("endotracheal_tube"),)))
    assert devices_only["No Finding"] == 1 and devices_only["Support Devices"] == 1  # as CheXpert
    normal = labels(PhantomSpec())
    assert normal["No Finding"] == 1 and normal["Pleural Effusion"] == 0 and normal["Lung Lesion"] is None
    both = labels(PhantomSpec(findings=(Finding("consolidation", side="left", uncertain=True),
                                        Finding("consolidation", side="right"))))
    assert both["Consolidation"] == 1  # certain wins over uncertain


def test_report_phrasing_varies_with_the_rng_not_the_facts():
    spec = PhantomSpec(findings=(Finding("pneumothorax", side="left", severity="mild"),), seed=3)
    texts = {report(spec, np.random.default_rng(i)) for i in range(30)}
    assert len(texts) > 3
    assert all("left" in t and "pneumothorax" in t.lower() for t in texts)
    assert report(spec, np.random.default_rng(1)) == report(spec, np.random.default_rng(1))


# ------------------------------------------------------------------------------------------------ CLI

def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_writes_byte_identical_files_for_a_seed(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    args = ["data", "phantom", "--n", "6", "--seed", "7", "--size", "64"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == ["images/phantom_00000.png", "images/phantom_00001.png", "images/phantom_00002.png",
                         "images/phantom_00003.png", "images/phantom_00004.png", "images/phantom_00005.png",
                         "labels.jsonl", "reports.jsonl", "specs.jsonl"]
    assert a == b
    assert a["images/phantom_00000.png"][:8] == b"\x89PNG\r\n\x1a\n" and b"tIME" not in a["images/phantom_00000.png"]
    assert "wrote 6 synthetic phantoms" in caplog.text
    rows = [json.loads(line) for line in a["labels.jsonl"].decode().splitlines()]
    reports = [json.loads(line) for line in a["reports.jsonl"].decode().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in reports] == [f"phantom_{i:05d}" for i in range(6)]
    assert all(list(r["labels"]) == list(CHEXPERT_LABELS) for r in rows)
    assert all(r["report"].startswith("FINDINGS: ") for r in reports)

    assert main(["data", "phantom", "--n", "6", "--seed", "8", "--size", "64", "--out", str(tmp_path / "c")]) == 0
    c = _files(tmp_path / "c")
    assert c["labels.jsonl"] != a["labels.jsonl"] or c["reports.jsonl"] != a["reports.jsonl"]
    assert all(c[k] != a[k] for k in a if k.endswith(".png"))


def test_worker_processes_draw_the_same_bytes(tmp_path, caplog):
    args = ["data", "phantom", "--n", "64", "--seed", "5", "--size", "64", "--no-progress"]  # 64: the pool's minimum
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 64 + 3 and one == two
    assert "failed to start" not in caplog.text  # the two workers drew them


@pytest.mark.parametrize("argv", [
    ["--n", "2", "--size", "100"], ["--n", "0", "--size", "64"], ["--n", "2", "--seed", "-3", "--size", "64"],
    ["--n", "2", "--size", "64", "--workers", "0"],
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv):
    assert main(["data", "phantom", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "o" / "labels.jsonl").exists()

"""Synthetic phantom chest radiographs: procedurally drawn frontal (PA) images with a report and CheXpert labels.

These images are **synthetic**. They are drawn from simple geometric models of chest anatomy (soft tissue, lungs
with branching vascular markings, posterior and anterior rib arcs, clavicles, spine, trachea, mediastinum, heart,
hemidiaphragms with costophrenic angles, gastric bubble) plus blur, edge enhancement and noise, and they are meant
for the demo, for tests and for small experiments that must run offline. They are not radiographs of anyone and
must never be presented as real data.

Conventions: coordinates are normalised to the image (``x`` from the viewer's left, ``y`` from the top, both in
[0, 1]); images are displayed as radiographs are read, so the patient's **right** is on the image's **left**. Every
side named in this module (``Finding.side``, the reports, the labels) is the patient's side.

API::

    spec = PhantomSpec(findings=(Finding("pleural_effusion", side="right", severity="moderate"),), size=256, seed=3)
    image = render(spec)                               # np.uint8 (256, 256)
    text = report(spec, np.random.default_rng(0))      # "FINDINGS: ... IMPRESSION: ..."
    chexpert = labels(spec)                            # the 14 CheXpert labels (1, 0, -1, None)
    spec = sample_spec(np.random.default_rng(7))       # a random case mix, a fraction of them normal
    write_dataset("out", n=100, seed=0, size=128)      # PNGs + labels.jsonl + reports.jsonl + specs.jsonl

Rendering is deterministic: the same spec gives the same array, bit for bit, on one platform and numpy version
(the anatomy, the noise and each finding draw from their own random streams, so adding a finding leaves the rest
of the image unchanged). See docs/phantoms.md for the parameters and the label rules.
"""

from __future__ import annotations

from .dataset import check_size, save_png, write_dataset
from .render import render
from .report import labels, report
from .spec import DEVICE_KINDS, NEGATABLE, SEVERITY_VALUE, Finding, PhantomSpec, sample_spec

__all__ = ["DEVICE_KINDS", "NEGATABLE", "SEVERITY_VALUE", "Finding", "PhantomSpec", "check_size", "labels", "render",
           "report", "sample_spec", "save_png", "write_dataset"]
